"""What every baseline round shares: its state, keys, tier training and the metrics it reports.

Baselines run on the same `RoundSpec`, `RoundData` and tier layout as FedConv (tiers unrolled
at trace time, each tier's clients vmapped or `lax.map`ped, the client axis sharded over
`devices` as FedConv's is), and report the same metric keys,
so `metrics.round_row`, the run loop and the comparison runner treat every algorithm alike.
"""

import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from flax import struct

from fedconv_jax.core.algorithm import FederatedAlgorithm, HParams
from fedconv_jax.core.client import local_train
from fedconv_jax.core.data import IndexSet, RoundData
from fedconv_jax.core.participation import screen_uploads
from fedconv_jax.core.sharding import map_clients_over_devices
from fedconv_jax.core.spec import RoundSpec
from fedconv_jax.core.streams import slot_keys, stream_key
from fedconv_jax.core.tuning import evaluate, make_optimizer, refresh_batch_stats, tune
from fedconv_jax.core.types import Metrics, PRNGKey, Variables


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
      key: the run's key; per-round keys come from named streams (core.streams).
    """

    global_vars: Variables
    client_vars: tuple[Variables, ...]
    round: jax.Array
    key: PRNGKey


def pretrain_option(config: Mapping) -> dict:
    """The `pretrain` option of the baselines that have a global model (config.baseline_pretrain)."""
    return {"pretrain": config["baseline_pretrain"]}


def baseline(
    name: str,
    spec: RoundSpec,
    init: Callable[[PRNGKey], BaselineState],
    round_fn: Callable,
    trained_ratio: Callable[[float], float | None],
    *,
    per_client: bool = False,
    sends_model: bool = True,
) -> FederatedAlgorithm:
    """A baseline as a `FederatedAlgorithm` over `BaselineState`.

    Args:
      per_client: `client_vars` holds the clients' own models, stacked over slots (laid out
        along the mesh's client axis).
    """
    return FederatedAlgorithm(
        name=name,
        spec=spec,
        init=init,
        round=round_fn,
        per_client_fields=("client_vars",) if per_client else (),
        trained_ratio=trained_ratio,
        # standalone has no global model: the digest covers the clients' own models too
        digest=lambda state: (state.global_vars["params"], state.client_vars),
        sends_model=sends_model,
    )


def split_init_keys(key: PRNGKey) -> tuple[PRNGKey, PRNGKey]:
    """(model key, round key), drawn as FedConv's `init_server_state` draws them, so that
    fedavg_full, heterofl, fedrolex, feddropout and serveralone start from FedConv's
    initial global model for the same seed."""
    k_model, _, _, k_round = jax.random.split(key, 4)
    return k_model, k_round


def phase_key(state: BaselineState, stream: str) -> PRNGKey:
    """The round's key of a named stream: "clients" (the clients' data order, shared with
    FedConv's clients), "pretrain" (pre-training on D, shared with FedConv), "slices", "server" (serveralone)."""
    return stream_key(state.key, state.round, stream)


def client_keys(key: PRNGKey, cfg: RoundSpec, tier: int) -> jax.Array:
    """One key per client slot of a tier, folded from (tier, slot) as FedConv's are: padding a
    tier's capacity up to a multiple of the device count leaves every real client's key as it was."""
    return slot_keys(key, tier, cfg.tier_capacity[tier])


def broadcast_clients(variables: Variables, capacity: int) -> Variables:
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (capacity, *x.shape)), variables)


def train_tier(
    cfg: RoundSpec, ratio: float, start: Variables, data: RoundData, tier: int, keys: jax.Array, lr: jax.Array
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


def screen_tiers(state: BaselineState, data: RoundData, hparams: HParams, sent, trained):
    """The shared upload screen (core.participation.screen_uploads: poisoning, dropout,
    non-finite uploads) with the round's "dropout" and "poison" streams, FedConv's own.

    Returns:
      (screened uploads per tier, participating per tier, screen metrics).
    """
    keys = (phase_key(state, "dropout"), phase_key(state, "poison"))
    return screen_uploads(
        keys, data.client_mask, sent, trained, data.poisoned, hparams["dropout_rate"], hparams["poison_scale"]
    )


def client_metrics(data: RoundData, accuracy: list[jax.Array]) -> Metrics:
    """The per-tier client accuracy and test counts `metrics.round_row` expects."""
    counts = tuple(jnp.sum(t.mask, axis=-1) for t in data.client_test)
    return {"client_accuracy": tuple(accuracy), "client_test_count": counts}


def global_metrics(cfg: RoundSpec, ratio: float, variables: Variables, data: RoundData) -> Metrics:
    acc, loss = evaluate(
        lambda x: cfg.model.apply(ratio, variables, x)[0], data.images, data.labels,
        data.server_test, cfg.eval_chunk,
    )
    return {"global_accuracy": acc, "global_loss": loss}


def server_set(data: RoundData) -> IndexSet:
    """The whole server data set D (tuning part and held-out part)."""
    return IndexSet(
        jnp.concatenate([data.server_train.idx, data.server_holdout.idx]),
        jnp.concatenate([data.server_train.mask, data.server_holdout.mask]),
    )


def pretrain_on_server(
    cfg: RoundSpec, ratio: float, state: BaselineState, data: RoundData, hparams: HParams, enabled: bool
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
            data.server_train, data.server_holdout, phase_key(state, "pretrain"), cfg.pretrain,
            lr=hparams["pretrain_lr"],
        )
        return refresh_batch_stats(
            apply_fn, {"params": result.params, "batch_stats": gv["batch_stats"]},
            data.images, data.server_train, cfg.local_batch_size,
        )

    return jax.lax.cond(state.round == 0, run, lambda _: gv, None)
