"""The learned filter module shared by compression (Eq. 1) and dilation (Eq. 3), SPEC §3.

Every parameter tensor is viewed as a stack of 2-D "images" (taps, rows, cols): a conv kernel
(kh, kw, I, O) is kh*kw images of shape (I, O), a dense kernel (D, O) one image, a vector (O,)
one (1, O) row. One filter module per tap maps an image N -> N' with a single-channel,
stride-1, padding-0 ("valid") correlation of kernel (N - N' + 1) per axis; dilation applies
the transposed operation with a kernel of the same size, N' -> N. This rule, derived from the
two shapes alone, reproduces every row of the SPEC table (first conv: I' = I gives kernel
(1, O - O' + 1); last dense: classes are not compressed, so kernel (D - D' + 1, 1); last bias:
(1, 1)).

One module = pre-projection -> residual add of the input -> weight-normalised valid
correlation (or its transpose) -> MLR (optional).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fedconv_jax.core.types import Params, PRNGKey
from fedconv_jax.core.validation import check_bool, check_choice, check_int
from fedconv_jax.models.axes import is_leaf_axes

PRE_PROJECTIONS = ("paper", "affine")
RESIDUALS = ("all", "conv", "none")
FILTER_INITS = ("identity", "random")
FILTER_IMPLS = ("matmul", "fft", "conv")
MLR_POSITIVE, MLR_NEGATIVE = 0.85, 0.001


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    """Static choices of the filter module (hashable: a jit static argument).

    Attributes:
      pre_projection: "paper" (two 1x1 convs, 1 -> hidden -> 1, ReLU between them, since
        without a nonlinearity they collapse to one affine map) or "affine" (the reference
        code's single 1x1 conv: a * x + b).
      residual: add the input after the pre-projection for "all" tensors, for "conv" kernels
        only (the reference code), or "none".
      mlr: apply MLR(x) = 0.85 x (x >= 0), 0.001 x (x < 0) to every generated tensor.
      init: "identity" (compression starts as first-channel slicing, dilation as zero
        padding) or "random" (PyTorch's default init, as in the reference code).
      impl: the 2-D correlation: "fft" (one circular correlation via rfft2; the fastest on
        CPU, benchmarks/README.md), "matmul" (Toeplitz matrices) or "conv" (lax.conv).
      hidden: hidden channels of the "paper" pre-projection.
    """

    pre_projection: str = "paper"
    residual: str = "all"
    mlr: bool = False
    init: str = "identity"
    impl: str = "fft"
    hidden: int = 16

    def __post_init__(self):
        check_choice("pre_projection", self.pre_projection, PRE_PROJECTIONS)
        check_choice("residual", self.residual, RESIDUALS)
        check_bool("mlr", self.mlr)
        check_choice("init", self.init, FILTER_INITS)
        check_choice("impl", self.impl, FILTER_IMPLS)
        check_int("hidden", self.hidden, maximum=4096)


# --------------------------------------------------------------------------- tensor views


def as_taps(x: jax.Array) -> jax.Array:
    """(…, R, C) -> (taps, R, C); a vector (C,) -> (1, 1, C)."""
    if x.ndim == 0:
        raise ValueError("scalar parameters cannot be compressed; give them shape (1,)")
    if x.ndim == 1:
        return x.reshape(1, 1, -1)
    return x.reshape(-1, *x.shape[-2:])


def from_taps(y: jax.Array, source_shape: tuple[int, ...]) -> jax.Array:
    """Inverse of `as_taps` for a tensor whose (pre-filter) shape was `source_shape`."""
    if len(source_shape) == 1:
        return y.reshape(-1)
    return y.reshape(*source_shape[:-2], *y.shape[-2:])


def _leading(shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape[:-2] if len(shape) >= 2 else ()


def filter_kernel_shape(big: tuple[int, ...], small: tuple[int, ...]) -> tuple[int, int, int]:
    """(taps, k1, k2) of the filters mapping a tensor of shape `big` to `small` (SPEC §3)."""
    if len(big) != len(small) or _leading(big) != _leading(small):
        raise ValueError(f"cannot map a tensor of shape {big} to {small}")
    big_taps, small_taps = as_taps(np.empty(big)).shape, as_taps(np.empty(small)).shape
    rows, cols = big_taps[1] - small_taps[1] + 1, big_taps[2] - small_taps[2] + 1
    if rows < 1 or cols < 1:
        raise ValueError(f"sub-model tensor {small} is larger than its global tensor {big}")
    return big_taps[0], rows, cols


def check_tap_axes(width_axes) -> None:
    """Refuses a model whose width scales along a tap axis (any axis but the last two).

    Filters map each tap image (the last two axes) on its own, so every leading axis must
    keep its size: a ResNet or GoogLeNet conv kernel (kh, kw, I, O) qualifies; a kernel
    (D, heads, head_dim) with scaled heads does not. `width_axes` is the model's declaration
    (`ModelSpec.width_axes()`).
    """
    for path, axes in jax.tree_util.tree_flatten_with_path(width_axes, is_leaf=is_leaf_axes)[0]:
        scaled = [i for i, decl in enumerate(axes[:-2]) if decl is not None]
        if scaled:
            raise ValueError(
                f"FedConv filters keep the leading (tap) axes of {jax.tree_util.keystr(path)} whole, but its axis "
                f"{scaled[0]} scales with width ({axes[scaled[0]]}); declare the width on the last two axes"
            )


# --------------------------------------------------------------------------- one tap


def _toeplitz(kernels: jax.Array, out_len: int, in_len: int) -> jax.Array:
    """(B, k) kernels -> (B, out_len, in_len) banded matrices T[b, i, i + a] = kernels[b, a].

    Built by the skew trick (pad each row to in_len + 1, flatten, cut, reshape) instead of a
    gather: the gradient is then a pad/reshape/sum, not a scatter-add of out_len * in_len
    entries, which dominated the dilation step on XLA:CPU (the head's band is 1176 x 1568).
    """
    batch, k = kernels.shape
    rows = jnp.broadcast_to(kernels[:, None, :], (batch, out_len, k))
    skewed = jnp.pad(rows, ((0, 0), (0, 0), (0, in_len + 1 - k))).reshape(batch, -1)
    return skewed[:, : out_len * in_len].reshape(batch, out_len, in_len)


def _correlate_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Valid 2-D correlation out[i, j] = sum_ab kernel[a, b] x[i + a, j + b] via Toeplitz
    matmuls, along whichever axis makes the matmuls cheaper."""
    (rows, cols), (k1, k2) = x.shape, kernel.shape
    out_rows, out_cols = rows - k1 + 1, cols - k2 + 1
    if k2 * out_rows * rows * out_cols <= k1 * out_rows * cols * out_cols:
        # y = sum_b T_b @ x[:, b:b+out_cols], T_b[i, i + a] = kernel[a, b]
        toeplitz = _toeplitz(kernel.T, out_rows, rows)
        shifted = jnp.stack([x[:, b : b + out_cols] for b in range(k2)])
        return jnp.einsum("bir,brc->ic", toeplitz, shifted)
    # y = sum_a x[a:a+out_rows, :] @ T_a, T_a[j + b, j] = kernel[a, b]
    toeplitz = _toeplitz(kernel, out_cols, cols)  # (k1, out_cols, cols); used transposed
    shifted = jnp.stack([x[a : a + out_rows, :] for a in range(k1)])
    return jnp.einsum("aic,ajc->ij", shifted, toeplitz)


def _correlate_fft(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Valid 2-D correlation through one circular correlation of x's own size: the valid
    outputs never wrap around, so no padding is needed. O(RC log RC) however long the kernel
    (the dense head's is 393 x 1 at SR 0.75, where a Toeplitz band has 1.8 M entries)."""
    (rows, cols), (k1, k2) = x.shape, kernel.shape
    spectrum = jnp.fft.rfft2(x) * jnp.conj(jnp.fft.rfft2(kernel, s=(rows, cols)))
    return jnp.fft.irfft2(spectrum, s=(rows, cols))[: rows - k1 + 1, : cols - k2 + 1]


def _correlate_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    out = jax.lax.conv_general_dilated(x[None, None], kernel[None, None], (1, 1), "VALID")
    return out[0, 0]


def correlate(x: jax.Array, kernel: jax.Array, impl: str = "fft") -> jax.Array:
    """Valid, stride-1 2-D correlation: (R, C) * (k1, k2) -> (R - k1 + 1, C - k2 + 1)."""
    return {"matmul": _correlate_matmul, "fft": _correlate_fft, "conv": _correlate_conv}[impl](x, kernel)


def correlate_transpose(y: jax.Array, kernel: jax.Array, impl: str = "fft") -> jax.Array:
    """The transposed correlation (a "full" convolution): (R', C') -> (R' + k1 - 1, C' + k2 - 1).

    out[i, j] = sum_ab kernel[a, b] y[i - a, j - b]. Computed as the exact adjoint of
    `correlate` (a VJP of a linear map), so the two can never disagree.
    """
    shape = (y.shape[0] + kernel.shape[0] - 1, y.shape[1] + kernel.shape[1] - 1)
    _, adjoint = jax.vjp(lambda x: correlate(x, kernel, impl), jnp.zeros(shape, y.dtype))
    return adjoint(y)[0]


def mlr(x: jax.Array) -> jax.Array:
    """The paper's modified leaky ReLU on generated parameters."""
    return jnp.where(x >= 0, MLR_POSITIVE * x, MLR_NEGATIVE * x)


def _pre_project(pre: dict, x: jax.Array) -> jax.Array:
    """Element-wise pre-projection of one tap image (1x1 convs on a single-channel image)."""
    if "a" in pre:
        return pre["a"] * x + pre["b"]
    hidden = jax.nn.relu(x[..., None] * pre["w1"] + pre["b1"])
    return hidden @ pre["w2"] + pre["b2"]


def apply_tap(
    tap: dict, x: jax.Array, residual: bool, config: FilterConfig, transpose: bool
) -> jax.Array:
    """One filter module on one (R, C) image."""
    h = _pre_project(tap["pre"], x)
    if residual:
        h = x + h
    kernel = tap["g"] * tap["v"] / jnp.sqrt(jnp.sum(tap["v"] ** 2) + 1e-12)  # weight norm
    op = correlate_transpose if transpose else correlate
    y = op(h, kernel, config.impl)
    return mlr(y) if config.mlr else y


# --------------------------------------------------------------------------- init


def _noise_size(taps: int, k1: int, k2: int, residual: bool, config: FilterConfig) -> int:
    """How many U(-1, 1) draws `_init_filter` consumes for one tensor."""
    if config.init == "random":
        hidden = config.hidden
        pre = 2 * taps if config.pre_projection == "affine" else 3 * taps * hidden + taps
        return pre + taps * k1 * k2
    return taps * config.hidden if config.pre_projection == "paper" and residual else 0


def _init_filter(noise: jax.Array, taps: int, k1: int, k2: int, residual: bool, config: FilterConfig) -> dict:
    """Filter parameters of one tensor (a leading `taps` axis on every array), its random
    values taken in order from `noise`, a flat U(-1, 1) array of `_noise_size` entries."""
    offset = 0

    def uniform(shape, bound):  # U(-bound, bound): the next prod(shape) draws
        nonlocal offset
        size = int(np.prod(shape))
        offset += size
        return bound * noise[offset - size : offset].reshape(shape)

    hidden = config.hidden
    if config.init == "random":  # PyTorch's default: kaiming_uniform(a=sqrt(5)) -> U(+-1/sqrt(fan_in))
        if config.pre_projection == "affine":
            pre = {"a": uniform((taps,), 1.0), "b": uniform((taps,), 1.0)}
        else:
            bound2 = 1.0 / np.sqrt(hidden)
            pre = {
                "w1": uniform((taps, hidden), 1.0),
                "b1": uniform((taps, hidden), 1.0),
                "w2": uniform((taps, hidden), bound2),
                "b2": uniform((taps,), bound2),
            }
        v = uniform((taps, k1, k2), 1.0 / np.sqrt(k1 * k2))
        g = jnp.sqrt(jnp.sum(v**2, axis=(1, 2)))  # PyTorch weight_norm starts at g = ||V||
        return {"pre": pre, "v": v, "g": g}

    # Identity: pre-projection contributes nothing (residual) or is the identity, kernel = delta.
    if config.pre_projection == "affine":
        pre = {"a": jnp.full((taps,), 0.0 if residual else 1.0, jnp.float32), "b": jnp.zeros((taps,))}
    elif residual:  # second 1x1 conv zero: output 0, the first layer still gets gradients later
        pre = {
            "w1": uniform((taps, hidden), 1.0),
            "b1": jnp.zeros((taps, hidden)),
            "w2": jnp.zeros((taps, hidden)),
            "b2": jnp.zeros((taps,)),
        }
    else:  # relu(x) - relu(-x) = x through the first two hidden units
        unit = jnp.zeros((hidden,)).at[0].set(1.0).at[1].set(-1.0)
        pre = {
            "w1": jnp.tile(unit, (taps, 1)),
            "b1": jnp.zeros((taps, hidden)),
            "w2": jnp.tile(unit, (taps, 1)),
            "b2": jnp.zeros((taps,)),
        }
    v = jnp.zeros((taps, k1, k2)).at[:, 0, 0].set(1.0)
    gain = 1.0 / MLR_POSITIVE if config.mlr else 1.0  # MLR then leaves the positive part intact
    return {"pre": pre, "v": v, "g": jnp.full((taps,), gain, jnp.float32)}


def _has_residual(ndim: int, config: FilterConfig) -> bool:
    return config.residual == "all" or (config.residual == "conv" and ndim >= 3)


def init_filters(key: PRNGKey, big: Params, small: Params, config: FilterConfig) -> Params:
    """Filters mapping every tensor of `big` to the shape of the matching tensor of `small`.

    Only shapes are read, so `big`/`small` may be arrays or `jax.ShapeDtypeStruct`s. The
    result has the structure of `big`, each leaf replaced by a dict of filter arrays. All
    random values come from ONE draw: a draw per tensor compiles several times slower on
    XLA:CPU (benchmarks/README.md, session 5).
    """
    leaves, treedef = jax.tree.flatten(big)
    small_leaves = treedef.flatten_up_to(small)
    specs = [
        (*filter_kernel_shape(tuple(b.shape), tuple(s.shape)), _has_residual(len(b.shape), config))
        for b, s in zip(leaves, small_leaves)
    ]
    sizes = [_noise_size(*spec, config) for spec in specs]
    noise = jax.random.uniform(key, (sum(sizes),), jnp.float32, -1.0, 1.0)
    chunks = jnp.split(noise, np.cumsum(sizes)[:-1].tolist()) if sizes else []
    filters = [_init_filter(chunk, *spec, config) for chunk, spec in zip(chunks, specs)]
    return jax.tree.unflatten(treedef, filters)


# --------------------------------------------------------------------------- apply


def apply_filters(
    filters: Params, params: Params, config: FilterConfig, transpose: bool
) -> Params:
    """Applies each tensor's filters to it, tap image by tap image.

    Tensors whose tap images share (image shape, kernel shape, residual) are filtered as one
    batch: their taps are concatenated and one vmapped filter module runs over all of them.
    The program then holds one filter op per group instead of one per tensor (ResNet18: 74
    tensors, 14 groups), and compile time grows with the op count.
    """
    filter_leaves, treedef = jax.tree.flatten(filters, is_leaf=lambda f: isinstance(f, dict) and "v" in f)
    tensors = treedef.flatten_up_to(params)
    groups: dict[tuple, list[int]] = {}
    for i, (filt, x) in enumerate(zip(filter_leaves, tensors)):
        key = (as_taps(x).shape[1:], filt["v"].shape[1:], _has_residual(x.ndim, config))
        groups.setdefault(key, []).append(i)
    out = [None] * len(tensors)
    for (_, _, residual), members in groups.items():
        images = [as_taps(tensors[i]) for i in members]
        filt = jax.tree.map(lambda *parts: jnp.concatenate(parts), *(filter_leaves[i] for i in members))
        tap_fn = lambda tap, image: apply_tap(tap, image, residual, config, transpose)  # noqa: B023
        y = jax.vmap(tap_fn)(filt, jnp.concatenate(images))
        ends = np.cumsum([image.shape[0] for image in images]).tolist()
        for i, start, end in zip(members, [0, *ends[:-1]], ends):
            out[i] = from_taps(y[start:end], tensors[i].shape)
    return jax.tree.unflatten(treedef, out)
