"""The paper's three HAR CNNs (PAPER-NOTES §3.1, the authors' `network_architecture/`).

Each is two conv -> BatchNorm -> ReLU [-> max pool] stages of 16 and 32 channels and one
dense layer on the channel-major flatten:

| family       | input (authors') | conv          | stride           | padding | pool | BatchNorm |
|--------------|------------------|---------------|------------------|---------|------|-----------|
| `har_wiar`   | 90 x 250 CSI     | 7x7           | 6, then (2, 6)   | 1       | no   | learned   |
| `har_dcd`    | 36 x 36 depth    | 3x3           | 1                | 1       | 2x2  | learned   |
| `har_harbox` | 900 IMU -> 30x30 | 3x3           | 2                | 1       | no   | frozen    |

The dense layer reads the feature map it is given, so each family runs on any input large
enough for its strides (the HAPT windows use `har_harbox`'s layers on 128 x 6).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from fedconv_jax.models.axes import scaled_width
from fedconv_jax.models.layers import BatchNorm, Conv, Dense, Strides, max_pool_2x2


class HARCNN(nn.Module):
    """Two conv stages and a dense layer at width `ratio` (every width floor(C * width * ratio)).

    Attributes:
      ratio: the client's shrinkage ratio, in (0, 1].
      num_classes: class outputs; never scaled.
      width: a multiplier applied to every conv width before `ratio`.
      conv_impl: "im2col" or "lax" (models/layers.py).
      features: channels of the conv stages at ratio 1.
      kernel: the square kernel size of every conv.
      strides: one entry per stage (an int, or (rows, cols)).
      padding: zero padding of every conv.
      pool: a 2x2 max pool after every stage.
      frozen_batch_norm: BatchNorm without a learned scale and bias (HARBox's model).
    """

    ratio: float = 1.0
    num_classes: int = 5
    width: float = 1.0
    conv_impl: str = "im2col"
    features: Sequence[int] = (16, 32)
    kernel: int = 3
    strides: Sequence[Strides] = (1, 1)
    padding: int = 1
    pool: bool = False
    frozen_batch_norm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        previous = None  # the input's channels never scale
        for i, (feat, stride) in enumerate(zip(self.features, self.strides)):
            unit = f"conv_{i}"
            channels = scaled_width(scaled_width(feat, self.width), self.ratio)
            x = Conv(
                channels, axes=(previous, unit), kernel_size=(self.kernel, self.kernel), strides=stride,
                padding=self.padding, impl=self.conv_impl, name=unit,
            )(x)
            x = nn.relu(BatchNorm(unit, affine=not self.frozen_batch_norm, name=f"bn_{i}")(x, train))
            if self.pool:
                x = max_pool_2x2(x)
            previous = unit
        pixels = x.shape[1] * x.shape[2]
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # channel-major, as PyTorch's view
        return Dense(self.num_classes, axes=(f"{previous}*{pixels}", None), name="head")(x)


HAR_FAMILIES = {
    "har_wiar": ({"kernel": 7, "strides": (6, (2, 6))}, (90, 250, 1)),
    "har_dcd": ({"kernel": 3, "strides": (1, 1), "pool": True}, (36, 36, 1)),
    "har_harbox": ({"kernel": 3, "strides": (2, 2), "frozen_batch_norm": True}, (30, 30, 1)),
}

__all__ = ["HARCNN", "HAR_FAMILIES"]
