"""What every baseline round shares: its state, keys, tier training and the metrics it reports.

Baselines run on the same `RoundConfig`, `RoundData` and tier layout as FedConv (tiers unrolled
at trace time, each tier's clients vmapped or `lax.map`ped, the client axis sharded over
`devices` as FedConv's is), and report the same metric keys,
so `metrics.round_row`, the run loop and the comparison runner treat every algorithm alike.
"""

import functools

import jax
import jax.numpy as jnp
from flax import struct

from fedconv_jax.client import local_train
from fedconv_jax.round import RoundConfig, RoundData
from fedconv_jax.sharding import map_clients_over_devices
from fedconv_jax.tuning import (
    IndexSet,
    evaluate,
    make_optimizer,
    refresh_batch_stats,
    tune,
)
from fedconv_jax.types import Metrics, PRNGKey, Variables

PHASES = ("clients", "slices", "server")


@struct.dataclass
class BaselineState:
    """Everything a resumed baseline run needs.

    A separate small dataclass rather than FedConv's `ServerState` with empty entries: the
    baselines carry no filters, aggregation weights or optimizer states, and the standalone
    clients' own models have no place in `ServerState`.

    Attributes:
      global_vars: the global model (full width; the smallest tier's width for
        fedavg_small; empty params for standalone, which has no global model).
      client_vars: standalone only: per tier, the clients' own models stacked over the
        tier's slots; () for every other baseline.
      round: int32, 0-based index of the next round.
      key: the run's key; per-round keys are fold_in(fold_in(key, round), phase).
    """

    global_vars: Variables
    client_vars: tuple[Variables, ...]
    round: jax.Array
    key: PRNGKey


def split_init_keys(key: PRNGKey) -> tuple[PRNGKey, PRNGKey]:
    """(model key, round key), drawn as FedConv's `init_server_state` draws them, so that
    fedavg_full, heterofl, fedrolex, feddropout and serveralone start from FedConv's
    initial global model for the same seed."""
    k_model, _, _, k_round = jax.random.split(key, 4)
    return k_model, k_round


def phase_key(state: BaselineState, phase: str) -> PRNGKey:
    return jax.random.fold_in(jax.random.fold_in(state.key, state.round), PHASES.index(phase))


def client_keys(key: PRNGKey, cfg: RoundConfig, tier: int) -> jax.Array:
    """One key per client slot of a tier, folded from (tier, slot): padding an earlier tier's
    capacity up to a multiple of the device count leaves every real client's key as it was."""
    tier_key = jax.random.fold_in(key, tier)
    return jax.vmap(lambda s: jax.random.fold_in(tier_key, s))(jnp.arange(cfg.tier_capacity[tier]))


def broadcast_clients(variables: Variables, capacity: int) -> Variables:
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (capacity, *x.shape)), variables)


def train_tier(
    cfg: RoundConfig, ratio: float, start: Variables, data: RoundData, tier: int, keys: jax.Array, lr: jax.Array
) -> tuple[Variables, jax.Array]:
    """Local training of one tier's clients from `start` (stacked over slots), then each
    trained model's accuracy on its client's own test split.

    Returns:
      (trained variables stacked over slots, accuracy (capacity,)).
    """
    apply_fn = functools.partial(cfg.model.apply, ratio)

    def one_client(shared, variables, train_set, test_set, key):
        images, labels, lr = shared
        out = local_train(
            apply_fn, variables, images, labels, train_set, key,
            epochs=cfg.local_epochs, batch_size=cfg.local_batch_size, lr=lr,
        )
        acc, _ = evaluate(lambda x: apply_fn(out, x)[0], images, labels, test_set, cfg.eval_chunk)
        return out, acc

    return map_clients_over_devices(
        cfg.devices, cfg.client_parallelism, cfg.client_chunk, one_client, (data.images, data.labels, lr),
        start, data.client_train[tier], data.client_test[tier], keys,
    )


def client_metrics(data: RoundData, accuracy: list[jax.Array]) -> Metrics:
    """The per-tier client accuracy and test counts `metrics.round_row` expects."""
    counts = tuple(jnp.sum(t.mask, axis=-1) for t in data.client_test)
    return {"client_accuracy": tuple(accuracy), "client_test_count": counts}


def global_metrics(cfg: RoundConfig, ratio: float, variables: Variables, data: RoundData) -> Metrics:
    acc, loss = evaluate(
        lambda x: cfg.model.apply(ratio, variables, x)[0], data.images, data.labels,
        data.server_test, cfg.eval_chunk,
    )
    return {"global_accuracy": acc, "global_loss": loss}


def where_present(mask: jax.Array, new, old):
    """Per-slot select: absent client slots keep their old values."""
    return jax.tree.map(
        lambda a, b: jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), new, old
    )


def server_set(data: RoundData) -> IndexSet:
    """The whole server data set D (tuning part and held-out part)."""
    return IndexSet(
        jnp.concatenate([data.server_train.idx, data.server_holdout.idx]),
        jnp.concatenate([data.server_train.mask, data.server_holdout.mask]),
    )


def pretrain_on_server(
    cfg: RoundConfig, ratio: float, state: BaselineState, data: RoundData, hparams: dict, enabled: bool
) -> Variables:
    """Round 1 only: the global model pre-trained on D exactly as FedConv's is (`cfg.pretrain`,
    held-out selection), when `enabled`; otherwise the global model unchanged.

    The paper's baselines have no server data, so this is off by default; it separates what
    FedConv gains from D's pre-training from what it gains from its learned steps.
    """
    gv = state.global_vars
    if not enabled or cfg.pretrain.epochs == 0:
        return gv
    apply_fn = functools.partial(cfg.model.apply, ratio)

    def run(_):
        result = tune(
            lambda p, x: apply_fn({"params": p, "batch_stats": gv["batch_stats"]}, x)[0],
            gv["params"], make_optimizer().init(gv["params"]), data.images, data.labels,
            data.server_train, data.server_holdout, phase_key(state, "server"), cfg.pretrain,
            lr=hparams["pretrain_lr"],
        )
        return refresh_batch_stats(
            apply_fn, {"params": result.params, "batch_stats": gv["batch_stats"]},
            data.images, data.server_train, cfg.local_batch_size,
        )

    return jax.lax.cond(state.round == 0, run, lambda _: gv, None)
