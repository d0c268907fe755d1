"""FedConv (Shen et al., MobiSys 2024): learned compression, dilation and aggregation.

Modules: `filters` (the convolutions over parameter tensors), `compression` (Eq. 1),
`dilation` (Eq. 3), `aggregation` (Eq. 4/5) and `round` (the state and the phases).
"""

import functools
from collections.abc import Mapping

from fedconv_jax.algorithms.fedconv.filters import FilterConfig, check_tap_axes
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
from fedconv_jax.core.tuning import TuningConfig

PER_CLIENT_FIELDS = ("dilation", "dilation_opt", "agg_weights", "agg_opt")


def _options(config: Mapping) -> dict:
    """FedConv's settings from the flat run config."""

    def loop(epochs: int) -> TuningConfig:
        return TuningConfig(
            epochs=epochs, batch_size=config["batch_size"], cosine_t_max=config["cosine_t_max"],
            select_best=config["select_best"],
        )

    return {
        "filters": FilterConfig(
            pre_projection=config["pre_projection"], residual=config["residual"], mlr=config["mlr"],
            init=config["filter_init"], impl=config["filter_impl"],
        ),
        "compress": loop(config["compress_epochs"]),
        "dilate": loop(config["dilate_epochs"]),
        "aggregate": TuningConfig(
            epochs=config["aggregate_epochs"], batch_size=config["batch_size"], select_best=config["select_best"]
        ),
        "pretrain_every_round": config["pretrain_every_round"],
        "aggregation": config["aggregation"],
        "aggregation_granularity": config["aggregation_granularity"],
        "aggregation_normalize": config["aggregation_normalize"],
    }


@register("fedconv", options=_options, hparams=SHARED_HPARAMS + FEDCONV_HPARAMS)
def fedconv(spec: RoundSpec, **settings) -> FederatedAlgorithm:
    """FedConv over `spec`; `settings` are `FedConvConfig`'s fields."""
    cfg = FedConvSpec(**spec_fields(spec), **settings)
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
