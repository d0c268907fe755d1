"""The paper's HAR CNNs (WiAR, Depth Camera, HARBox): the authors' parameter counts and
output shapes, FedConv's sub-model shapes, and slices that equal the zeroed full model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_resnet import assert_compression_generates_tier_shapes
from test_slicing import assert_sliced_equals_zeroed

from fedconv_jax.models import example_model, make_model
from fedconv_jax.models.har import HAR_FAMILIES

# name -> (classes in the authors' code, kernel, flattened pixels after the two stages, learned BN)
AUTHORS = {"har_wiar": (15, 7, 6 * 7, True), "har_dcd": (5, 3, 9 * 9, True), "har_harbox": (5, 3, 8 * 8, False)}


def authors_count(name: str, sr: float) -> int:
    """Trainable parameters of the authors' PyTorch model at SR `sr`, from its layer list:
    int(C * sr) channels, conv biases, BatchNorm affine unless frozen (HARBox)."""
    classes, k, pixels, affine = AUTHORS[name]
    c1, c2 = int(16 * sr), int(32 * sr)
    bn = lambda c: 2 * c if affine else 0
    return (k * k * c1 + c1 + bn(c1)) + (k * k * c1 * c2 + c2 + bn(c2)) + c2 * pixels * classes + classes


def _model(name, ratio_input=None):
    classes = AUTHORS[name][0]
    return make_model(name, classes, ratio_input or HAR_FAMILIES[name][1], "im2col")


@pytest.mark.parametrize("name", sorted(AUTHORS))
@pytest.mark.parametrize("ratio", [1.0, 0.75, 0.5, 0.25])
def test_parameter_counts_and_outputs_match_the_authors_models(name, ratio):
    model = _model(name)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), ratio))["params"]
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == authors_count(name, ratio)
    # The flatten has the authors' size: their dense layer is C2 * pixels -> classes.
    assert shapes["head"]["kernel"].shape == (int(32 * ratio) * AUTHORS[name][2], AUTHORS[name][0])
    if name == "har_harbox":
        assert "bn_0" not in shapes  # frozen: no learned scale or bias (statistics only)


@pytest.mark.parametrize("name", sorted(AUTHORS))
def test_fedconv_compression_generates_the_tier_model_shapes(name):
    assert_compression_generates_tier_shapes(_model(name))


@pytest.mark.parametrize("name", sorted(AUTHORS))
@pytest.mark.parametrize("policy", ["rolling"])  # nested: test_resnet.py; suite time
def test_sliced_model_equals_the_full_one_with_dropped_channels_zeroed(name, policy):
    """Eval mode with non-trivial BatchNorm statistics, on a smaller input of the same kind."""
    small_input = {"har_wiar": (30, 80, 1), "har_dcd": (12, 12, 1), "har_harbox": (16, 8, 1)}[name]
    x = jax.random.normal(jax.random.key(2), (2, *small_input))
    assert_sliced_equals_zeroed(_model(name, small_input), 0.5, policy, x, offset=5)


def test_unequal_strides_match_lax_conv():
    """WiAR's second conv strides (2, 6): im2col equals lax.conv, value and gradient."""
    from fedconv_jax.models.layers import im2col_conv, lax_conv

    x = jax.random.normal(jax.random.key(0), (2, 15, 41, 3))
    k = jax.random.normal(jax.random.key(1), (7, 7, 3, 4))
    for fn in (lambda f: f(x, k, (2, 6), 1), lambda f: jax.grad(lambda k: jnp.sum(f(x, k, (2, 6), 1) ** 2))(k)):
        np.testing.assert_allclose(fn(im2col_conv), fn(lax_conv), rtol=1e-4, atol=1e-3)
    assert im2col_conv(x, k, (2, 6), 1).shape == (2, 6, 7, 4)


def test_example_models_read_their_widths_without_data():
    for name in AUTHORS:
        assert example_model(name).unit_widths(0.25) == {"conv_0": 4, "conv_1": 8}

