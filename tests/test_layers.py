"""Layer lowerings: the fast CPU paths compute what lax.conv / a reference max-pool compute."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedconv_jax.models.layers import im2col_conv, lax_conv, max_pool_2x2


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
