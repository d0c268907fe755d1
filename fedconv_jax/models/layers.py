"""Layers whose XLA lowering is chosen per backend.

On XLA:CPU the gradient of `lax.conv` inside `lax.scan`/`vmap` runs many times slower than a
plain jitted step, while an im2col convolution (pad, k*k shifted slices, one matmul) stays fast
(benchmarks/README.md). Both implementations share one parameter layout (HWIO), so a model can
switch between them without touching its parameters.
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

CONV_IMPLS = ("auto", "im2col", "lax")


def resolve_conv_impl(impl: str) -> str:
    """Maps "auto" to the implementation measured fastest on the default backend."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl={impl!r} is not known; allowed: {', '.join(CONV_IMPLS)}")
    if impl != "auto":
        return impl
    return "im2col" if jax.default_backend() == "cpu" else "lax"


def im2col_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """SAME, stride-1 convolution as one matmul. x: (N, H, W, I); kernel: (kh, kw, I, O).

    With one input channel the patch matrix would have only kh*kw columns, a matmul shape
    XLA:CPU runs at a fraction of its rate; there the k*k shifted rank-1 products are summed
    instead (one fused elementwise loop; benchmarks/README.md, "Client step profile").
    """
    kh, kw, cin, cout = kernel.shape
    pad_h, pad_w = (kh - 1) // 2, (kw - 1) // 2
    padded = jnp.pad(x, ((0, 0), (pad_h, kh - 1 - pad_h), (pad_w, kw - 1 - pad_w), (0, 0)))
    height, width = x.shape[1], x.shape[2]
    patches = [padded[:, a : a + height, b : b + width, :] for a in range(kh) for b in range(kw)]
    if cin == 1:
        taps = kernel.reshape(kh * kw, 1, cout)
        return sum(patch @ tap for patch, tap in zip(patches, taps))
    patches = jnp.concatenate(patches, axis=-1)  # (N, H, W, kh*kw*I), tap-major like the kernel
    return patches @ kernel.reshape(kh * kw * cin, cout)


def lax_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """SAME, stride-1 convolution with `lax.conv_general_dilated` (fastest on GPU/TPU)."""
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding="SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


class Conv(nn.Module):
    """A SAME, stride-1 2-D convolution with bias and a switchable implementation."""

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    impl: str = "im2col"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(),
            (*self.kernel_size, x.shape[-1], self.features),
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        conv = im2col_conv if self.impl == "im2col" else lax_conv
        return conv(x, kernel) + bias


@jax.custom_vjp
def _pool_even(x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _pool_even_fwd(x):
    y = _pool_even(x)
    return y, (x, y)


def _pool_even_bwd(res, g):
    """The gradient goes to the first maximum of each window in row-major order (PyTorch's
    choice); tied windows are common on MNIST, where blank patches give equal outputs."""
    x, y = res
    n, h, w, c = x.shape
    hit = x.reshape(n, h // 2, 2, w // 2, 2, c) == y[:, :, None, :, None, :]
    taken = jnp.zeros_like(hit[:, :, 0, :, 0, :])
    rows = []
    for a in range(2):
        cols = []
        for b in range(2):
            first = hit[:, :, a, :, b, :] & ~taken
            taken = taken | first
            cols.append(jnp.where(first, g, 0.0))
        rows.append(jnp.stack(cols, axis=3))  # (n, h/2, w/2, 2, c)
    return (jnp.stack(rows, axis=2).reshape(n, h, w, c),)


_pool_even.defvjp(_pool_even_fwd, _pool_even_bwd)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, VALID (odd rows/columns are dropped).

    Reshape + max with a custom gradient: one fused select per element. JAX's own rule for
    `max` splits ties evenly (compare, count, divide) and `reduce_window`'s gradient is a
    select-and-scatter; both were measured slower on XLA:CPU (benchmarks/README.md).
    """
    h, w = x.shape[1], x.shape[2]
    return _pool_even(x[:, : h - h % 2, : w - w % 2, :])
