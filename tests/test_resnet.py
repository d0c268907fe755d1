"""The CIFAR ResNet18 family: the authors' parameter counts, FedConv's sub-model shapes, and
HeteroFL/FedRolex slices that keep residual streams consistent."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_slicing import assert_sliced_equals_zeroed

from fedconv_jax.algorithms.fedconv.compression import (
    compress,
    init_compression_filters,
)
from fedconv_jax.algorithms.fedconv.filters import FilterConfig, check_tap_axes
from fedconv_jax.models import ModelSpec, make_model


def authors_count(sr: float) -> int:
    """Trainable parameters of the authors' PyTorch ResNet18 at SR `sr`, counted from its
    layer list (network_architecture/CIFAR.py): int(C * sr) channels, conv bias from block 4."""
    w = lambda c: int(c * sr)
    conv = lambda cin, cout, k, bias: k * k * cin * cout + (cout if bias else 0)
    total = conv(3, w(64), 3, False) + 2 * w(64)
    cin, block = w(64), 0
    for stage in (64, 128, 256, 512):
        for first in (True, False):
            block += 1
            cout, bias = w(stage), block >= 4
            if first and stage != 64:
                total += conv(cin, cout, 1, bias) + 2 * cout
            total += conv(cin, cout, 3, bias) + 2 * cout + conv(cout, cout, 3, bias) + 2 * cout
            cin = cout
    return total + cin * 10 + 10


def _count(model: ModelSpec, ratio: float) -> int:
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), ratio))["params"]
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize("ratio, millions", [(1.0, 11.18), (0.75, 6.29), (0.5, 2.80), (0.25, 0.70)])
def test_parameter_counts_match_the_authors_model(ratio, millions):
    model = make_model("resnet18", 10, (32, 32, 3))
    count = _count(model, ratio)
    assert count == authors_count(ratio)
    assert round(count / 1e6, 2) == millions  # PAPER-NOTES §1.4


def test_width_units_follow_the_residual_streams():
    model = make_model("resnet18", 10, (32, 32, 3))
    widths = model.unit_widths(1.0)
    assert [widths[f"stage{i}"] for i in range(1, 5)] == [64, 128, 256, 512]
    assert [widths[f"block{i}"] for i in range(1, 9)] == [64, 64, 128, 128, 256, 256, 512, 512]
    axes = model.width_axes()["params"]
    # Both sides of block 3's add write stage 2: its shortcut and its second conv.
    assert axes["block3_shortcut"]["kernel"][-1] == axes["block3_conv2"]["kernel"][-1] == (("stage2", 1),)
    assert axes["head"]["kernel"] == ((("stage4", 1),), None)
    check_tap_axes(model.width_axes())


def assert_compression_generates_tier_shapes(model: ModelSpec, ratios=(0.75, 0.5, 0.4, 0.25)) -> None:
    """FedConv's compression of the full model has exactly the shapes of the model built at
    each ratio (shapes only: `jax.eval_shape`, nothing runs)."""
    full = jax.eval_shape(lambda: model.init(jax.random.key(0)))["params"]
    for ratio in ratios:
        sub = jax.eval_shape(lambda r=ratio: model.init(jax.random.key(0), r))["params"]

        def generated(sub=sub):
            filters = init_compression_filters(jax.random.key(1), full, sub, FilterConfig())
            return compress(jax.tree.map(jnp.zeros_like, full), filters, FilterConfig())

        assert jax.tree.map(jnp.shape, jax.eval_shape(generated)) == jax.tree.map(jnp.shape, sub), ratio


def test_fedconv_compression_generates_the_tier_model_shapes():
    assert_compression_generates_tier_shapes(make_model("resnet18", 10, (32, 32, 3)))


@pytest.fixture
def small_resnet():
    model = make_model("resnet18", 10, (16, 16, 3), "im2col", width=0.125)  # config.global_width
    assert model.unit_widths(1.0)["stage4"] == 64 and model.unit_widths(0.5)["block1"] == 4
    return model


@pytest.mark.parametrize("policy", ["nested", "rolling"])
def test_sliced_resnet_equals_the_full_one_with_dropped_channels_zeroed(small_resnet, policy):
    """Eval mode, non-trivial BatchNorm statistics: a slice keeps the same channels on both
    sides of every residual add, so it computes the full model with the rest zeroed."""
    x = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
    assert_sliced_equals_zeroed(small_resnet, 0.5, policy, x)
