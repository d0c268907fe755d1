"""The CINIC10 GoogLeNet: the authors' parameter counts, FedConv's sub-model shapes, and a
rolled HeteroFL/FedRolex slice across four concatenated branches per module."""

import jax
import numpy as np
import pytest
from test_resnet import assert_compression_generates_tier_shapes
from test_slicing import assert_sliced_equals_zeroed

from fedconv_jax.algorithms.fedconv.filters import check_tap_axes
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
    # 0.4: where the authors' int(C * SR) module inputs differ from the branches' sum
    assert_compression_generates_tier_shapes(make_model("googlenet", 10, (32, 32, 3)), (0.75, 0.4))


def test_rolled_slice_equals_the_full_model_with_dropped_channels_zeroed():
    """Eval mode, non-trivial statistics, 1/8 width on 8x8 inputs (lax.conv: the forward pass
    alone compiles faster than im2col): every module's input rows
    follow the kept channels of each of the previous module's four branches."""
    model = make_model("googlenet", 10, (8, 8, 3), "lax", width=0.125)
    assert_sliced_equals_zeroed(model, 0.5, "rolling", jax.random.normal(jax.random.key(2), (2, 8, 8, 3)))
