"""What the baselines share: their state, their keys, pre-training on D, and how a baseline
becomes a `FederatedAlgorithm` over the shared round skeleton (core.skeleton).

Baselines run on the same `RoundSpec`, `RoundData`, tier layout, client training, upload
screen and metrics as FedConv, so the run loop, sharding, costs and the comparison runner
treat every algorithm alike, and paired comparisons see the same random streams.
"""

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from fedconv_jax.core.algorithm import FederatedAlgorithm, HParams
from fedconv_jax.core.data import IndexSet, RoundData
from fedconv_jax.core.skeleton import (
    RoundSteps,
    federated_round,
    pretrain_on_server,
    round_key,
)
from fedconv_jax.core.spec import RoundSpec
from fedconv_jax.core.streams import slot_keys
from fedconv_jax.core.tuning import make_optimizer
from fedconv_jax.core.types import PRNGKey, Variables


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
    init: Callable[[PRNGKey], Any],
    steps: RoundSteps,
    *,
    per_client_fields: tuple[str, ...] = (),
    sends_model: bool = True,
    traffic: Callable[[float, int], tuple[int, int]] | None = None,
) -> FederatedAlgorithm:
    """A baseline as a `FederatedAlgorithm` whose round is the shared skeleton over `steps`.

    Args:
      init: key -> the initial state: a `BaselineState` or any state with `global_vars`,
        `round` and `key`.
      per_client_fields: state fields stacked over client slots (laid out along the mesh's
        client axis): the clients' own models, masks or channel sets.
      sends_model, traffic: what a client sends (`FederatedAlgorithm`).
    """
    return FederatedAlgorithm(
        name=name,
        spec=spec,
        init=init,
        round=functools.partial(federated_round, spec, steps),
        per_client_fields=per_client_fields,
        trained_ratio=steps.trained_ratio,
        # the digest covers what clients keep too (standalone and fedmd have no global model)
        digest=lambda state: (state.global_vars["params"], *(getattr(state, f) for f in per_client_fields)),
        sends_model=sends_model,
        phased_round=lambda call: functools.partial(federated_round, spec, steps, call=call),
        traffic=traffic,
    )


def split_init_keys(key: PRNGKey) -> tuple[PRNGKey, PRNGKey]:
    """(model key, round key), drawn as FedConv's `init_server_state` draws them, so that
    fedavg_full, heterofl, fedrolex, feddropout and serveralone start from FedConv's
    initial global model for the same seed."""
    k_model, _, _, k_round = jax.random.split(key, 4)
    return k_model, k_round


def client_keys(key: PRNGKey, cfg: RoundSpec, tier: int) -> jax.Array:
    """One key per client slot of a tier, folded from (tier, slot) as FedConv's are: padding a
    tier's capacity up to a multiple of the device count leaves every real client's key as it was."""
    return slot_keys(key, tier, cfg.tier_capacity[tier])


def server_set(data: RoundData) -> IndexSet:
    """The whole server data set D (tuning part and held-out part)."""
    return IndexSet(
        jnp.concatenate([data.server_train.idx, data.server_holdout.idx]),
        jnp.concatenate([data.server_train.mask, data.server_holdout.mask]),
    )


def pretrain_step(cfg: RoundSpec, ratio: float, enabled: bool) -> Callable | None:
    """The skeleton's `prepare` of a baseline with a global model of width `ratio`: in round 1
    only, the global model pre-trained on D exactly as FedConv's is (a fresh Adam), or None.

    The paper's baselines have no server data, so this is off by default; it separates what
    FedConv gains from D's pre-training from what it gains from its learned steps.
    """
    if not enabled or cfg.pretrain.epochs == 0:
        return None

    def prepare(state: BaselineState, data: RoundData, hparams: HParams) -> BaselineState:
        gv = state.global_vars

        def run(_):
            opt = make_optimizer().init(gv["params"])
            return pretrain_on_server(cfg, ratio, gv, opt, data, hparams, round_key(state, "pretrain"))[0]

        return state.replace(global_vars=jax.lax.cond(state.round == 0, run, lambda _: gv, None))

    return prepare
