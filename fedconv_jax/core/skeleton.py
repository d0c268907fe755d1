"""One round skeleton for every federated algorithm (fedjax's `for_each_client` plus a
server update; the sampler outside the algorithm).

    sample -> [prepare] -> send -> clients -> server steps -> evaluate

The skeleton owns sampling, client training (each tier's clients mapped, vmapped or sharded
over devices, then evaluated on their own test splits), the upload screen (dropout,
non-finite uploads, poisoning), the participants mask and the round counter. An algorithm
supplies `RoundSteps`: what the server sends each tier, how it turns the screened uploads
into its next state, and how it evaluates. FedConv's send is compression and its server
steps dilation and aggregation; HeteroFL's are gather and slice-averaging.

Every step runs through `call(name, fn, *args)`: `jax.named_scope` in the fused round (a
profile attributes time to steps), a compile-and-time hook in `experiment.time_phases`.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from fedconv_jax.core.algorithm import HParams, State
from fedconv_jax.core.client import local_train
from fedconv_jax.core.data import RoundData
from fedconv_jax.core.participation import screen_uploads
from fedconv_jax.core.sampling import sample_round_clients
from fedconv_jax.core.sharding import map_clients_over_devices
from fedconv_jax.core.spec import RoundSpec
from fedconv_jax.core.streams import slot_keys, stream_key
from fedconv_jax.core.tuning import evaluate, refresh_batch_stats, tune
from fedconv_jax.core.types import Metrics, Variables

# (state, data, hparams) -> (state, per tier what its clients start from, metrics)
SendFn = Callable[[State, RoundData, HParams], tuple[State, tuple[Variables, ...], Metrics]]
# (state, data, hparams, uploads) -> (state, what the next server step reads, metrics)
ServerStep = Callable[[State, RoundData, HParams, Any], tuple[State, Any, Metrics]]


@dataclasses.dataclass(frozen=True)
class RoundSteps:
    """An algorithm's own parts of the round.

    Attributes:
      send: per tier, the variables its clients start from: one copy every client of the
        tier receives or, with `per_client_start`, stacked over the tier's slots. A "keep"
        entry beside "params" (0/1, shaped like them) makes each client train that sparse
        sub-network (`local_train`'s `keep`); it is not part of the upload.
      server: named steps run in order after the screen; the first reads the screened
        uploads (per tier, stacked over slots), each the previous one's output. They see
        `data.client_mask` set to this round's participants.
      evaluate: (state, data) -> metrics with "global_accuracy" and "global_loss".
      trained_ratio: SR of a tier -> the width its clients train.
      prepare: (state, data, hparams) -> state before sending (the "pretrain" step), or None.
      send_name: the name of the send step ("compress" for FedConv).
      per_client_start: `send` gives each client slot its own start.
    """

    send: SendFn
    server: tuple[tuple[str, ServerStep], ...]
    evaluate: Callable[[State, RoundData], Metrics]
    trained_ratio: Callable[[float], float]
    prepare: Callable[[State, RoundData, HParams], State] | None = None
    send_name: str = "send"
    per_client_start: bool = False


def scoped_call(name: str, fn: Callable, *args):
    """The fused round's `call`: the step under `jax.named_scope(name)`."""
    with jax.named_scope(name):
        return fn(*args)


def round_key(state: State, stream: str) -> jax.Array:
    """The key of a named stream in this round (core.streams): shared by all algorithms."""
    return stream_key(state.key, state.round, stream)


def tier_value(value: jax.Array, tier: int) -> jax.Array:
    """A traced hyper-parameter for one tier: a scalar serves every tier, a (num_tiers,)
    vector one value per tier (e.g. a client learning rate learned per tier by gradient)."""
    return value[tier] if jnp.ndim(value) else value


def model_variables(variables: Variables) -> Variables:
    """What a model reads (params and BatchNorm statistics) of what a client was sent."""
    return {"params": variables["params"], "batch_stats": variables["batch_stats"]}


def train_clients(
    spec: RoundSpec, ratio: float, start: Variables, per_client: bool, data: RoundData, tier: int, hparams: HParams,
    key: jax.Array,
) -> tuple[Variables, jax.Array]:
    """Local training of one tier's clients, then each trained model's accuracy on its
    client's own test split.

    Args:
      ratio: the width the clients train.
      start: one copy every client starts from or, if `per_client`, stacked over slots.
      key: the round's "clients" key; slot j of tier t trains with fold_in(fold_in(key, t), j).

    Returns:
      (trained variables stacked over slots, accuracy (capacity,)).
    """
    apply_fn = functools.partial(spec.model.apply, ratio)

    def one_client(shared, variables, train_set, test_set, k):
        images, labels, lr = shared
        out = local_train(
            apply_fn, model_variables(variables), images, labels, train_set, k,
            epochs=spec.local_epochs, batch_size=spec.local_batch_size, lr=lr, model_rng=spec.model.uses_dropout,
            remat=spec.remat, keep=variables.get("keep"),
        )
        acc, _ = evaluate(lambda x: apply_fn(out, x)[0], images, labels, test_set, spec.eval_chunk)
        return out, acc

    shared = (data.images, data.labels, tier_value(hparams["local_lr"], tier))
    clients = (data.client_train[tier], data.client_test[tier], slot_keys(key, tier, spec.tier_capacity[tier]))
    run = functools.partial(
        map_clients_over_devices, spec.devices, spec.client_parallelism, spec.client_chunk, remat=spec.remat
    )
    if per_client:
        return run(one_client, shared, start, *clients)
    # One copy for the whole tier travels with the data (replicated, never broadcast).
    return run(lambda both, *xs: one_client(*both, *xs), (shared, start), *clients)


def clients_step(spec: RoundSpec, steps: RoundSteps, state: State, data: RoundData, hparams: HParams, sent):
    """Every client trains what it was sent on its own data; then the uploads are screened.

    Returns:
      (per tier the screened uploads stacked over slots, metrics with `client_accuracy`,
      `client_test_count` and the screen's `participating`, `dropped_clients`,
      `excluded_clients`).
    """
    key = round_key(state, "clients")
    trained, accuracy = [], []
    for t, ratio in enumerate(spec.tier_ratios):
        out, acc = train_clients(
            spec, steps.trained_ratio(ratio), sent[t], steps.per_client_start, data, t, hparams, key
        )
        trained.append(out)
        accuracy.append(acc)
    screen_keys = (round_key(state, "dropout"), round_key(state, "poison"))
    trained, _, screen_metrics = screen_uploads(
        screen_keys, data.client_mask, tuple(model_variables(s) for s in sent), trained, data.poisoned,
        hparams["dropout_rate"], hparams["poison_scale"],
    )
    counts = tuple(jnp.sum(t.mask, axis=-1) for t in data.client_test)
    return tuple(trained), {"client_accuracy": tuple(accuracy), "client_test_count": counts, **screen_metrics}


def global_evaluation(spec: RoundSpec, ratio: float) -> Callable[[State, RoundData], Metrics]:
    """The usual `evaluate`: `state.global_vars` (width `ratio`) on the server test set."""

    def evaluate_global(state: State, data: RoundData) -> Metrics:
        acc, loss = evaluate(
            lambda x: spec.model.apply(ratio, state.global_vars, x)[0], data.images, data.labels,
            data.server_test, spec.eval_chunk,
        )
        return {"global_accuracy": acc, "global_loss": loss}

    return evaluate_global


def pretrain_on_server(
    spec: RoundSpec, ratio: float, variables: Variables, opt_state, data: RoundData, hparams: HParams, key: jax.Array
) -> tuple[Variables, Any]:
    """`variables` (width `ratio`) tuned on the server set D by `spec.pretrain` (held-out
    selection, lr `hparams["pretrain_lr"]`), BatchNorm statistics then re-estimated on D.

    Returns (variables, the optimizer state after tuning).
    """
    apply_fn = functools.partial(spec.model.apply, ratio)
    stats = variables["batch_stats"]
    result = tune(
        lambda p, x: apply_fn({"params": p, "batch_stats": stats}, x)[0],
        variables["params"], opt_state, data.images, data.labels, data.server_train, data.server_holdout,
        key, spec.pretrain, lr=hparams["pretrain_lr"],
    )
    new = refresh_batch_stats(
        apply_fn, {"params": result.params, "batch_stats": stats}, data.images, data.server_train,
        spec.local_batch_size,
    )
    return new, result.opt_state


def federated_round(
    spec: RoundSpec, steps: RoundSteps, state: State, data: RoundData, hparams: HParams,
    call: Callable = scoped_call,
) -> tuple[State, Metrics]:
    """One round of any algorithm: (state, data, hparams) -> (next state, metrics)."""
    data = sample_round_clients(state.key, state.round, data, hparams)  # the one place the mask is drawn
    if steps.prepare is not None:
        state = call("pretrain", steps.prepare, state, data, hparams)
    state, sent, metrics = call(steps.send_name, steps.send, state, data, hparams)
    uploads, client_metrics = call("clients", functools.partial(clients_step, spec, steps), state, data, hparams, sent)
    metrics = {**metrics, **client_metrics}
    data = data._replace(client_mask=client_metrics["participating"])  # this round's participants
    for name, step in steps.server:
        state, uploads, step_metrics = call(name, step, state, data, hparams, uploads)
        metrics.update(step_metrics)
    metrics.update(call("evaluate", steps.evaluate, state, data))
    return state.replace(round=state.round + 1), metrics


__all__ = [
    "RoundSteps",
    "clients_step",
    "federated_round",
    "global_evaluation",
    "model_variables",
    "pretrain_on_server",
    "round_key",
    "scoped_call",
    "tier_value",
    "train_clients",
]
