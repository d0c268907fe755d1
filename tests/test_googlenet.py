"""The CINIC10 GoogLeNet: the authors' parameter counts, FedConv's sub-model shapes, and a
rolled HeteroFL/FedRolex slice across four concatenated branches per module."""

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
from fedconv_jax.models import make_model
from fedconv_jax.models.googlenet import MODULES, STEM

MODULE_INPUTS = (192, 256, 480, 512, 512, 512, 528, 832, 832)  # the authors' declared input widths


def authors_count(sr: float) -> int:
    """Trainable parameters of the authors' PyTorch GoogLeNet at SR `sr`, from its layer list
    (network_architecture/CINIC.py): int(C * sr) everywhere, conv bias, BatchNorm affine."""
    w = lambda c: int(c * sr)
    conv = lambda cin, cout, k: k * k * cin * cout + cout + 2 * cout
    total = conv(3, w(STEM), 3)
    for cin, (b1, b2r, b2, b3r, b3, b4) in zip(MODULE_INPUTS, MODULES):
        cin = w(cin)
        total += conv(cin, w(b1), 1) + conv(cin, w(b2r), 1) + conv(w(b2r), w(b2), 3)
        total += conv(cin, w(b3r), 1) + conv(w(b3r), w(b3), 3) + conv(w(b3), w(b3), 3) + conv(cin, w(b4), 1)
    return total + w(1024) * 10 + 10


@pytest.mark.parametrize("ratio, millions", [(1.0, 6.17), (0.75, 3.48), (0.5, 1.55), (0.25, 0.39)])
def test_parameter_counts_match_the_authors_model(ratio, millions):
    model = make_model("googlenet", 10, (32, 32, 3))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), ratio))["params"]
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    assert count == authors_count(ratio)
    assert round(count / 1e6, 2) == millions
    axes = model.width_axes()["params"]
    assert axes["m2_b1"]["kernel"][2] == tuple((f"m1_{b}", 1) for b in ("b1", "b2", "b3", "b4"))
    check_tap_axes(model.width_axes())


def test_fedconv_compression_generates_the_tier_model_shapes():
    model = make_model("googlenet", 10, (32, 32, 3))
    full = jax.eval_shape(lambda: model.init(jax.random.key(0)))["params"]
    for ratio in (0.75, 0.5, 0.4, 0.25):
        sub = jax.eval_shape(lambda r=ratio: model.init(jax.random.key(0), r))["params"]

        def generated(sub=sub):
            f = init_compression_filters(jax.random.key(1), full, sub, FilterConfig())
            return compress(jax.tree.map(jnp.zeros_like, full), f, FilterConfig())

        assert jax.tree.map(jnp.shape, jax.eval_shape(generated)) == jax.tree.map(jnp.shape, sub)


def test_rolled_slice_equals_the_full_model_with_dropped_channels_zeroed():
    """Eval mode, non-trivial statistics, 1/8 width on 8x8 inputs (lax.conv: the forward pass
    alone compiles faster than im2col): every module's input rows
    follow the kept channels of each of the previous module's four branches."""
    model, ratio = make_model("googlenet", 10, (8, 8, 3), "lax", width=0.125), 0.5
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0)))  # 258 Flax draws compile for a minute
    full = {
        "params": jax.tree.map(lambda x: 0.2 * rng.standard_normal(x.shape).astype(np.float32), shapes["params"]),
        "batch_stats": jax.tree.map(lambda x: rng.uniform(0.1, 0.5, x.shape).astype(np.float32), shapes["batch_stats"]),
    }
    idx = slicing.rolling_indices(model.unit_widths(1.0), model.unit_widths(ratio), 1, jnp.int32(3))
    idx = {u: i[0] for u, i in idx.items()}
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 3))
    _, sub_logits, full_logits = sliced_and_zeroed(model, ratio, full, idx, x)
    np.testing.assert_allclose(sub_logits, full_logits, rtol=1e-4, atol=1e-4)
    assert float(jnp.abs(sub_logits).max()) > 1e-3
