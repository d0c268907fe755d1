"""Transposed-convolution dilation (SPEC §3, Eq. 3 forward): client model -> global shapes."""

import jax

from fedconv_jax.algorithms.fedconv.compression import leading_block
from fedconv_jax.algorithms.fedconv.filters import (
    FilterConfig,
    apply_filters,
    init_filters,
)
from fedconv_jax.core.types import Params, PRNGKey


def init_dilation_filters(
    key: PRNGKey, global_params: Params, sub_params: Params, config: FilterConfig
) -> Params:
    """One filter set per client; the kernel sizes equal those of its tier's compression."""
    return init_filters(key, global_params, sub_params, config)


def dilate(sub_params: Params, filters: Params, config: FilterConfig) -> Params:
    """D_j = MLR(P_j ⊛ᵀ TC_j): every tensor through its transposed-correlation filters.

    The output shapes are exactly the global shapes: N = N' + k - 1 on each axis.
    """
    return apply_filters(filters, sub_params, config, transpose=True)


def dilate_batch_stats(sub_stats: Params, global_stats: Params) -> Params:
    """Running statistics back at global width: the client's first O' entries, the previous
    global model's elsewhere. The round re-estimates them on the server data afterwards
    (the reference code resets them to ones instead)."""
    return jax.tree.map(lambda s, g: g.at[leading_block(s.shape)].set(s), sub_stats, global_stats)
