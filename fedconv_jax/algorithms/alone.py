"""Non-federated references (SPEC §7): Standalone and Serveralone.

`standalone`: every client trains its own affordable model (its tier's width) on its own
data only, carried across rounds; nothing is aggregated. There is no global model, so
global_accuracy and global_loss are NaN; client accuracy is each client's own model on its
own test split.

`serveralone`: one full model trained on the server data set D only (all of it: this
baseline does no model selection), `local_epochs` epochs per round with a fresh Adam, like a
client whose data is D. Client accuracy is that one model on every client's test split.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from fedconv_jax.algorithms.common import (
    BaselineState,
    baseline,
    client_keys,
    client_metrics,
    global_metrics,
    phase_key,
    screen_tiers,
    server_set,
    split_init_keys,
    train_tier,
)
from fedconv_jax.core.algorithm import FederatedAlgorithm, HParams, register
from fedconv_jax.core.client import local_train
from fedconv_jax.core.data import RoundData
from fedconv_jax.core.participation import select_clients
from fedconv_jax.core.sampling import sample_round_clients
from fedconv_jax.core.spec import RoundSpec
from fedconv_jax.core.tuning import evaluate
from fedconv_jax.core.types import PRNGKey

_NO_MODEL = {"params": {}, "batch_stats": {}}


def init_standalone_state(cfg: RoundSpec, key: PRNGKey) -> BaselineState:
    k_model, k_round = split_init_keys(key)
    clients = []
    for t, ratio in enumerate(cfg.tier_ratios):
        keys = client_keys(k_model, cfg, t)
        clients.append(jax.vmap(lambda k, ratio=ratio: cfg.model.init(k, ratio))(keys))
    return BaselineState(
        global_vars=_NO_MODEL, client_vars=tuple(clients), round=jnp.zeros((), jnp.int32), key=k_round
    )


def make_standalone_round_fn(cfg: RoundSpec) -> Callable:
    def round_fn(state: BaselineState, data: RoundData, hparams: HParams):
        data = sample_round_clients(state.key, state.round, data, hparams)
        key = phase_key(state, "clients")
        trained, accuracy = [], []
        for t, ratio in enumerate(cfg.tier_ratios):
            out, acc = train_tier(cfg, ratio, state.client_vars[t], data, t, client_keys(key, cfg, t), hparams["local_lr"])
            trained.append(out)
            accuracy.append(acc)
        # Nothing is uploaded, but a dropped client misses the round and a poisoned or
        # non-finite model is not kept: the same screen as every other algorithm.
        trained, participating, screen_metrics = screen_tiers(state, data, hparams, state.client_vars, trained)
        models = [select_clients(keep, out, old) for keep, out, old in zip(participating, trained, state.client_vars)]
        nan = jnp.full((), jnp.nan, jnp.float32)
        metrics = {**client_metrics(data, accuracy), **screen_metrics, "global_accuracy": nan, "global_loss": nan}
        return state.replace(client_vars=tuple(models), round=state.round + 1), metrics

    return round_fn


def init_serveralone_state(cfg: RoundSpec, key: PRNGKey) -> BaselineState:
    k_model, k_round = split_init_keys(key)
    return BaselineState(
        global_vars=cfg.model.init(k_model, 1.0), client_vars=(), round=jnp.zeros((), jnp.int32), key=k_round
    )


def make_serveralone_round_fn(cfg: RoundSpec) -> Callable:
    apply_fn = functools.partial(cfg.model.apply, 1.0)

    def round_fn(state: BaselineState, data: RoundData, hparams: HParams):
        new = local_train(
            apply_fn, state.global_vars, data.images, data.labels, server_set(data),
            phase_key(state, "server"), epochs=cfg.local_epochs,
            batch_size=cfg.local_batch_size, lr=hparams["local_lr"],
        )
        accuracy = [
            jax.vmap(
                lambda test_set: evaluate(lambda x: apply_fn(new, x)[0], data.images, data.labels, test_set, cfg.eval_chunk)[0]
            )(data.client_test[t])
            for t in range(len(cfg.tier_ratios))
        ]
        metrics = {**client_metrics(data, accuracy), **global_metrics(cfg, 1.0, new, data)}
        return state.replace(global_vars=new, round=state.round + 1), metrics

    return round_fn


@register("standalone")
def standalone(spec: RoundSpec) -> FederatedAlgorithm:
    return baseline(
        "standalone", spec, functools.partial(init_standalone_state, spec), make_standalone_round_fn(spec),
        lambda s: s, per_client=True, sends_model=False,
    )


@register("serveralone")
def serveralone(spec: RoundSpec) -> FederatedAlgorithm:
    return baseline(
        "serveralone", spec, functools.partial(init_serveralone_state, spec), make_serveralone_round_fn(spec),
        lambda s: None, sends_model=False,
    )
