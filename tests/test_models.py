import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from fedconv_jax.core.client import local_train
from fedconv_jax.core.data import IndexSet
from fedconv_jax.models import ModelSpec, make_model, register_model, scaled_width
from fedconv_jax.models.layers import Dense


def count(params):
    return sum(x.size for x in jax.tree.leaves(params))


@pytest.mark.parametrize("ratio, expected", [(1.0, 20490), (0.75, 14506), (0.5, 9098), (0.25, 4266)])
def test_parameter_counts_match_spec(mnist_model, ratio, expected):
    assert count(mnist_model.init(jax.random.key(0), ratio)["params"]) == expected


def test_scaled_width_is_robust_floor():
    assert scaled_width(10, 0.3) == 3
    assert scaled_width(32, 0.4) == 12
    assert scaled_width(16, 0.05) == 0


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (9, 7, 3)])
def test_any_input_size(shape):
    model = make_model("cnn", 10, shape, "im2col")
    variables = model.init(jax.random.key(0), 0.5)
    logits, _ = model.apply(0.5, variables, jnp.ones((2, *shape)))
    assert logits.shape == (2, 10)


def test_im2col_equals_lax_conv():
    x = jax.random.normal(jax.random.key(1), (3, 28, 28, 1))
    a, b = make_model("cnn", 10, (28, 28, 1), "im2col"), make_model("cnn", 10, (28, 28, 1), "lax")
    variables = a.init(jax.random.key(0), 0.75)
    np.testing.assert_allclose(a.apply(0.75, variables, x)[0], b.apply(0.75, variables, x)[0], atol=1e-4)


def test_flatten_is_channel_major(mnist_model):
    """Dense row d belongs to channel d // (H*W): zeroing channel 0's rows must remove
    exactly channel 0's contribution."""
    variables = mnist_model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
    params = variables["params"]
    head = params["head"]["kernel"]
    cut = {**params, "head": {**params["head"], "kernel": head.at[49:].set(0.0)}}  # keep channel 0
    only0 = mnist_model.apply(1.0, {**variables, "params": cut}, x)[0] - params["head"]["bias"]
    # Recompute channel 0's contribution by hand from the features.
    feats = jax.lax.stop_gradient(_features(mnist_model, variables, x))  # (N, 7, 7, 32)
    manual = feats[..., 0].reshape(2, -1) @ head[:49]
    np.testing.assert_allclose(only0, manual, atol=1e-4)


def _features(model, variables, x):
    from fedconv_jax.models.layers import im2col_conv, max_pool_2x2

    p = variables["params"]
    for name in ("conv_0", "conv_1"):
        x = max_pool_2x2(jax.nn.relu(im2col_conv(x, p[name]["kernel"]) + p[name]["bias"]))
    return x


def test_batchnorm_variant_carries_state():
    model = make_model("cnn_bn", 10, (8, 8, 1), "im2col")
    variables = model.init(jax.random.key(0), 0.5)
    assert jax.tree.map(jnp.shape, variables["batch_stats"]) == {
        "bn_0": {"mean": (8,), "var": (8,)},
        "bn_1": {"mean": (16,), "var": (16,)},
    }
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1)) + 3.0
    _, train_stats = model.apply(0.5, variables, x, train=True)
    _, eval_stats = model.apply(0.5, variables, x, train=False)
    assert not np.allclose(train_stats["bn_0"]["mean"], variables["batch_stats"]["bn_0"]["mean"])
    np.testing.assert_array_equal(eval_stats["bn_0"]["mean"], variables["batch_stats"]["bn_0"]["mean"])


def test_cnn_declares_its_width_axes(mnist_model):
    """Every axis names its unit: conv outputs, the next conv's inputs, the channel-major
    flatten of 7x7 pixels; image channels, taps and classes never scale."""
    axes = mnist_model.width_axes()["params"]
    assert axes["conv_0"]["kernel"] == (None, None, None, (("conv_0", 1),))
    assert axes["conv_1"]["kernel"] == (None, None, (("conv_0", 1),), (("conv_1", 1),))
    assert axes["head"]["kernel"] == ((("conv_1", 49),), None) and axes["head"]["bias"] == (None,)
    assert mnist_model.width_axes(0.25) == mnist_model.width_axes(1.0)
    assert mnist_model.unit_widths(0.75) == {"conv_0": 12, "conv_1": 24}
    assert mnist_model.fits(0.0625) and not mnist_model.fits(0.06)


def test_width_multiplier_scales_every_unit_before_the_ratio():
    """config.global_width: floor(floor(C * width) * ratio) per unit."""
    model = make_model("cnn", 10, (28, 28, 1), "im2col", width=0.5)
    assert model.unit_widths(1.0) == {"conv_0": 8, "conv_1": 16}
    assert model.unit_widths(0.75) == {"conv_0": 6, "conv_1": 12}
    assert model.fits(0.125) and not model.fits(0.12)


def test_fedconv_refuses_a_width_axis_among_the_taps():
    from fedconv_jax.algorithms.fedconv.filters import check_tap_axes

    check_tap_axes(make_model("cnn_bn", 10, (8, 8, 1)).width_axes())  # every CNN leaf qualifies
    with pytest.raises(ValueError, match=r"tap\) axes of \['attn'\]\['kernel'\] whole, but its axis 1 scales"):
        check_tap_axes({"attn": {"kernel": (None, (("heads", 1),), None, None)}})


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="model='resnet' is not known"):
        make_model("resnet", 10, (8, 8, 1))


class _DropoutNet(nn.Module):
    ratio: float = 1.0
    num_classes: int = 3
    conv_impl: str = "im2col"

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Dropout(0.5, deterministic=not train)(x.reshape(x.shape[0], -1))
        return Dense(self.num_classes, axes=(None, None), name="head")(x)


def test_a_dropout_model_gets_a_key_per_training_step(temporary_models):
    """`apply`'s rng reaches the model's "dropout" stream, and client training draws one per
    step for a family registered with dropout=True."""
    register_model("dropout_test", _DropoutNet, (4,), dropout=True)
    model = ModelSpec("dropout_test", 3, (4,))
    assert model.uses_dropout and not make_model("cnn", 10, (8, 8, 1)).uses_dropout
    variables = model.init(jax.random.key(0))
    x = jnp.ones((2, 4))
    a, b = (model.apply(1.0, variables, x, True, rng=jax.random.key(k))[0] for k in (1, 2))
    assert not np.allclose(a, b)  # other keys drop other inputs
    np.testing.assert_array_equal(a, model.apply(1.0, variables, x, True, rng=jax.random.key(1))[0])
    np.testing.assert_array_equal(model.apply(1.0, variables, x)[0], model.apply(1.0, variables, x)[0])
    data = IndexSet(jnp.arange(8), jnp.ones(8, bool))
    images, labels = jax.random.normal(jax.random.key(3), (8, 4)), jnp.arange(8) % 3
    trained = jax.jit(lambda k: local_train(
        functools.partial(model.apply, 1.0), variables, images, labels, data, k, epochs=2, batch_size=4, model_rng=True
    ))(jax.random.key(4))
    assert not np.allclose(trained["params"]["head"]["kernel"], variables["params"]["head"]["kernel"])
