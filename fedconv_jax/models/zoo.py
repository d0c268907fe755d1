"""The model registry and the one functional interface the federated code uses.

A family is a Flax module class (or a `functools.partial` of one, as flax's imagenet example
builds ResNet18) taking `ratio`, `num_classes` and `conv_impl`, whose layers declare their
width axes (models/axes.py). Register it with one line at the end of this file.
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from fedconv_jax.core.types import PRNGKey, Variables
from fedconv_jax.models.axes import scaled_width, split_declared, unit_widths
from fedconv_jax.models.cnn import CNN
from fedconv_jax.models.googlenet import GoogLeNet
from fedconv_jax.models.har import HAR_FAMILIES, HARCNN
from fedconv_jax.models.layers import resolve_conv_impl
from fedconv_jax.models.resnet import ResNet18

_FAMILIES: dict[str, Callable[..., nn.Module]] = {}
_EXAMPLE_INPUTS: dict[str, tuple[int, ...]] = {}
_DROPOUT: set[str] = set()
_CHANNELS: dict[str, int] = {}


def register_model(
    name: str,
    family: Callable[..., nn.Module],
    example_input: tuple[int, ...] = (28, 28, 1),
    *,
    dropout: bool = False,
    channels: int | None = None,
) -> None:
    """Registers a model family under `name` (the `model` config field).

    Args:
      example_input: one example's shape the family builds on, used to read its unit widths
        before any data is loaded (config validation).
      dropout: the family draws from the "dropout" rng stream in training, so client
        training passes it a key per step.
      channels: the input channels the family is meant for (ResNet18: 3 colours; the HAR
        CNNs: 1 signal plane); None accepts any. Data with others is refused before
        anything compiles.
    """
    if name in _FAMILIES:
        raise ValueError(f"model {name!r} is registered twice")
    _FAMILIES[name] = family
    _EXAMPLE_INPUTS[name] = tuple(example_input)
    if dropout:
        _DROPOUT.add(name)
    if channels is not None:
        _CHANNELS[name] = channels


def unregister_model(name: str) -> None:
    """Removes a registered family (tests and notebooks that register throwaway models)."""
    _FAMILIES.pop(name, None)
    _EXAMPLE_INPUTS.pop(name, None)
    _DROPOUT.discard(name)
    _CHANNELS.pop(name, None)
    _shapes_and_axes.cache_clear()


def model_names() -> tuple[str, ...]:
    return tuple(_FAMILIES)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model family; `ratio` picks the member. Hashable, so it can be a static jit argument.

    Variables are always {"params": ..., "batch_stats": ...}; batch_stats is {} for models
    without BatchNorm, so every federated step carries non-trainable state the same way.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]  # one example, e.g. (H, W, C)
    conv_impl: str = "im2col"
    width: float = 1.0  # multiplier of every width of the family, before any SR

    def __post_init__(self):
        if self.name not in _FAMILIES:
            raise ValueError(f"model={self.name!r} is not known; allowed: {', '.join(_FAMILIES)}")

    @property
    def uses_dropout(self) -> bool:
        return self.name in _DROPOUT

    def build(self, ratio: float) -> nn.Module:
        # Families that support a width multiplier take a `width` field (CNN, ResNet18).
        extra = {"width": self.width} if self.width != 1.0 else {}
        return _FAMILIES[self.name](ratio=ratio, num_classes=self.num_classes, conv_impl=self.conv_impl, **extra)

    def _declared_init(self, key: PRNGKey, ratio: float):
        dummy = jnp.zeros((1, *self.input_shape), jnp.float32)
        variables = self.build(ratio).init(key, dummy, train=False)
        return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}

    def init(self, key: PRNGKey, ratio: float = 1.0) -> Variables:
        return split_declared(self._declared_init(key, ratio))[0]

    def width_axes(self, ratio: float = 1.0):
        """Per variable, one declaration per axis (models/axes.py), shaped like `init`'s tree."""
        return _shapes_and_axes(self, ratio)[1]

    def unit_widths(self, ratio: float = 1.0) -> dict[str, int]:
        """Every width unit's channel count at `ratio`, in declaration order."""
        return unit_widths(*_shapes_and_axes(self, ratio))

    def _scaled_widths(self, ratio: float) -> list[int]:
        """floor(floor(C * width) * ratio) per unit, from the full-width model's widths: a
        zero-width member cannot be built to read them from (the family contract: every unit
        is scaled this way)."""
        full = dataclasses.replace(self, width=1.0).unit_widths(1.0)
        return [scaled_width(scaled_width(c, self.width), ratio) for c in full.values()]

    def narrowest_ratio(self) -> float:
        """The smallest ratio at which no unit has zero width."""
        return 1.0 / min(self._scaled_widths(1.0))

    def fits(self, ratio: float) -> bool:
        """No unit of the model at `ratio` has zero width."""
        return min(self._scaled_widths(ratio)) >= 1

    def input_problem(self) -> str | None:
        """Why `input_shape` does not fit the family, or None: the channels it is meant for,
        and a build that must leave every layer non-empty (pools and strides can shrink a
        small image to nothing). Shapes only, nothing is compiled."""
        shape = "x".join(map(str, self.input_shape))
        want = _CHANNELS.get(self.name)
        if want is not None and self.input_shape[-1:] != (want,):
            return f"{self.name} takes {want}-channel examples, the data's are {shape}"
        try:
            variables = jax.eval_shape(lambda: self.init(jax.random.key(0), 1.0))
            logits = jax.eval_shape(lambda v: self.apply(1.0, v, jnp.zeros((1, *self.input_shape)))[0], variables)
        except (ArithmeticError, ValueError, TypeError):  # a pooled- or strided-away feature map
            variables = logits = None
        if logits is None or logits.shape != (1, self.num_classes) or any(x.size == 0 for x in jax.tree.leaves(variables)):
            return f"{self.name}'s strides and pools leave nothing of a {shape} example"
        return None

    def apply(
        self, ratio: float, variables: Variables, images: jax.Array, train: bool = False, *, rng: PRNGKey | None = None
    ) -> tuple[jax.Array, dict]:
        """Returns (logits, batch_stats); batch_stats is updated only when `train`.

        `rng` feeds the model's "dropout" stream (models without dropout ignore it).
        """
        model = self.build(ratio)
        rngs = {"dropout": rng} if rng is not None else None
        if train and variables["batch_stats"]:
            logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"], rngs=rngs)
            return logits, updates["batch_stats"]
        return model.apply(variables, images, train=train, rngs=rngs), variables["batch_stats"]


@functools.lru_cache(maxsize=256)
def _shapes_and_axes(model: ModelSpec, ratio: float):
    boxed = jax.eval_shape(lambda: model._declared_init(jax.random.key(0), ratio))
    return split_declared(boxed)


def example_model(name: str, width: float = 1.0) -> ModelSpec:
    """The family `name` on its example input (10 classes): its unit widths, without data."""
    return ModelSpec(name, 10, _EXAMPLE_INPUTS.get(name, ()), "im2col", width)


def make_model(
    name: str, num_classes: int, input_shape: tuple[int, ...], conv_impl: str = "auto", width: float = 1.0
) -> ModelSpec:
    return ModelSpec(name, num_classes, tuple(input_shape), resolve_conv_impl(conv_impl), width)


register_model("cnn", CNN)
register_model("cnn_bn", functools.partial(CNN, batch_norm=True))
register_model("resnet18", ResNet18, (32, 32, 3), channels=3)
register_model("googlenet", GoogLeNet, (32, 32, 3), channels=3)
for _name, (_layers, _input) in HAR_FAMILIES.items():
    register_model(_name, functools.partial(HARCNN, **_layers), _input, channels=1)
