"""Layer lowerings: the fast CPU paths compute what lax.conv / a reference max-pool compute."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from fedconv_jax.models.layers import BatchNorm, im2col_conv, lax_conv, max_pool_2x2


@pytest.mark.parametrize("cin", [1, 3])
def test_im2col_conv_and_its_gradient_equal_lax_conv(cin):
    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, 7, 6, cin))
    kernel = jax.random.normal(kk, (3, 3, cin, 5))
    probe = jax.random.normal(kg, (2, 7, 6, 5))
    np.testing.assert_allclose(im2col_conv(x, kernel), lax_conv(x, kernel), atol=1e-5)

    def grads(conv):
        return jax.grad(lambda x, k: jnp.sum(conv(x, k) * probe), argnums=(0, 1))(x, kernel)

    for a, b in zip(grads(im2col_conv), grads(lax_conv)):
        np.testing.assert_allclose(a, b, atol=1e-4)


def _conv_reference(x, kernel, stride, pad):
    """Loop reference of a zero-padded (pad = (before, after) per spatial axis), strided
    cross-correlation, as PyTorch and lax.conv compute it."""
    (top, bottom), (left, right) = pad
    x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    kh, kw, _, cout = kernel.shape
    rows, cols = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], rows, cols, cout), np.float32)
    for i in range(rows):
        for j in range(cols):
            window = x[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            out[:, i, j, :] = np.einsum("nabi,abio->no", window, kernel)
    return out


@pytest.mark.parametrize(
    "stride, padding, pad",
    [(2, "SAME", ((1, 1), (0, 1))), (2, "VALID", ((0, 0), (0, 0))), (2, 1, ((1, 1), (1, 1))), (3, 0, ((0, 0), (0, 0)))],
)
def test_strided_padded_conv_matches_a_loop_and_lax(stride, padding, pad):
    """Strides and paddings (ResNet's 3x3/2 convs, 1x1/2 shortcuts): both lowerings equal a
    loop reference, and their gradients agree. SAME on 7 rows at stride 2 pads (1, 1), on 6
    columns (0, 1), as lax does."""
    kx, kk, kg = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(kx, (2, 7, 6, 3))
    kernel = jax.random.normal(kk, (3, 3, 3, 4))
    want = _conv_reference(np.asarray(x), np.asarray(kernel), stride, pad)
    for conv in (im2col_conv, lax_conv):
        np.testing.assert_allclose(conv(x, kernel, stride, padding), want, atol=1e-4)
    probe = jax.random.normal(kg, want.shape)

    def grads(conv):
        return jax.grad(lambda x, k: jnp.sum(conv(x, k, stride, padding) * probe), argnums=(0, 1))(x, kernel)

    for a, b in zip(grads(im2col_conv), grads(lax_conv)):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_batch_norm_computes_what_flax_batch_norm_computes():
    """The declared BatchNorm (flax's carries no axis metadata on its statistics) equals
    flax.linen.BatchNorm in training and evaluation, statistics included."""
    x = jax.random.normal(jax.random.key(2), (4, 5, 5, 3)) * 2.0 + 1.0
    ours, theirs = BatchNorm("u"), nn.BatchNorm(momentum=0.9)
    v_ours = nn.unbox(ours.init(jax.random.key(0), x))
    v_theirs = theirs.init(jax.random.key(0), x, use_running_average=True)
    v_ours = {"params": {"scale": jnp.arange(3.0) + 0.5, "bias": jnp.arange(3.0)}, "batch_stats": v_ours["batch_stats"]}
    v_theirs = {"params": v_ours["params"], "batch_stats": v_theirs["batch_stats"]}
    y_ours, s_ours = ours.apply(v_ours, x, True, mutable=["batch_stats"])
    y_theirs, s_theirs = theirs.apply(v_theirs, x, use_running_average=False, mutable=["batch_stats"])
    np.testing.assert_allclose(y_ours, y_theirs, rtol=1e-6, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), s_ours, s_theirs)
    trained = {"params": v_ours["params"], **s_ours}
    np.testing.assert_allclose(ours.apply(trained, x), theirs.apply(trained, x, use_running_average=True), rtol=1e-6, atol=1e-6)


def _pool_reference(x, g):
    """Loop reference: the max of each 2x2 window, and the gradient to its first maximum."""
    n, h, w, c = x.shape
    y = np.zeros((n, h // 2, w // 2, c), np.float32)
    dx = np.zeros_like(x)
    for i in range(n):
        for r in range(h // 2):
            for s in range(w // 2):
                for ch in range(c):
                    window = x[i, 2 * r : 2 * r + 2, 2 * s : 2 * s + 2, ch]
                    a, b = np.unravel_index(np.argmax(window), (2, 2))  # first max, row-major
                    y[i, r, s, ch] = window[a, b]
                    dx[i, 2 * r + a, 2 * s + b, ch] = g[i, r, s, ch]
    return y, dx


@pytest.mark.parametrize("shape", [(2, 6, 4, 3), (1, 7, 5, 2)])
def test_max_pool_value_and_gradient_match_a_loop_reference_with_ties(shape):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, shape).astype(np.float32)  # few distinct values: many tied windows
    g = rng.normal(size=(shape[0], shape[1] // 2, shape[2] // 2, shape[3])).astype(np.float32)
    y, vjp = jax.vjp(max_pool_2x2, jnp.asarray(x))
    (dx,) = vjp(jnp.asarray(g))
    y_ref, dx_ref = _pool_reference(x, g)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(dx, dx_ref, atol=0)
    # jit and vmap use the same rule.
    (dx_jit,) = jax.jit(lambda x, g: jax.vjp(max_pool_2x2, x)[1](g))(jnp.asarray(x), jnp.asarray(g))
    np.testing.assert_array_equal(dx_jit, dx_ref)
    batched = jax.vmap(lambda x, g: jax.vjp(max_pool_2x2, x)[1](g)[0])(jnp.stack([x, x + 1]), jnp.stack([g, g]))
    np.testing.assert_array_equal(batched[1], dx_ref)
