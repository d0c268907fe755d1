"""Layers whose XLA lowering is chosen per backend.

On XLA:CPU the gradient of `lax.conv` inside `lax.scan`/`vmap` runs many times slower than a
plain jitted step, while an im2col convolution (pad, k*k shifted slices, one matmul) stays fast
(benchmarks/README.md). Both implementations share one parameter layout (HWIO), so a model can
switch between them without touching its parameters. Every layer declares the width axes of
its variables (models/axes.py).
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

from fedconv_jax.models.axes import declare, scaled_width

CONV_IMPLS = ("auto", "im2col", "lax")


def resolve_conv_impl(impl: str) -> str:
    """Maps "auto" to the implementation measured fastest on the default backend."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl={impl!r} is not known; allowed: {', '.join(CONV_IMPLS)}")
    if impl != "auto":
        return impl
    return "im2col" if jax.default_backend() == "cpu" else "lax"


Padding = str | int  # "SAME", "VALID" or symmetric zero padding of that many pixels


def conv_geometry(size: int, kernel: int, stride: int, padding: Padding) -> tuple[int, int, int]:
    """(pad before, pad after, output size) of one spatial axis, as `lax.conv` pads."""
    if padding == "SAME":
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2, out
    if padding == "VALID":
        return 0, 0, (size - kernel) // stride + 1
    if isinstance(padding, int) and not isinstance(padding, bool) and padding >= 0:
        return padding, padding, (size + 2 * padding - kernel) // stride + 1
    raise ValueError(f"padding={padding!r} is not known; allowed: SAME, VALID or an integer >= 0")


Strides = int | tuple[int, int]  # one stride for both spatial axes, or (rows, cols)


def _pair(strides: Strides) -> tuple[int, int]:
    return (strides, strides) if isinstance(strides, int) else tuple(strides)


def im2col_conv(x: jax.Array, kernel: jax.Array, strides: Strides = 1, padding: Padding = "SAME") -> jax.Array:
    """2-D convolution as one matmul. x: (N, H, W, I); kernel: (kh, kw, I, O).

    With one input channel the patch matrix would have only kh*kw columns, a matmul shape
    XLA:CPU runs at a fraction of its rate; there the k*k shifted rank-1 products are summed
    instead (one fused elementwise loop; benchmarks/README.md, "Client step profile").
    """
    kh, kw, cin, cout = kernel.shape
    sh, sw = _pair(strides)
    top, bottom, height = conv_geometry(x.shape[1], kh, sh, padding)
    left, right, width = conv_geometry(x.shape[2], kw, sw, padding)
    padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    rows, cols = sh * (height - 1) + 1, sw * (width - 1) + 1
    patches = [padded[:, a : a + rows : sh, b : b + cols : sw, :] for a in range(kh) for b in range(kw)]
    if cin == 1:
        taps = kernel.reshape(kh * kw, 1, cout)
        return sum(patch @ tap for patch, tap in zip(patches, taps))
    patches = jnp.concatenate(patches, axis=-1)  # (N, H', W', kh*kw*I), tap-major like the kernel
    return patches @ kernel.reshape(kh * kw * cin, cout)


def lax_conv(x: jax.Array, kernel: jax.Array, strides: Strides = 1, padding: Padding = "SAME") -> jax.Array:
    """The same convolution with `lax.conv_general_dilated` (fastest on GPU/TPU)."""
    pair = _pair(strides)
    pads = [conv_geometry(n, k, st, padding)[:2] for n, k, st in zip(x.shape[1:3], kernel.shape[:2], pair)]
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=pair, padding=pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


class Conv(nn.Module):
    """A 2-D convolution with a switchable implementation and declared width axes.

    Attributes:
      features: output channels.
      axes: width-axis names (models/axes.py) of (input channels, output channels); the
        bias follows the output channels.
      kernel_size, strides, padding: as `lax.conv` ("SAME", "VALID" or an integer).
      use_bias: add a bias (convolutions followed by BatchNorm usually have none).
      impl: "im2col" or "lax" (module docstring).
      kernel_init: the kernel's initializer (default LeCun normal).
    """

    features: int
    axes: tuple[str | None, str | None] = (None, None)
    kernel_size: tuple[int, int] = (3, 3)
    strides: Strides = 1
    padding: Padding = "SAME"
    use_bias: bool = True
    impl: str = "im2col"
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            declare(self.kernel_init, None, None, *self.axes),
            (*self.kernel_size, x.shape[-1], self.features),
        )
        conv = im2col_conv if self.impl == "im2col" else lax_conv
        y = conv(x, kernel, self.strides, self.padding)
        if self.use_bias:
            y = y + self.param("bias", declare(nn.initializers.zeros_init(), self.axes[1]), (self.features,))
        return y


class Dense(nn.Module):
    """x @ kernel + bias with declared width axes ((input features, output features))."""

    features: int
    axes: tuple[str | None, str | None] = (None, None)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel", declare(nn.initializers.lecun_normal(), *self.axes), (x.shape[-1], self.features)
        )
        bias = self.param("bias", declare(nn.initializers.zeros_init(), self.axes[1]), (self.features,))
        return x @ kernel + bias


class BatchNorm(nn.Module):
    """Batch normalisation over all axes but the last, with declared width axes.

    The same arithmetic as `flax.linen.BatchNorm` (fast variance, rsqrt(var + eps) * scale),
    whose running statistics carry no axis metadata. State is in "batch_stats".

    Attributes:
      axis: width-axis name of the channels.
      momentum: running statistics keep this share of their previous value.
      affine: learn a scale and a bias; without, they are fixed at 1 and 0 (the authors'
        HARBox model freezes them with `requires_grad_(False)`).
    """

    axis: str | None = None
    momentum: float = 0.9
    epsilon: float = 1e-5
    affine: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        features = (x.shape[-1],)
        mean = self.variable("batch_stats", "mean", declare(nn.initializers.zeros_init(), self.axis), None, features)
        var = self.variable("batch_stats", "var", declare(nn.initializers.ones_init(), self.axis), None, features)
        scale, bias = 1.0, 0.0
        if self.affine:
            scale = self.param("scale", declare(nn.initializers.ones_init(), self.axis), features)
            bias = self.param("bias", declare(nn.initializers.zeros_init(), self.axis), features)
        if train:
            reduce = tuple(range(x.ndim - 1))
            batch_mean = jnp.mean(x, reduce)
            batch_var = jnp.maximum(jnp.mean(jnp.square(x), reduce) - jnp.square(batch_mean), 0.0)
            if not self.is_initializing():
                mean.value = self.momentum * mean.value + (1 - self.momentum) * batch_mean
                var.value = self.momentum * var.value + (1 - self.momentum) * batch_var
        else:
            batch_mean, batch_var = mean.value, var.value
        return (x - batch_mean) * (jax.lax.rsqrt(batch_var + self.epsilon) * scale) + bias


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


class ScaledFamily(nn.Module):
    """The fields every width-scaled family shares, and its width rule.

    Attributes:
      ratio: the client's shrinkage ratio, in (0, 1].
      num_classes: class outputs; never scaled.
      width: a multiplier applied to the whole family before `ratio` (e.g. 1/8 for CPU tests).
      conv_impl: "im2col" or "lax".
    """

    ratio: float = 1.0
    num_classes: int = 10
    width: float = 1.0
    conv_impl: str = "im2col"

    def channels(self, base: int) -> int:
        """floor(floor(base * width) * ratio): the family contract `ModelSpec` relies on."""
        return scaled_width(scaled_width(base, self.width), self.ratio)
