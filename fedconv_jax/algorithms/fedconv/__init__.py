"""FedConv (Shen et al., MobiSys 2024): learned compression, dilation and aggregation.

Modules: `filters` (the convolutions over parameter tensors), `compression` (Eq. 1),
`dilation` (Eq. 3), `aggregation` (Eq. 4/5) and `round` (the state and the phases).
"""

import functools

from fedconv_jax.algorithms.fedconv.filters import check_tap_axes
from fedconv_jax.algorithms.fedconv.round import (
    FEDCONV_HPARAMS,
    PHASES,
    FedConvConfig,
    FedConvSpec,
    ServerState,
    init_server_state,
    run_phases,
)
from fedconv_jax.core.algorithm import SHARED_HPARAMS, FederatedAlgorithm, register
from fedconv_jax.core.spec import RoundSpec, spec_fields

PER_CLIENT_FIELDS = ("dilation", "dilation_opt", "agg_weights", "agg_opt")


# Flat config names of earlier versions, kept as aliases of the `config.fedconv` section.
ALIASES = {
    "filter_init": "filters.init",
    "pre_projection": "filters.pre_projection",
    "residual": "filters.residual",
    "mlr": "filters.mlr",
    "filter_impl": "filters.impl",
    "compress_epochs": "compress_epochs",
    "dilate_epochs": "dilate_epochs",
    "aggregate_epochs": "aggregate_epochs",
    "cosine_t_max": "cosine_t_max",
    "pretrain_every_round": "pretrain_every_round",
    "aggregation": "aggregation",
    "aggregation_granularity": "aggregation_granularity",
    "aggregation_normalize": "aggregation_normalize",
}


DEFAULTS = FedConvConfig()


@register("fedconv", hparams=SHARED_HPARAMS + FEDCONV_HPARAMS, section=DEFAULTS, aliases=ALIASES)
def fedconv(spec: RoundSpec, settings: FedConvConfig = DEFAULTS) -> FederatedAlgorithm:
    """FedConv over `spec` with its own `settings` (the config's `fedconv` section)."""
    cfg = FedConvSpec(**spec_fields(spec), **spec_fields(settings))
    check_tap_axes(cfg.model.width_axes())
    return FederatedAlgorithm(
        name="fedconv",
        spec=cfg,
        init=functools.partial(init_server_state, cfg),
        round=functools.partial(run_phases, cfg),
        per_client_fields=PER_CLIENT_FIELDS,
        trained_ratio=lambda ratio: ratio,
        digest=lambda state: state.global_vars["params"],
        phased_round=lambda call: functools.partial(run_phases, cfg, call=call),
    )


__all__ = ["PHASES", "FedConvConfig", "FedConvSpec", "ServerState", "fedconv"]
