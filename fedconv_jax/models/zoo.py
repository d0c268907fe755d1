"""A registry of models and the one functional interface the federated code uses."""

import dataclasses

import jax
import jax.numpy as jnp

from fedconv_jax.core.types import PRNGKey, Variables
from fedconv_jax.models.cnn import CNN
from fedconv_jax.models.layers import resolve_conv_impl

MODELS = ("cnn", "cnn_bn")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model family; `ratio` picks the member. Hashable, so it can be a static jit argument.

    Variables are always {"params": ..., "batch_stats": ...}; batch_stats is {} for models
    without BatchNorm, so every federated step carries non-trainable state the same way.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]  # (H, W, C) of one example
    conv_impl: str = "im2col"

    def __post_init__(self):
        if self.name not in MODELS:
            raise ValueError(f"model={self.name!r} is not known; allowed: {', '.join(MODELS)}")

    def build(self, ratio: float) -> CNN:
        return CNN(
            ratio=ratio,
            num_classes=self.num_classes,
            batch_norm=self.name == "cnn_bn",
            conv_impl=self.conv_impl,
        )

    def init(self, key: PRNGKey, ratio: float = 1.0) -> Variables:
        dummy = jnp.zeros((1, *self.input_shape), jnp.float32)
        variables = self.build(ratio).init(key, dummy, train=False)
        return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}

    def apply(
        self, ratio: float, variables: Variables, images: jax.Array, train: bool = False
    ) -> tuple[jax.Array, dict]:
        """Returns (logits, batch_stats); batch_stats is updated only when `train`."""
        model = self.build(ratio)
        if train and variables["batch_stats"]:
            logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
            return logits, updates["batch_stats"]
        return model.apply(variables, images, train=train), variables["batch_stats"]


def make_model(
    name: str, num_classes: int, input_shape: tuple[int, int, int], conv_impl: str = "auto"
) -> ModelSpec:
    return ModelSpec(name, num_classes, tuple(input_shape), resolve_conv_impl(conv_impl))
