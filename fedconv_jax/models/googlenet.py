"""The paper's CINIC10 GoogLeNet (PAPER-NOTES §3.1, the authors' `network_architecture/CINIC.py`).

A 3x3 stem of 192 channels with BatchNorm, nine Inception modules, one 3x3 stride-2 max pool
after the second, global average pooling and a dense layer: 6.17 M parameters at full width.
Every conv is conv (with bias) -> BatchNorm -> ReLU, as in the authors' code. A module has
four branches whose outputs are concatenated along channels:

  1. 1x1;   2. 1x1 -> 3x3;   3. 1x1 -> 3x3 -> 3x3;   4. 3x3 max pool (stride 1) -> 1x1.

Width units: every branch conv is a unit, and a module's output axis is the concatenation of
its four branch outputs ("m1_b1+m1_b2+m1_b3+m1_b4"), so slicing keeps each branch's channels
in place and the next module's input rows follow them. The authors size the next module's
input as int(C * SR) of the concatenated total, which differs from the sum of the branches'
int(c * SR) at some SRs (e.g. 0.4: 100 vs 102, where their model cannot run); here the input is
always the concatenation the branches produce.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

from fedconv_jax.models.layers import BatchNorm, Conv, Dense, ScaledFamily

STEM = 192
# (1x1, 3x3 reduce, 3x3, double-3x3 reduce, double-3x3, pool projection) per module.
MODULES = (
    (64, 96, 128, 16, 32, 32),
    (128, 128, 192, 32, 96, 64),
    (192, 96, 208, 16, 48, 64),
    (160, 112, 224, 24, 64, 64),
    (128, 128, 256, 24, 64, 64),
    (112, 144, 288, 32, 64, 64),
    (256, 160, 320, 32, 128, 128),
    (256, 160, 320, 32, 128, 128),
    (384, 192, 384, 48, 128, 128),
)
POOL_AFTER = 2  # the single stride-2 max pool follows module 2


def _max_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)))


class GoogLeNet(ScaledFamily):
    """GoogLeNet at width `ratio` (fields and width rule: `layers.ScaledFamily`)."""

    def conv_bn_relu(self, x, base, axes, name, train, kernel=1):
        x = Conv(
            self.channels(base), axes=axes, kernel_size=(kernel, kernel), padding=(kernel - 1) // 2,
            impl=self.conv_impl, name=name,
        )(x)
        return nn.relu(BatchNorm(axes[1], name=f"{name}_bn")(x, train))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        stream = "stem"
        x = self.conv_bn_relu(x, STEM, (None, stream), "stem", train, kernel=3)
        for m, (b1, b2r, b2, b3r, b3, b4) in enumerate(MODULES, start=1):
            unit = lambda branch, m=m: f"m{m}_{branch}"
            y1 = self.conv_bn_relu(x, b1, (stream, unit("b1")), unit("b1"), train)
            y2 = self.conv_bn_relu(x, b2r, (stream, unit("b2r")), unit("b2r"), train)
            y2 = self.conv_bn_relu(y2, b2, (unit("b2r"), unit("b2")), unit("b2"), train, kernel=3)
            y3 = self.conv_bn_relu(x, b3r, (stream, unit("b3r")), unit("b3r"), train)
            y3 = self.conv_bn_relu(y3, b3, (unit("b3r"), unit("b3a")), unit("b3a"), train, kernel=3)
            y3 = self.conv_bn_relu(y3, b3, (unit("b3a"), unit("b3")), unit("b3"), train, kernel=3)
            y4 = self.conv_bn_relu(_max_pool_3x3(x, 1), b4, (stream, unit("b4")), unit("b4"), train)
            x = jnp.concatenate([y1, y2, y3, y4], axis=-1)
            stream = "+".join(unit(b) for b in ("b1", "b2", "b3", "b4"))
            if m == POOL_AFTER:
                x = _max_pool_3x3(x, 2)
        x = x.mean(axis=(1, 2))  # the authors' 16x16 average pool on 32x32 inputs
        return Dense(self.num_classes, axes=(stream, None), name="head")(x)


__all__ = ["GoogLeNet"]
