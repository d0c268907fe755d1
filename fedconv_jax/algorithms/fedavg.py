"""FedAvg in the heterogeneous setting (SPEC §7): one model width for every client.

`fedavg_small`: every client trains the model of the smallest SR present (the paper's FedAvg:
the largest model every client can afford). `fedavg_full`: every client trains the full model,
ignoring resource limits (an upper reference). Sample-weighted averaging, n_j / sum n.
"""

import functools

import jax
import jax.numpy as jnp

from fedconv_jax.algorithms.common import (
    BaselineState,
    baseline,
    pretrain_option,
    pretrain_step,
    split_init_keys,
)
from fedconv_jax.core.algorithm import FederatedAlgorithm, HParams, register
from fedconv_jax.core.averaging import weighted_average
from fedconv_jax.core.data import RoundData
from fedconv_jax.core.skeleton import RoundSteps, global_evaluation
from fedconv_jax.core.spec import RoundSpec
from fedconv_jax.core.types import PRNGKey


def fedavg_ratio(cfg: RoundSpec, variant: str) -> float:
    """The one width everybody trains: "small" -> min SR present, "full" -> 1."""
    if variant not in ("small", "full"):
        raise ValueError(f"fedavg variant={variant!r} is not known; allowed: small, full")
    return min(cfg.tier_ratios) if variant == "small" else 1.0


def init_fedavg_state(cfg: RoundSpec, key: PRNGKey, variant: str) -> BaselineState:
    k_model, k_round = split_init_keys(key)
    return BaselineState(
        global_vars=cfg.model.init(k_model, fedavg_ratio(cfg, variant)),
        client_vars=(),
        round=jnp.zeros((), jnp.int32),
        key=k_round,
    )


def average_uploads(state: BaselineState, data: RoundData, hparams: HParams, uploads):
    """The next global model: sample-weighted average of the participants' uploads (the
    previous one if nobody took part)."""
    del hparams
    stacked = jax.tree.map(lambda *xs: jnp.concatenate(xs), *uploads)
    mask = jnp.concatenate(data.client_mask)
    new = weighted_average(stacked, jnp.concatenate(data.num_samples), mask)
    new = jax.tree.map(lambda a, b: jnp.where(jnp.any(mask), a, b), new, state.global_vars)
    return state.replace(global_vars=new), None, {}


def fedavg_steps(cfg: RoundSpec, variant: str, pretrain: bool = False) -> RoundSteps:
    ratio = fedavg_ratio(cfg, variant)
    tiers = len(cfg.tier_ratios)
    return RoundSteps(
        send=lambda state, data, hparams: (state, (state.global_vars,) * tiers, {}),
        server=(("aggregate", average_uploads),),
        evaluate=global_evaluation(cfg, ratio),
        trained_ratio=lambda s: ratio,
        prepare=pretrain_step(cfg, ratio, pretrain),
    )


def _fedavg(variant: str, spec: RoundSpec, pretrain: bool = False) -> FederatedAlgorithm:
    return baseline(
        f"fedavg_{variant}", spec, functools.partial(init_fedavg_state, spec, variant=variant),
        fedavg_steps(spec, variant, pretrain),
    )


register("fedavg_small", options=pretrain_option)(functools.partial(_fedavg, "small"))
register("fedavg_full", options=pretrain_option)(functools.partial(_fedavg, "full"))
