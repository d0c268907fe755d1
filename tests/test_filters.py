"""Compression and dilation against the SPEC table and a NumPy loop reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedconv_jax.algorithms.fedconv.compression import (
    compress,
    compress_batch_stats,
    init_compression_filters,
)
from fedconv_jax.algorithms.fedconv.dilation import (
    dilate,
    dilate_batch_stats,
    init_dilation_filters,
)
from fedconv_jax.algorithms.fedconv.filters import (
    FilterConfig,
    apply_tap,
    correlate,
    correlate_transpose,
    filter_kernel_shape,
    init_filters,
    mlr,
)
from fedconv_jax.models import make_model

CONFIGS = [
    FilterConfig(),
    FilterConfig(pre_projection="affine", residual="conv", impl="matmul"),
    FilterConfig(impl="conv"),
]


def shapes(tree):
    return jax.tree.map(lambda x: tuple(x.shape), tree)


def sub_params(model, ratio):
    return model.init(jax.random.key(0), ratio)["params"]


@pytest.fixture(scope="module")
def small_model():
    return make_model("cnn", 10, (8, 8, 1), "im2col")


@pytest.fixture(scope="module")
def small_global(small_model):
    params = small_model.init(jax.random.key(0))["params"]
    # Non-zero biases, so that every pre-projection weight sees a non-zero input.
    return jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(9), x.shape), params)


def test_spec_worked_example(mnist_model):
    global_params = jax.eval_shape(lambda: mnist_model.init(jax.random.key(0)))["params"]
    sub = jax.eval_shape(lambda: mnist_model.init(jax.random.key(0), 0.75))["params"]
    filters = init_compression_filters(jax.random.key(1), global_params, sub, FilterConfig())
    assert sub["conv_1"]["kernel"].shape == (3, 3, 12, 24)
    assert filters["conv_1"]["kernel"]["v"].shape == (9, 5, 9)  # 9 filters of kernel (5, 9)
    assert filters["conv_0"]["kernel"]["v"].shape == (9, 1, 5)  # input channels not compressed
    assert filters["head"]["kernel"]["v"].shape == (1, 393, 1)  # classes never compressed
    assert filters["head"]["bias"]["v"].shape == (1, 1, 1)
    assert filters["conv_1"]["bias"]["v"].shape == (1, 1, 9)
    out = jax.eval_shape(lambda p, f: compress(p, f, FilterConfig()), global_params, filters)
    assert shapes(out) == shapes(sub)


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.4, 0.25])
@pytest.mark.parametrize("config", CONFIGS + [FilterConfig(init="random", mlr=True)])
def test_shapes_follow_the_sub_model(mnist_model, ratio, config):
    global_params = jax.eval_shape(lambda: mnist_model.init(jax.random.key(0)))["params"]
    sub = jax.eval_shape(lambda: mnist_model.init(jax.random.key(0), ratio))["params"]
    comp = init_compression_filters(jax.random.key(1), global_params, sub, config)
    small = jax.eval_shape(lambda p, f: compress(p, f, config), global_params, comp)
    assert shapes(small) == shapes(sub)
    dil = init_dilation_filters(jax.random.key(2), global_params, sub, config)
    big = jax.eval_shape(lambda p, f: dilate(p, f, config), small, dil)
    assert shapes(big) == shapes(global_params)


@pytest.mark.parametrize("config", CONFIGS + [FilterConfig(residual="none"), FilterConfig(pre_projection="affine", residual="none")])
def test_identity_init_is_slicing_and_zero_padding(small_model, small_global, config):
    global_params = small_global
    sub = sub_params(small_model, 0.5)
    small = compress(global_params, init_compression_filters(jax.random.key(1), global_params, sub, config), config)
    for g, s in zip(jax.tree.leaves(global_params), jax.tree.leaves(small)):
        np.testing.assert_allclose(s, g[tuple(slice(0, n) for n in s.shape)], atol=1e-6)
    big = dilate(small, init_dilation_filters(jax.random.key(2), global_params, sub, config), config)
    for b, s in zip(jax.tree.leaves(big), jax.tree.leaves(small)):
        padded = np.zeros(b.shape, np.float32)
        padded[tuple(slice(0, n) for n in s.shape)] = s
        np.testing.assert_allclose(b, padded, atol=1e-6)


def test_mlr_values():
    np.testing.assert_allclose(mlr(jnp.array([-2.0, 0.0, 3.0])), [-0.002, 0.0, 2.55], rtol=1e-6)


# ----------------------------------------------------------------- NumPy reference


def np_correlate(x, k):
    rows, cols = x.shape[0] - k.shape[0] + 1, x.shape[1] - k.shape[1] + 1
    out = np.zeros((rows, cols))
    for i in range(rows):
        for j in range(cols):
            out[i, j] = np.sum(k * x[i : i + k.shape[0], j : j + k.shape[1]])
    return out


def np_correlate_transpose(y, k):
    out = np.zeros((y.shape[0] + k.shape[0] - 1, y.shape[1] + k.shape[1] - 1))
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            out[i : i + k.shape[0], j : j + k.shape[1]] += k * y[i, j]
    return out


def np_filter_module(tap, x, residual, use_mlr, transpose):
    pre = {k: np.asarray(v, np.float64) for k, v in tap["pre"].items()}
    if "a" in pre:
        h = pre["a"] * x + pre["b"]
    else:
        h = np.maximum(x[..., None] * pre["w1"] + pre["b1"], 0) @ pre["w2"] + pre["b2"]
    if residual:
        h = x + h
    v = np.asarray(tap["v"], np.float64)
    kernel = float(tap["g"]) * v / np.linalg.norm(v)
    y = (np_correlate_transpose if transpose else np_correlate)(h, kernel)
    return np.where(y >= 0, 0.85 * y, 0.001 * y) if use_mlr else y


@pytest.mark.parametrize("impl", ["matmul", "fft", "conv"])
@pytest.mark.parametrize("shape, kernel", [((16, 32), (5, 9)), ((40, 3), (11, 1)), ((1, 12), (1, 4)), ((6, 6), (6, 6))])
def test_correlation_and_transpose_match_numpy(impl, shape, kernel):
    rng = np.random.default_rng(0)
    x, k = rng.normal(size=shape), rng.normal(size=kernel)
    np.testing.assert_allclose(correlate(jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32), impl), np_correlate(x, k), atol=1e-5)
    y = rng.normal(size=(shape[0] - kernel[0] + 1, shape[1] - kernel[1] + 1))
    np.testing.assert_allclose(
        correlate_transpose(jnp.asarray(y, jnp.float32), jnp.asarray(k, jnp.float32), impl),
        np_correlate_transpose(y, k),
        atol=1e-5,
    )


@pytest.mark.parametrize("impl", ["matmul", "fft"])
@pytest.mark.parametrize("shape, kernel", [((16, 32), (5, 9)), ((40, 3), (11, 1)), ((6, 6), (6, 6)), ((1568, 1), (393, 1))])
def test_kernel_gradients_of_correlation_and_transpose_match_numpy(impl, shape, kernel):
    """d/dk sum(w * correlate(x, k)) = correlate(x, w); for the transpose the roles of x
    and w swap. (1568, 1) / (393, 1) is the MNIST head's dilation band at SR 0.75."""
    rng = np.random.default_rng(1)
    x, k = rng.normal(size=shape), rng.normal(size=kernel)
    w = rng.normal(size=(shape[0] - kernel[0] + 1, shape[1] - kernel[1] + 1))
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    grad = jax.jit(jax.grad(lambda kk: jnp.sum(f32(w) * correlate(f32(x), kk, impl))))(f32(k))
    np.testing.assert_allclose(grad, np_correlate(x, w), rtol=1e-4, atol=1e-3)
    grad_t = jax.jit(jax.grad(lambda kk: jnp.sum(f32(x) * correlate_transpose(f32(w), kk, impl))))(f32(k))
    np.testing.assert_allclose(grad_t, np_correlate(x, w), rtol=1e-4, atol=1e-3)


def test_random_init_draws_each_tensor_its_own_values_within_pytorchs_bounds():
    config = FilterConfig(init="random")
    shape = jax.ShapeDtypeStruct((16, 32), jnp.float32)
    small = jax.ShapeDtypeStruct((12, 24), jnp.float32)
    filt = init_filters(jax.random.key(0), {"a": shape, "b": shape}, {"a": small, "b": small}, config)
    bound2, bound_v = 1.0 / np.sqrt(config.hidden), 1.0 / np.sqrt(5 * 9)
    for leaf in ("a", "b"):
        pre, v = filt[leaf]["pre"], np.asarray(filt[leaf]["v"])
        assert np.abs(pre["w1"]).max() <= 1.0 and np.abs(pre["w2"]).max() <= bound2
        assert np.abs(v).max() <= bound_v and np.abs(v).max() > 0.5 * bound_v  # spans the range
        np.testing.assert_allclose(filt[leaf]["g"], np.sqrt((v**2).sum(axis=(1, 2))), rtol=1e-6)
    assert not np.allclose(filt["a"]["v"], filt["b"]["v"])  # no tensor reuses another's draws
    assert not np.allclose(filt["a"]["pre"]["w1"], filt["a"]["pre"]["b1"])


@pytest.mark.parametrize("pre_projection", ["paper", "affine"])
@pytest.mark.parametrize("use_mlr", [False, True])
@pytest.mark.parametrize("transpose", [False, True])
def test_filter_module_matches_numpy(pre_projection, use_mlr, transpose):
    config = FilterConfig(pre_projection=pre_projection, mlr=use_mlr, init="random")
    big, small = jax.ShapeDtypeStruct((16, 32), jnp.float32), jax.ShapeDtypeStruct((12, 24), jnp.float32)
    filt = init_filters(jax.random.key(3), {"w": big}, {"w": small}, config)["w"]  # kernel (1, 5, 9)
    tap = jax.tree.map(lambda a: a[0], filt)
    shape = (12, 24) if transpose else (16, 32)
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    got = apply_tap(tap, jnp.asarray(x), True, config, transpose)
    want = np_filter_module(tap, x.astype(np.float64), True, use_mlr, transpose)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_filter_kernel_shape_rule():
    assert filter_kernel_shape((3, 3, 16, 32), (3, 3, 12, 24)) == (9, 5, 9)
    assert filter_kernel_shape((1568, 10), (1176, 10)) == (1, 393, 1)
    assert filter_kernel_shape((32,), (24,)) == (1, 1, 9)
    with pytest.raises(ValueError, match="larger"):
        filter_kernel_shape((4,), (5,))


# ----------------------------------------------------------------- gradients


def _grad_norms(fn, filters):
    grads = jax.jit(jax.grad(fn))(filters)  # one compile, not an eager dispatch per op
    return jax.tree_util.tree_leaves_with_path(jax.tree.map(lambda g: float(jnp.abs(g).sum()), grads))


@pytest.mark.parametrize("config", [FilterConfig(init="random"), FilterConfig(init="random", pre_projection="affine", residual="conv", mlr=True)])
def test_gradients_reach_every_filter_parameter(small_model, small_global, config):
    mnist_model, global_params = small_model, small_global
    sub = jax.tree.map(lambda x: x + 0.1, sub_params(small_model, 0.5))
    x = jax.random.normal(jax.random.key(4), (4, 8, 8, 1))
    comp = init_compression_filters(jax.random.key(1), global_params, sub, config)
    dil = init_dilation_filters(jax.random.key(2), global_params, sub, config)

    def compress_loss(f):
        return jnp.sum(mnist_model.apply(0.5, {"params": compress(global_params, f, config), "batch_stats": {}}, x)[0] ** 2)

    def dilate_loss(f):
        return jnp.sum(mnist_model.apply(1.0, {"params": dilate(sub, f, config), "batch_stats": {}}, x)[0] ** 2)

    for fn, filters in ((compress_loss, comp), (dilate_loss, dil)):
        for path, norm in _grad_norms(fn, filters):
            name = jax.tree_util.keystr(path)
            if name == "['head']['bias']['v']":
                # A (1, 1) kernel under weight norm is g * sign(v): v has no direction to learn.
                assert norm < 1e-3
                continue
            assert norm > 0, f"no gradient reaches {name}"


def test_identity_init_gradients_reach_all_but_the_zeroed_branch(small_model, small_global):
    """With the identity init the paper pre-projection's second 1x1 conv is zero, so only the
    first one's gradient is zero at the start (it flows once w2 moves)."""
    config = FilterConfig()
    mnist_model, global_params = small_model, small_global
    sub = sub_params(small_model, 0.5)
    x = jax.random.normal(jax.random.key(4), (4, 8, 8, 1))
    comp = init_compression_filters(jax.random.key(1), global_params, sub, config)

    def loss(f):
        return jnp.sum(mnist_model.apply(0.5, {"params": compress(global_params, f, config), "batch_stats": {}}, x)[0] ** 2)

    for path, norm in _grad_norms(loss, comp):
        name = jax.tree_util.keystr(path)
        zero_expected = "'w1'" in name or "'b1'" in name
        if name == "['head']['bias']['v']":
            continue  # g * sign(v): no direction to learn (see above)
        assert (norm == 0) == zero_expected, name
    moved = jax.tree.map(lambda f: f, comp)
    moved["conv_1"]["kernel"]["pre"]["w2"] = moved["conv_1"]["kernel"]["pre"]["w2"] + 0.1
    grads = jax.grad(loss)(moved)
    assert float(jnp.abs(grads["conv_1"]["kernel"]["pre"]["w1"]).sum()) > 0


def test_batch_stats_slice_and_pad():
    model = make_model("cnn_bn", 10, (8, 8, 1))
    big = model.init(jax.random.key(0), 1.0)["batch_stats"]
    big = jax.tree.map(lambda x: x + jnp.arange(x.shape[0], dtype=x.dtype), big)
    like = model.init(jax.random.key(0), 0.5)["batch_stats"]
    small = compress_batch_stats(big, like)
    assert shapes(small) == shapes(like)
    np.testing.assert_array_equal(small["bn_1"]["mean"], big["bn_1"]["mean"][:16])
    back = dilate_batch_stats(jax.tree.map(lambda x: x * 0 - 1.0, small), big)
    np.testing.assert_array_equal(back["bn_1"]["mean"][:16], -1.0)
    np.testing.assert_array_equal(back["bn_1"]["mean"][16:], big["bn_1"]["mean"][16:])
