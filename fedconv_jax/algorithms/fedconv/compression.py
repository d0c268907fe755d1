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


def leading_block(shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The first `shape[i]` entries of every axis: where a unit's first channels sit."""
    return tuple(slice(0, n) for n in shape)


def compress_batch_stats(global_stats: Params, sub_stats_like: Params) -> Params:
    """BatchNorm running statistics: the first O' entries of every width axis (SPEC §3
    table, last row); the model's declared width axes keep a unit's first channels."""
    return jax.tree.map(lambda g, s: g[leading_block(s.shape)], global_stats, sub_stats_like)
