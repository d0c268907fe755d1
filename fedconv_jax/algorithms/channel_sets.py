"""Personal channel sets (Hermes, TailorFL): HeteroFL's slicing with data-driven channels.

Every client slot carries, per width unit u, the k_u = floor(s * C_u) channels it keeps
(state `channels`, laid out along the client axis). A round:
  1. send: each client gets the global model restricted to its channels (`slicing.gather`),
     a dense model of its tier's width: what it trains costs what its SR allows;
  2. clients train it and are evaluated on their own test splits (the personalised
     sub-network's accuracy);
  3. aggregate: every element averaged over the participants that hold it (HeteroFL's
     count-normalised rule); elements nobody holds keep their value;
  4. select: each participant scores the C_u channels of every unit (the algorithm's
     `score`) and keeps its k_u best for the next round; the others keep their sets.
     `channel_set_changes` (details of metrics.jsonl): per tier, how many (client, unit)
     sets changed.
Channels start as HeteroFL's (the first k_u). Index sets are traced data: a new choice never
recompiles. An algorithm here supplies only `score`.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import struct

from fedconv_jax.algorithms import slicing
from fedconv_jax.algorithms.common import baseline, split_init_keys
from fedconv_jax.core.algorithm import FederatedAlgorithm, HParams
from fedconv_jax.core.data import RoundData
from fedconv_jax.core.sharding import map_clients_over_devices
from fedconv_jax.core.skeleton import RoundSteps, global_evaluation
from fedconv_jax.core.spec import RoundSpec
from fedconv_jax.core.types import Params, PRNGKey, Variables
from fedconv_jax.models import kept_widths

# score(spec, rules, global_vars, upload, channels, images, labels, train_set) -> {unit: (C_u,)}:
# one client's score of every channel after its round (higher = keep); `global_vars` is the
# model it was sent from, `upload` its trained sub-model, `channels` the sets it trained.
ScoreFn = Callable[..., dict[str, jax.Array]]


@struct.dataclass
class ChannelState:
    """Attributes:
      global_vars: the full global model.
      channels: per tier, {unit: (capacity, k_u) int32}: every client's kept channels.
      round: int32, 0-based index of the next round.
      key: the run's key.
    """

    global_vars: Variables
    channels: tuple[dict[str, jax.Array], ...]
    round: jax.Array
    key: PRNGKey


def channel_sums(tree: Params, rules, widths: dict[str, int]) -> dict[str, jax.Array]:
    """Per unit u, (C_u,): the sum of `tree`'s entries over every element that belongs to
    channel c of u (each axis declared for u, a flatten's r entries per channel included).

    Args:
      rules: `slicing.channel_rules` of the tree (its "params" part for parameters).
      widths: C_u of every unit (`model.unit_widths(1.0)`).
    """
    sums = {u: jnp.zeros((c,)) for u, c in widths.items()}

    def one(x, rule):
        for axis, segments in enumerate(rule):
            if segments is None:
                continue
            per_index = jnp.sum(x, axis=tuple(a for a in range(x.ndim) if a != axis))
            for unit, repeat, offset in segments:
                part = per_index[offset : offset + widths[unit] * repeat].reshape(widths[unit], repeat)
                sums[unit] = sums[unit] + part.sum(-1)

    jax.tree.map(one, tree, rules)
    return sums


def top_channels(scores: dict[str, jax.Array], kept: dict[str, int]) -> dict[str, jax.Array]:
    """Per unit, the k_u channels of highest score, in increasing channel order (ties: lower index)."""
    return {u: jnp.sort(jnp.argsort(-scores[u], stable=True)[:k]).astype(jnp.int32) for u, k in kept.items()}


def init_channel_state(spec: RoundSpec, key: PRNGKey) -> ChannelState:
    k_model, k_round = split_init_keys(key)
    widths = spec.model.unit_widths(1.0)
    channels = tuple(
        slicing.nested_indices(widths, kept_widths(widths, spec.model.unit_widths(r)), c)
        for r, c in zip(spec.tier_ratios, spec.tier_capacity)
    )
    channels = jax.tree.map(lambda x: x.astype(jnp.int32), channels)
    return ChannelState(spec.model.init(k_model, 1.0), channels, jnp.zeros((), jnp.int32), k_round)


def channel_steps(spec: RoundSpec, score: ScoreFn) -> RoundSteps:
    rules = slicing.channel_rules(spec.model)
    widths = spec.model.unit_widths(1.0)
    kept = [kept_widths(widths, spec.model.unit_widths(r)) for r in spec.tier_ratios]

    def send(state: ChannelState, data: RoundData, hparams: HParams):
        del data, hparams
        sent = tuple(jax.vmap(lambda i: slicing.gather(state.global_vars, rules, i))(c) for c in state.channels)
        return state, sent, {}

    def aggregate(state: ChannelState, data: RoundData, hparams: HParams, uploads):
        del hparams
        tiers = [(u, c, m.astype(jnp.float32)) for u, c, m in zip(uploads, state.channels, data.client_mask)]
        new = slicing.aggregate_slices(state.global_vars, rules, tiers)
        return state.replace(global_vars=new), (state.global_vars, uploads), {}

    def select(state: ChannelState, data: RoundData, hparams: HParams, previous_and_uploads):
        """Each participant keeps its best-scored channels; the rest keep their sets. Scores
        are computed from what the client had in its round: the global model it was sent
        from and its own trained sub-model."""
        del hparams
        before, uploads = previous_and_uploads
        new_sets = []
        for t, (upload, channels) in enumerate(zip(uploads, state.channels)):

            def one(shared, upload, channels, train_set, present, t=t):
                images, labels, global_vars = shared
                chosen = top_channels(
                    score(spec, rules, global_vars, upload, channels, images, labels, train_set), kept[t]
                )
                return jax.tree.map(lambda new, old: jnp.where(present, new, old), chosen, channels)

            new_sets.append(map_clients_over_devices(
                spec.devices, spec.client_parallelism, spec.client_chunk, one,
                (data.images, data.labels, before), upload, channels, data.client_train[t], data.client_mask[t],
            ))
        changed = tuple(
            sum(jnp.sum(jnp.any(n[u] != o[u], axis=-1)) for u in n) for n, o in zip(new_sets, state.channels)
        )
        return state.replace(channels=tuple(new_sets)), None, {"channel_set_changes": changed}

    return RoundSteps(
        send=send,
        server=(("aggregate", aggregate), ("select", select)),
        evaluate=global_evaluation(spec, 1.0),
        trained_ratio=lambda s: s,
        per_client_start=True,
    )


def personal_view(rules, global_vars: Variables, upload: Variables, channels) -> Params:
    """The client's full-shape view after its round: its trained channels where it holds
    them, the global model it was sent from elsewhere (parameters only)."""
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), global_vars["params"])
    values, owned = slicing.embed(upload["params"], rules["params"], channels, shapes)
    return jax.tree.map(lambda v, o, g: jnp.where(o > 0, v, g), values, owned, global_vars["params"])


def channel_algorithm(name: str, spec: RoundSpec, score: ScoreFn) -> FederatedAlgorithm:
    return baseline(
        name, spec, functools.partial(init_channel_state, spec), channel_steps(spec, score),
        per_client_fields=("channels",),
    )


__all__ = [
    "ChannelState",
    "channel_algorithm",
    "channel_sums",
    "personal_view",
    "top_channels",
]
