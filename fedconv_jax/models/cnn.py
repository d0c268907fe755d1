"""The paper's MNIST CNN (SPEC §6) at any width ratio, with an optional BatchNorm variant."""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from fedconv_jax.models.layers import Conv, max_pool_2x2


def scaled_width(width: int, ratio: float) -> int:
    """floor(width * ratio), robust to float error (0.3 * 10 must give 3, not 2)."""
    return math.floor(width * ratio + 1e-6)


class CNN(nn.Module):
    """conv3x3 -> ReLU -> maxpool2, repeated per entry of `features`, then one dense layer.

    Every layer width is floor(width * ratio). The flatten before the dense layer is
    channel-major (PyTorch order): the first D' rows of the dense kernel then belong to the
    first channels, so slicing filters keep matching channels across layers.

    Attributes:
      ratio: width ratio (the client's shrinkage ratio), in (0, 1].
      features: channel counts of the conv layers at ratio 1.
      num_classes: class outputs; never scaled.
      batch_norm: add BatchNorm after each conv (non-trainable state in "batch_stats").
      conv_impl: "im2col" or "lax" (see models/layers.py).
    """

    ratio: float = 1.0
    features: Sequence[int] = (16, 32)
    num_classes: int = 10
    batch_norm: bool = False
    conv_impl: str = "im2col"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for i, feat in enumerate(self.features):
            x = Conv(scaled_width(feat, self.ratio), impl=self.conv_impl, name=f"conv_{i}")(x)
            if self.batch_norm:
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"bn_{i}")(x)
            x = max_pool_2x2(nn.relu(x))
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # channel-major flatten
        return nn.Dense(self.num_classes, name="head")(x)
