"""The CIFAR ResNet18 family: the authors' parameter counts, FedConv's sub-model shapes, and
HeteroFL/FedRolex slices that keep residual streams consistent."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_slicing import sliced_and_zeroed

from fedconv_jax.algorithms import slicing
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


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.4, 0.25])
def test_fedconv_compression_generates_the_tier_model_shapes(ratio):
    model = make_model("resnet18", 10, (32, 32, 3))

    def generated():
        full = model.init(jax.random.key(0))["params"]
        sub = jax.eval_shape(lambda: model.init(jax.random.key(0), ratio))["params"]
        filters = init_compression_filters(jax.random.key(1), full, sub, FilterConfig())
        return compress(full, filters, FilterConfig())

    want = jax.eval_shape(lambda: model.init(jax.random.key(0), ratio))["params"]
    assert jax.tree.map(jnp.shape, jax.eval_shape(generated)) == jax.tree.map(jnp.shape, want)


@pytest.fixture
def small_resnet():
    model = make_model("resnet18", 10, (16, 16, 3), "im2col", width=0.125)  # config.global_width
    assert model.unit_widths(1.0)["stage4"] == 64 and model.unit_widths(0.5)["block1"] == 4
    return model


@pytest.mark.parametrize("policy", ["nested", "rolling"])
def test_sliced_resnet_equals_the_full_one_with_dropped_channels_zeroed(small_resnet, policy):
    """Eval mode, non-trivial BatchNorm statistics: a slice keeps the same channels on both
    sides of every residual add, so it computes the full model with the rest zeroed."""
    model, ratio = small_resnet, 0.5
    full = model.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    full = {
        "params": jax.tree.map(lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(np.float32), full["params"]),
        "batch_stats": jax.tree.map(lambda x: x + rng.uniform(0.1, 0.5, x.shape).astype(np.float32), full["batch_stats"]),
    }
    widths, kept = model.unit_widths(1.0), model.unit_widths(ratio)
    if policy == "nested":
        idx = slicing.nested_indices(widths, kept, 1)
    else:
        idx = slicing.rolling_indices(widths, kept, 1, jnp.int32(3))
    idx = {u: i[0] for u, i in idx.items()}
    x = jax.random.normal(jax.random.key(2), (2, 16, 16, 3))
    _, sub_logits, full_logits = sliced_and_zeroed(model, ratio, full, idx, x)
    np.testing.assert_allclose(sub_logits, full_logits, rtol=1e-4, atol=1e-4)
    assert float(jnp.abs(sub_logits).max()) > 1e-3  # not two zero outputs
