"""FedAvg in the heterogeneous setting (SPEC §7): one model width for every client.

`fedavg_small`: every client trains the model of the smallest SR present (the paper's FedAvg:
the largest model every client can afford). `fedavg_full`: every client trains the full model,
ignoring resource limits (an upper reference). Sample-weighted averaging, n_j / sum n.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from fedconv_jax.algorithms.common import (
    BaselineState,
    baseline,
    broadcast_clients,
    client_keys,
    client_metrics,
    global_metrics,
    phase_key,
    pretrain_on_server,
    pretrain_option,
    screen_tiers,
    split_init_keys,
    train_tier,
)
from fedconv_jax.core.algorithm import FederatedAlgorithm, HParams, register
from fedconv_jax.core.averaging import weighted_average
from fedconv_jax.core.data import RoundData
from fedconv_jax.core.sampling import sample_round_clients
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


def make_fedavg_round_fn(cfg: RoundSpec, variant: str, pretrain: bool = False) -> Callable:
    ratio = fedavg_ratio(cfg, variant)

    def round_fn(state: BaselineState, data: RoundData, hparams: HParams):
        data = sample_round_clients(state.key, state.round, data, hparams)
        state = state.replace(global_vars=pretrain_on_server(cfg, ratio, state, data, hparams, pretrain))
        key = phase_key(state, "clients")
        sent, trained, accuracy = [], [], []
        for t, capacity in enumerate(cfg.tier_capacity):
            start = broadcast_clients(state.global_vars, capacity)
            out, acc = train_tier(cfg, ratio, start, data, t, client_keys(key, cfg, t), hparams["local_lr"])
            sent.append(start)
            trained.append(out)
            accuracy.append(acc)
        trained, participating, screen_metrics = screen_tiers(state, data, hparams, sent, trained)
        stacked = jax.tree.map(lambda *xs: jnp.concatenate(xs), *trained)
        mask = jnp.concatenate(participating)
        new = weighted_average(stacked, jnp.concatenate(data.num_samples), mask)
        new = jax.tree.map(lambda a, b: jnp.where(jnp.any(mask), a, b), new, state.global_vars)  # nobody: keep
        metrics = {**client_metrics(data, accuracy), **screen_metrics, **global_metrics(cfg, ratio, new, data)}
        return state.replace(global_vars=new, round=state.round + 1), metrics

    return round_fn


def _fedavg(variant: str, spec: RoundSpec, pretrain: bool = False) -> FederatedAlgorithm:
    ratio = fedavg_ratio(spec, variant)
    return baseline(
        f"fedavg_{variant}", spec, functools.partial(init_fedavg_state, spec, variant=variant),
        make_fedavg_round_fn(spec, variant, pretrain), lambda s: ratio,
    )


register("fedavg_small", options=pretrain_option)(functools.partial(_fedavg, "small"))
register("fedavg_full", options=pretrain_option)(functools.partial(_fedavg, "full"))
