"""The paper's MNIST CNN (SPEC §6) at any width ratio, with an optional BatchNorm variant."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from fedconv_jax.models.axes import scaled_width
from fedconv_jax.models.layers import BatchNorm, Conv, Dense, max_pool_2x2


class CNN(nn.Module):
    """conv3x3 -> ReLU -> maxpool2, repeated per entry of `features`, then one dense layer.

    Every conv layer is a unit of width floor(width * ratio). The flatten before the dense
    layer is channel-major (PyTorch order) and declared so ("conv_<last>*pixels"): slicing
    and filters then keep the dense rows of the channels they keep.

    Attributes:
      ratio: width ratio (the client's shrinkage ratio), in (0, 1].
      features: channel counts of the conv layers at ratio 1.
      num_classes: class outputs; never scaled.
      width: a multiplier applied to every conv width before `ratio`.
      batch_norm: add BatchNorm after each conv (non-trainable state in "batch_stats").
      conv_impl: "im2col" or "lax" (see models/layers.py).
    """

    ratio: float = 1.0
    features: Sequence[int] = (16, 32)
    num_classes: int = 10
    width: float = 1.0
    batch_norm: bool = False
    conv_impl: str = "im2col"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        previous = None  # the image's channels never scale
        for i, feat in enumerate(self.features):
            unit = f"conv_{i}"
            channels = scaled_width(scaled_width(feat, self.width), self.ratio)
            x = Conv(channels, axes=(previous, unit), impl=self.conv_impl, name=unit)(x)
            if self.batch_norm:
                x = BatchNorm(unit, name=f"bn_{i}")(x, train)
            x = max_pool_2x2(nn.relu(x))
            previous = unit
        pixels = x.shape[1] * x.shape[2]
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # channel-major flatten
        return Dense(self.num_classes, axes=(f"{previous}*{pixels}", None), name="head")(x)
