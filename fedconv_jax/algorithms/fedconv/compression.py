"""Convolutional compression (SPEC §3, Eq. 1 forward): global model -> sub-model."""

import jax

from fedconv_jax.algorithms.fedconv.filters import (
    FilterConfig,
    apply_filters,
    init_filters,
)
from fedconv_jax.core.types import Params, PRNGKey


def init_compression_filters(
    key: PRNGKey, global_params: Params, sub_params: Params, config: FilterConfig
) -> Params:
    """One filter set per tier; target shapes are the sub-model's actual parameter shapes."""
    return init_filters(key, global_params, sub_params, config)


def compress(global_params: Params, filters: Params, config: FilterConfig) -> Params:
    """P_i = MLR(W_G ⊛ Conv_i): every tensor through its valid-correlation filters.

    The output shapes follow from the filter kernels: N' = N - k + 1 on each axis.
    """
    return apply_filters(filters, global_params, config, transpose=False)


def compress_batch_stats(global_stats: Params, sub_stats_like: Params) -> Params:
    """BatchNorm running statistics: the first O' entries (SPEC §3 table, last row)."""
    return jax.tree.map(lambda g, s: g[: s.shape[0]], global_stats, sub_stats_like)
