"""The paper's CIFAR10 ResNet18 (PAPER-NOTES §3.1, the authors' `network_architecture/CIFAR.py`).

3x3 stem conv + BatchNorm, a 2x2 max pool (no ReLU before it), 8 basic blocks in 4 stages
of 64, 128, 256, 512 channels (1x1 stride-2 projection shortcuts where a stage starts),
global average pooling, a dense layer to the classes. As in the authors' code, the convs
of blocks 1-3 have no bias and those of blocks 4-8 (shortcuts included) have one: 11.18 M
parameters at full width.

Width units: each stage's residual stream is one unit (the stem or the projection shortcut
writes it, every block's second conv adds to it), and each block's inner channels another.
"""

import jax
from flax import linen as nn

from fedconv_jax.models.layers import BatchNorm, Conv, Dense, ScaledFamily, max_pool_2x2

STAGES = (64, 128, 256, 512)  # channels of the four stages; two blocks each
FIRST_BIASED_BLOCK = 4  # 1-based: the authors' convs have a bias from block 4 on
# PyTorch's kaiming_normal_(mode="fan_out", nonlinearity="relu"), as the authors initialise.
KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ResNet18(ScaledFamily):
    """CIFAR-style ResNet18 at width `ratio` (fields and width rule: `layers.ScaledFamily`)."""

    def conv_bn(self, x, features, axes, name, train, *, kernel=3, stride=1, bias=False):
        x = Conv(
            features, axes=axes, kernel_size=(kernel, kernel), strides=stride, padding=(kernel - 1) // 2,
            use_bias=bias, impl=self.conv_impl, kernel_init=KAIMING_FAN_OUT, name=name,
        )(x)
        return BatchNorm(axes[1], name=f"{name}_bn")(x, train)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        stream = "stage1"
        x = self.conv_bn(x, self.channels(STAGES[0]), (None, stream), "stem", train)
        x = max_pool_2x2(x)
        block = 0
        for stage, base in enumerate(STAGES, start=1):
            for first in (True, False):
                block += 1
                width, bias = self.channels(base), block >= FIRST_BIASED_BLOCK
                inner, out = f"block{block}", f"stage{stage}"
                downsample = first and stage > 1
                stride = 2 if downsample else 1
                identity = x
                if downsample:  # a new stage: the projection starts the stage's stream
                    identity = self.conv_bn(
                        x, width, (stream, out), f"block{block}_shortcut", train, kernel=1, stride=2, bias=bias
                    )
                h = nn.relu(self.conv_bn(x, width, (stream, inner), f"block{block}_conv1", train, stride=stride, bias=bias))
                h = self.conv_bn(h, width, (inner, out), f"block{block}_conv2", train, bias=bias)
                x = nn.relu(h + identity)
                stream = out
        x = x.mean(axis=(1, 2))  # adaptive average pooling to 1x1
        return Dense(self.num_classes, axes=(stream, None), name="head")(x)


__all__ = ["ResNet18"]
