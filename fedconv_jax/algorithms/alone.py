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

import jax
import jax.numpy as jnp

from fedconv_jax.algorithms.common import (
    BaselineState,
    baseline,
    client_keys,
    server_set,
    split_init_keys,
)
from fedconv_jax.core.algorithm import FederatedAlgorithm, HParams, register
from fedconv_jax.core.client import local_train
from fedconv_jax.core.data import RoundData
from fedconv_jax.core.participation import select_clients
from fedconv_jax.core.skeleton import RoundSteps, global_evaluation, round_key
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


def keep_own_models(state: BaselineState, data: RoundData, hparams: HParams, uploads):
    """Nothing is uploaded, but a dropped client misses the round and a poisoned or
    non-finite model is not kept: participants keep what they trained, the others their old model."""
    del hparams
    models = tuple(select_clients(keep, out, old) for keep, out, old in zip(data.client_mask, uploads, state.client_vars))
    return state.replace(client_vars=models), None, {}


def no_global_model(state: BaselineState, data: RoundData):
    del state, data
    nan = jnp.full((), jnp.nan, jnp.float32)
    return {"global_accuracy": nan, "global_loss": nan}


def standalone_steps(cfg: RoundSpec) -> RoundSteps:
    return RoundSteps(
        send=lambda state, data, hparams: (state, state.client_vars, {}),  # each client's own model
        server=(("keep", keep_own_models),),
        evaluate=no_global_model,
        trained_ratio=lambda s: s,
        per_client_start=True,
    )


def init_serveralone_state(cfg: RoundSpec, key: PRNGKey) -> BaselineState:
    k_model, k_round = split_init_keys(key)
    return BaselineState(
        global_vars=cfg.model.init(k_model, 1.0), client_vars=(), round=jnp.zeros((), jnp.int32), key=k_round
    )


def serveralone_round(cfg: RoundSpec, state: BaselineState, data: RoundData, hparams: HParams):
    """Not federated, so not the shared skeleton: the server trains on D, then its model is
    evaluated on every client's test split and the server test set."""
    apply_fn = functools.partial(cfg.model.apply, 1.0)
    new = local_train(
        apply_fn, state.global_vars, data.images, data.labels, server_set(data),
        round_key(state, "server"), epochs=cfg.local_epochs,
        batch_size=cfg.local_batch_size, lr=hparams["local_lr"], model_rng=cfg.model.uses_dropout, remat=cfg.remat,
    )
    state = state.replace(global_vars=new)
    accuracy = tuple(
        jax.vmap(
            lambda test_set: evaluate(lambda x: apply_fn(new, x)[0], data.images, data.labels, test_set, cfg.eval_chunk)[0]
        )(data.client_test[t])
        for t in range(len(cfg.tier_ratios))
    )
    counts = tuple(jnp.sum(t.mask, axis=-1) for t in data.client_test)
    metrics = {"client_accuracy": accuracy, "client_test_count": counts, **global_evaluation(cfg, 1.0)(state, data)}
    return state.replace(round=state.round + 1), metrics


@register("standalone")
def standalone(spec: RoundSpec) -> FederatedAlgorithm:
    return baseline(
        "standalone", spec, functools.partial(init_standalone_state, spec), standalone_steps(spec),
        per_client_fields=("client_vars",), sends_model=False,
    )


@register("serveralone")
def serveralone(spec: RoundSpec) -> FederatedAlgorithm:
    return FederatedAlgorithm(
        name="serveralone",
        spec=spec,
        init=functools.partial(init_serveralone_state, spec),
        round=functools.partial(serveralone_round, spec),
        per_client_fields=(),
        trained_ratio=lambda s: None,
        digest=lambda state: (state.global_vars["params"], state.client_vars),
        sends_model=False,
    )
