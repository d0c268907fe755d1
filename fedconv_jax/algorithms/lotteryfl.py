"""LotteryFL (Li et al., 2020): each client learns a personal sparse subnetwork of the global
model by iterative magnitude pruning; the server averages each weight over its holders.

Every client slot carries a 0/1 mask over the weights (state `keep`, laid out along the
client axis). A round:
  1. send: each client gets the global model restricted to its mask (the lottery ticket's
     reset: its kept weights restart from the global values every round);
  2. clients train the masked model (pruned weights are held at 0, `local_train`'s `keep`)
     and are evaluated on their own test splits: the personalised subnetwork's accuracy;
  3. aggregate: every weight is averaged over the participants whose mask keeps it (plain
     counts, as HeteroFL); a weight nobody keeps keeps its value; BatchNorm statistics are
     averaged over the participants;
  4. prune: a participant whose trained model reaches `accuracy_threshold` on its own
     training data, and whose mask is still above its target density, drops `prune_rate`
     of its remaining weights in every weight tensor (conv and dense kernels; biases and
     BatchNorm are never pruned), the smallest |w| of its trained model first, never below
     the target. `mask_density` (details of metrics.jsonl) is every client's share of
     weights kept after the round, in tier order.
Resource heterogeneity: a client of SR s targets the density of the width-s model, the
fraction of the full model's weights that the model built at ratio s has (the CNN at SR
0.5: 0.44). Masks are traced data: pruning never recompiles.

Choices of ours: the accuracy that triggers pruning is measured on the client's training
data (its test split is for reporting only), pruning is per tensor (equal density in every
layer), and costs count the dense full-width computation the simulation does; the bytes
sent are those of the sparse model at the target density (values + a 1-bit mask).
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import struct

from fedconv_jax.algorithms.common import baseline, split_init_keys
from fedconv_jax.core.algorithm import FederatedAlgorithm, HParams, register
from fedconv_jax.core.data import RoundData
from fedconv_jax.core.sharding import map_clients_over_devices
from fedconv_jax.core.skeleton import RoundSteps, global_evaluation
from fedconv_jax.core.spec import RoundSpec
from fedconv_jax.core.tuning import evaluate
from fedconv_jax.core.types import Params, PRNGKey, Variables
from fedconv_jax.core.validation import check_number


@dataclasses.dataclass(frozen=True)
class LotteryFLConfig:
    """LotteryFL's own static settings: the `config.lotteryfl` section.

    Attributes:
      prune_rate: fraction of a client's remaining weights pruned per pruning round.
      accuracy_threshold: a client prunes after a round in which its trained model reaches
        this accuracy on its own training data.
    """

    prune_rate: float = 0.2
    accuracy_threshold: float = 0.5

    def __post_init__(self):
        check_number("prune_rate", self.prune_rate, 0.0, 1.0, low_open=True, high_open=True)
        check_number("accuracy_threshold", self.accuracy_threshold, 0.0, 1.0)


@struct.dataclass
class LotteryState:
    """Attributes:
      global_vars: the full global model.
      keep: per tier, (capacity, ...) bool over every parameter: the clients' subnetworks.
      round: int32, 0-based index of the next round.
      key: the run's key.
    """

    global_vars: Variables
    keep: tuple[Params, ...]
    round: jax.Array
    key: PRNGKey


def prunable(x) -> bool:
    """Weight tensors (conv and dense kernels) are pruned; biases and BatchNorm are not."""
    return x.ndim >= 2


def target_density(model, ratio: float) -> float:
    """The share of the full model's prunable weights that the model built at `ratio` has."""
    count = lambda r: sum(  # noqa: E731
        math.prod(x.shape) for x in jax.tree.leaves(jax.eval_shape(lambda: model.init(jax.random.key(0), r))["params"])
        if prunable(x)
    )
    return count(ratio) / count(1.0)


def prune_smallest(weights: jax.Array, keep: jax.Array, count: jax.Array) -> jax.Array:
    """`keep` reduced to the `count` kept entries of largest |weights| (ties: lower index first)."""
    score = jnp.where(keep, jnp.abs(weights), -1.0).reshape(-1)
    rank = jnp.argsort(jnp.argsort(-score, stable=True), stable=True)  # 0 = the largest kept weight
    return (rank < count).reshape(weights.shape) & keep


def prune_client(params: Params, keep: Params, density: float, rate: float, prune: jax.Array) -> Params:
    """One client's next mask: if `prune`, `rate` of each weight tensor's kept entries
    dropped (smallest |w| first), never below `density` of the tensor."""

    def one(w, k):
        if not prunable(w):
            return k
        kept = jnp.sum(k)
        goal = math.ceil(density * w.size)
        count = jnp.maximum(goal, jnp.floor(kept * (1.0 - rate)).astype(kept.dtype))
        return jnp.where(prune & (kept > goal), prune_smallest(w, k, jnp.minimum(count, kept)), k)

    return jax.tree.map(one, params, keep)


def average_over_holders(old: Params, tiers) -> Params:
    """Every weight averaged over the participants whose mask keeps it; else `old`.

    Args:
      tiers: per tier (uploaded params (capacity, ...), masks (capacity, ...), participating (capacity,)).
    """
    total = jax.tree.map(jnp.zeros_like, old)
    count = jax.tree.map(jnp.zeros_like, old)
    for params, keep, present in tiers:
        w = present.astype(jnp.float32)
        held = jax.tree.map(lambda k: k.astype(jnp.float32), keep)
        total = jax.tree.map(lambda a, p, h: a + jnp.tensordot(w, p * h, axes=1), total, params, held)
        count = jax.tree.map(lambda a, h: a + jnp.tensordot(w, h, axes=1), count, held)
    return jax.tree.map(lambda t, c, o: jnp.where(c > 0, t / jnp.maximum(c, 1.0), o), total, count, old)


def lottery_steps(spec: RoundSpec, settings: LotteryFLConfig) -> RoundSteps:
    densities = tuple(target_density(spec.model, r) for r in spec.tier_ratios)
    apply_fn = functools.partial(spec.model.apply, 1.0)

    def send(state: LotteryState, data: RoundData, hparams: HParams):
        del data, hparams
        gv = state.global_vars
        sent = []
        for keep in state.keep:
            capacity = jax.tree.leaves(keep)[0].shape[0]
            stacked = jax.tree.map(lambda x, c=capacity: jnp.broadcast_to(x, (c, *x.shape)), gv)
            params = jax.tree.map(lambda p, k: p * k.astype(p.dtype), stacked["params"], keep)
            sent.append({"params": params, "batch_stats": stacked["batch_stats"], "keep": keep})
        return state, tuple(sent), {}

    def aggregate(state: LotteryState, data: RoundData, hparams: HParams, uploads):
        del hparams
        present = data.client_mask
        params = average_over_holders(
            state.global_vars["params"], [(u["params"], k, m) for u, k, m in zip(uploads, state.keep, present)]
        )
        stats = state.global_vars["batch_stats"]
        if stats:  # plain mean over the participants
            n = sum(jnp.sum(m) for m in present)
            summed = [jax.tree.map(lambda x, m=m: jnp.tensordot(m.astype(x.dtype), x, axes=1), u["batch_stats"])
                      for u, m in zip(uploads, present)]
            mean = jax.tree.map(lambda *xs: sum(xs) / jnp.maximum(n, 1).astype(xs[0].dtype), *summed)
            stats = jax.tree.map(lambda new, old: jnp.where(n > 0, new, old), mean, stats)
        return state.replace(global_vars={"params": params, "batch_stats": stats}), uploads, {}

    def prune(state: LotteryState, data: RoundData, hparams: HParams, uploads):
        """Each participant above the accuracy threshold prunes its mask (train-set accuracy)."""
        del hparams
        masks, densities_now = [], []
        for t, (upload, keep) in enumerate(zip(uploads, state.keep)):

            def one(images_labels, variables, keep, train_set, present, t=t):
                images, labels = images_labels
                acc, _ = evaluate(lambda x: apply_fn(variables, x)[0], images, labels, train_set, spec.eval_chunk)
                go = present & (acc >= settings.accuracy_threshold)
                return prune_client(variables["params"], keep, densities[t], settings.prune_rate, go)

            new = map_clients_over_devices(
                spec.devices, spec.client_parallelism, spec.client_chunk, one, (data.images, data.labels),
                upload, keep, data.client_train[t], data.client_mask[t],
            )
            masks.append(new)
            densities_now.append(_density(new))
        return state.replace(keep=tuple(masks)), None, {"mask_density": jnp.concatenate(densities_now)}

    return RoundSteps(
        send=send,
        server=(("aggregate", aggregate), ("prune", prune)),
        evaluate=global_evaluation(spec, 1.0),
        trained_ratio=lambda s: 1.0,
        per_client_start=True,
    )


def _density(keep: Params) -> jax.Array:
    """(capacity,): the share of prunable weights each client keeps."""
    leaves = [k for k in jax.tree.leaves(keep) if k.ndim >= 3]  # client axis + a weight tensor's >= 2
    kept = sum(jnp.sum(k.reshape(k.shape[0], -1), axis=1) for k in leaves)
    return kept / sum(math.prod(k.shape[1:]) for k in leaves)


def init_lottery_state(spec: RoundSpec, key: PRNGKey) -> LotteryState:
    k_model, k_round = split_init_keys(key)
    global_vars = spec.model.init(k_model, 1.0)
    keep = tuple(
        jax.tree.map(lambda x, c=c: jnp.ones((c, *x.shape), bool), global_vars["params"]) for c in spec.tier_capacity
    )
    return LotteryState(global_vars=global_vars, keep=keep, round=jnp.zeros((), jnp.int32), key=k_round)


def sparse_bytes(model, ratio: float) -> int:
    """Bytes of the full model sparse at the target density of `ratio`: float32 values of
    the kept weights, a 1-bit mask over the weights, and the dense rest."""
    density = target_density(model, ratio)
    total = 0
    for x in jax.tree.leaves(jax.eval_shape(lambda: model.init(jax.random.key(0), 1.0))):
        n = math.prod(x.shape)
        total += math.ceil(density * n) * x.dtype.itemsize + math.ceil(n / 8) if prunable(x) else n * x.dtype.itemsize
    return total


DEFAULTS = LotteryFLConfig()


@register("lotteryfl", section=DEFAULTS)
def lotteryfl(spec: RoundSpec, settings: LotteryFLConfig = DEFAULTS) -> FederatedAlgorithm:
    """LotteryFL over `spec` with its own `settings` (the config's `lotteryfl` section)."""
    return baseline(
        "lotteryfl", spec, functools.partial(init_lottery_state, spec), lottery_steps(spec, settings),
        per_client_fields=("keep",), traffic=lambda ratio, public: (sparse_bytes(spec.model, ratio),) * 2,
    )
