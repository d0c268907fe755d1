"""FedConv's round (SPEC §2): its static spec, its state and its phases.

Phases, in order: server pre-training (round 1 by default), compression tuning per SR tier,
client training (vmapped or `lax.map`ped within each tier), dilation tuning (vmapped over each
tier's clients), aggregation tuning, evaluation. Tiers are unrolled at trace time: clients of
one SR share shapes, and each tier has a fixed capacity with a client mask, so rounds never
recompile. Every phase is a module-level pure function of (spec, state, data, hparams,
previous outputs); `run_phases` chains them, for the fused round and for phase timing alike.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from fedconv_jax.algorithms.fedconv.aggregation import (
    GRANULARITIES,
    SCOPES,
    aggregate,
    init_aggregation_weights,
    kld_term,
    over_holders,
)
from fedconv_jax.algorithms.fedconv.compression import (
    compress,
    compress_batch_stats,
    init_compression_filters,
    leading_block,
)
from fedconv_jax.algorithms.fedconv.dilation import (
    dilate,
    dilate_batch_stats,
    init_dilation_filters,
)
from fedconv_jax.algorithms.fedconv.filters import FilterConfig
from fedconv_jax.core.algorithm import HParams, PhaseCall
from fedconv_jax.core.averaging import weighted_average
from fedconv_jax.core.data import RoundData
from fedconv_jax.core.participation import select_clients
from fedconv_jax.core.sharding import map_clients_over_devices
from fedconv_jax.core.skeleton import (
    RoundSteps,
    federated_round,
    global_evaluation,
    pretrain_on_server,
    round_key,
    scoped_call,
)
from fedconv_jax.core.spec import RoundSpec
from fedconv_jax.core.streams import slot_keys
from fedconv_jax.core.tuning import (
    TuningConfig,
    evaluate,
    make_optimizer,
    refresh_batch_stats,
    tune,
)
from fedconv_jax.core.types import Params, PRNGKey, Variables
from fedconv_jax.core.validation import FieldError, check_bool, check_choice, check_int

AGGREGATIONS = ("learned", "mean")
COMPRESS_STATISTICS = ("refresh", "slice")
DILATION_TARGETS = ("model", "update")
PHASES = ("pretrain", "compress", "clients", "dilate", "aggregate", "evaluate")
# FedConv's own traced hyper-parameters (besides core.algorithm.SHARED_HPARAMS).
FEDCONV_HPARAMS = ("filter_lr", "filter_lr_min", "aggregate_lr", "kld_weight")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedConvConfig:
    """FedConv's own static settings: the `config.fedconv` section, field for field.

    Attributes:
      filters: the compression/dilation filter module (`config.fedconv.filters`).
      compress_epochs, dilate_epochs, aggregate_epochs: epochs of the three server tuning
        loops of every round (batch size and held-out selection as pre-training's).
      cosine_t_max: T_max of Eq. 2 for the filter loops (paper: 4); 0 = constant lr
        (reference code).
      pretrain_every_round: pre-train on D every round (reference code) instead of round 1.
      aggregation: "learned" (Eq. 4/5) or "mean" (plain sample-weighted averaging).
      aggregation_granularity: "layer" or "element" learned weights.
      aggregation_normalize: softmax-normalised weights (see aggregation.py) or raw Eq. 4.
      keep_best_global: the next global model is whichever of (previous global, new
        aggregate) has the lower cross-entropy on the held-out slice of D; guards small
        server sets against the drift of repeated tuning (README, "Model selection").
      compress_statistics: BatchNorm running statistics of a generated sub-model. "slice"
        (SPEC §3 table): the global model's first O' entries, the filters tuned against them
        in eval mode. "refresh": the filters are tuned with batch statistics and the sent
        sub-model's running statistics are re-estimated on D, as after dilation; sliced
        statistics no longer describe mixed channels (ResNet18 at SR 0.5: chance accuracy).
      dilation_target: what a client's upload is dilated into. "model" (Eq. 3): the dilated
        model TC_j(P_j). "update" (default): the previous global model plus the dilated
        update, W_G + TC_j(P_j) - TC_j(P_sent) with P_sent the sub-model the client was sent;
        with identity filters the client's block replaces the global one and every element
        it does not hold keeps the global value instead of 0. Chosen by measurement (issue
        18, benchmarks/README.md): "model" drifts down after round 3 on MNIST at alpha = 1.
      aggregation_scope: "all" (Eq. 4): every present client's dilated model is weighted.
        "holders" (default): each element is averaged over the clients whose sub-model holds
        it (aggregation.over_holders; with "model" the uploads average around 0); with
        identity filters and plain averaging that is HeteroFL's rule. The paper's form is
        dilation_target="model", aggregation_scope="all".
    """

    filters: FilterConfig = FilterConfig()
    compress_epochs: int = 20
    dilate_epochs: int = 20
    aggregate_epochs: int = 20
    cosine_t_max: int = 0
    pretrain_every_round: bool = False
    aggregation: str = "learned"
    aggregation_granularity: str = "layer"
    aggregation_normalize: bool = True
    keep_best_global: bool = False
    compress_statistics: str = "refresh"
    dilation_target: str = "update"
    aggregation_scope: str = "holders"

    def __post_init__(self):
        if not isinstance(self.filters, FilterConfig):
            raise FieldError("filters", self.filters, "a FilterConfig")
        for field in ("compress_epochs", "dilate_epochs", "aggregate_epochs", "cosine_t_max"):
            check_int(field, getattr(self, field), minimum=0)
        for field in ("pretrain_every_round", "aggregation_normalize", "keep_best_global"):
            check_bool(field, getattr(self, field))
        check_choice("aggregation", self.aggregation, AGGREGATIONS)
        check_choice("compress_statistics", self.compress_statistics, COMPRESS_STATISTICS)
        check_choice("dilation_target", self.dilation_target, DILATION_TARGETS)
        check_choice("aggregation_granularity", self.aggregation_granularity, GRANULARITIES)
        check_choice("aggregation_scope", self.aggregation_scope, SCOPES)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedConvSpec(RoundSpec, FedConvConfig):
    """The shared round spec plus FedConv's own settings: what FedConv's phases read."""

    def _loop(self, epochs: int, cosine_t_max: int = 0) -> TuningConfig:
        """A tuning loop with pre-training's batch size and held-out selection."""
        return dataclasses.replace(self.pretrain, epochs=epochs, cosine_t_max=cosine_t_max)

    @property
    def compress(self) -> TuningConfig:
        return self._loop(self.compress_epochs, self.cosine_t_max)

    @property
    def dilate(self) -> TuningConfig:
        return self._loop(self.dilate_epochs, self.cosine_t_max)

    @property
    def aggregate(self) -> TuningConfig:
        return self._loop(self.aggregate_epochs)


@struct.dataclass
class ServerState:
    """Everything a resumed run needs. Per-tier tuples hold {} for SR = 1 tiers."""

    global_vars: Variables
    compression: tuple[Params, ...]  # one filter set per tier
    compression_opt: tuple[Any, ...]
    dilation: tuple[Params, ...]  # per tier, stacked over the tier's client slots
    dilation_opt: tuple[Any, ...]
    agg_weights: Params  # stacked over all client slots, tier-major
    agg_opt: Any
    pretrain_opt: Any
    round: jax.Array  # int32, 0-based index of the next round
    key: PRNGKey


def _sub_template(cfg: FedConvSpec, ratio: float) -> Variables:
    return jax.eval_shape(lambda: cfg.model.init(jax.random.key(0), ratio))


def init_server_state(cfg: FedConvSpec, key: PRNGKey) -> ServerState:
    """Global model, identity-initialised filters, unit aggregation weights, Adam states."""
    k_model, k_comp, k_dil, k_round = jax.random.split(key, 4)
    global_vars = cfg.model.init(k_model, 1.0)
    params = global_vars["params"]
    compression, compression_opt, dilation, dilation_opt = [], [], [], []
    for t, (ratio, capacity) in enumerate(zip(cfg.tier_ratios, cfg.tier_capacity)):
        if ratio == 1.0:
            for store in (compression, compression_opt, dilation, dilation_opt):
                store.append({})
            continue
        sub = _sub_template(cfg, ratio)["params"]
        comp = init_compression_filters(jax.random.fold_in(k_comp, t), params, sub, cfg.filters)
        dil_keys = slot_keys(k_dil, t, capacity)
        dil = jax.vmap(lambda k: init_dilation_filters(k, params, sub, cfg.filters))(dil_keys)
        compression.append(comp)
        compression_opt.append(make_optimizer().init(comp))
        dilation.append(dil)
        dilation_opt.append(jax.vmap(make_optimizer().init)(dil))
    agg_weights = init_aggregation_weights(
        params, cfg.num_clients, cfg.aggregation_granularity, cfg.aggregation_normalize
    )
    return ServerState(
        global_vars=global_vars,
        compression=tuple(compression),
        compression_opt=tuple(compression_opt),
        dilation=tuple(dilation),
        dilation_opt=tuple(dilation_opt),
        agg_weights=agg_weights,
        agg_opt=make_optimizer().init(agg_weights),
        pretrain_opt=make_optimizer().init(params),
        round=jnp.zeros((), jnp.int32),
        key=k_round,
    )


def _map_clients(cfg: FedConvSpec, fn: Callable, shared, *xs):
    return map_clients_over_devices(
        cfg.devices, cfg.client_parallelism, cfg.client_chunk, fn, shared, *xs, remat=cfg.remat
    )


def _apply_at(cfg: FedConvSpec, ratio: float) -> Callable:
    return functools.partial(cfg.model.apply, ratio)


def _logits_at(cfg: FedConvSpec, ratio: float, variables: Variables) -> Callable:
    return lambda x: cfg.model.apply(ratio, variables, x)[0]


def pretrain_phase(cfg: FedConvSpec, state: ServerState, data: RoundData, hparams: HParams) -> ServerState:
    """Pre-trains the global model on D (round 1 only, unless `pretrain_every_round`).

    Returns the state with new `global_vars` (BatchNorm statistics re-estimated on D) and
    `pretrain_opt`.
    """
    if cfg.pretrain.epochs == 0:
        return state

    def run(_):
        key = round_key(state, "pretrain")
        return pretrain_on_server(cfg, 1.0, state.global_vars, state.pretrain_opt, data, hparams, key)

    if cfg.pretrain_every_round:
        new_vars, opt = run(None)
    else:
        new_vars, opt = jax.lax.cond(state.round == 0, run, lambda _: (state.global_vars, state.pretrain_opt), None)
    return state.replace(global_vars=new_vars, pretrain_opt=opt)


def compress_phase(cfg: FedConvSpec, state: ServerState, data: RoundData, hparams: HParams):
    """Tunes each SR tier's compression filters on D (Eq. 1) and generates its sub-model.

    Returns:
      (state with new `compression` filters and optimizer states, per tier the sub-model
      sent to its clients (the global model itself for SR 1), metrics).
    """
    gv = state.global_vars
    subs, filters, opts, metrics = [], [], [], {}
    key = round_key(state, "compress")
    for t, ratio in enumerate(cfg.tier_ratios):
        if ratio == 1.0:
            subs.append(gv)
            filters.append({})
            opts.append({})
            continue
        stats = compress_batch_stats(gv["batch_stats"], _sub_template(cfg, ratio)["batch_stats"])
        # Batch statistics while tuning where the sent statistics are re-estimated anyway.
        batch_mode = bool(stats) and cfg.compress_statistics == "refresh"
        # tune splits fold_in(key, t) into its epoch keys; folding 1 in gives a key apart from them.
        model_rng = jax.random.fold_in(jax.random.fold_in(key, t), 1) if batch_mode and cfg.model.uses_dropout else None

        def sub_logits(f, x, ratio=ratio, stats=stats, batch_mode=batch_mode, model_rng=model_rng):
            sub = {"params": compress(gv["params"], f, cfg.filters), "batch_stats": stats}
            return cfg.model.apply(ratio, sub, x, train=batch_mode, rng=model_rng)[0]

        result = tune(
            sub_logits, state.compression[t], state.compression_opt[t], data.images,
            data.labels, data.server_train, data.server_holdout,
            jax.random.fold_in(key, t), cfg.compress, lr=hparams["filter_lr"], lr_min=hparams["filter_lr_min"],
        )
        sub = {"params": compress(gv["params"], result.params, cfg.filters), "batch_stats": stats}
        if batch_mode:
            sub = refresh_batch_stats(_apply_at(cfg, ratio), sub, data.images, data.server_train, cfg.local_batch_size)
        subs.append(sub)
        filters.append(result.params)
        opts.append(result.opt_state)
        acc, _ = evaluate(_logits_at(cfg, ratio, sub), data.images, data.labels, data.server_test, cfg.eval_chunk)
        metrics[f"compress/{ratio:g}/holdout_accuracy"] = result.holdout_accuracy
        metrics[f"compress/{ratio:g}/holdout_before"] = result.holdout_curve[0]  # this round's filters untuned
        metrics[f"compress/{ratio:g}/best_epoch"] = result.best_epoch
        metrics[f"compress/{ratio:g}/test_accuracy"] = acc
    state = state.replace(compression=tuple(filters), compression_opt=tuple(opts))
    return state, tuple(subs), metrics


def dilate_phase(
    cfg: FedConvSpec, state: ServerState, data: RoundData, hparams: HParams, trained: tuple[Variables, ...]
):
    """Tunes each participating client's dilation filters on D (Eq. 3) and dilates its upload
    back to the global shapes.

    Returns:
      (state with new `dilation` filters and optimizer states (absent slots keep theirs),
      per tier the dilated models stacked over slots, metrics).
    """
    gv = state.global_vars
    key = round_key(state, "dilate")
    dilated, filters, opts, metrics = [], [], [], {}
    for t, ratio in enumerate(cfg.tier_ratios):
        if ratio == 1.0:
            dilated.append(trained[t])
            filters.append({})
            opts.append({})
            continue
        keys = slot_keys(key, t, cfg.tier_capacity[t])
        # "update": (previous global params, what the tier was sent); the sent params are
        # regenerated from this round's compression filters, already in `state`.
        base = None
        if cfg.dilation_target == "update":
            base = (gv["params"], compress(gv["params"], state.compression[t], cfg.filters))

        def one_client(shared, client_vars, f, opt, k):
            global_stats, base, images, labels, server_train, server_holdout, lr, lr_min = shared
            stats = dilate_batch_stats(client_vars["batch_stats"], global_stats)

            def dilated(filt):
                big = dilate(client_vars["params"], filt, cfg.filters)
                if base is None:
                    return big
                previous, sent = base
                return jax.tree.map(lambda g, a, b: g + (a - b), previous, big, dilate(sent, filt, cfg.filters))

            def big_logits(filt, x):
                return cfg.model.apply(1.0, {"params": dilated(filt), "batch_stats": stats}, x)[0]

            result = tune(
                big_logits, f, opt, images, labels, server_train, server_holdout, k, cfg.dilate,
                lr=lr, lr_min=lr_min,
            )
            big = {"params": dilated(result.params), "batch_stats": stats}
            return big, result.params, result.opt_state, (result.holdout_accuracy, result.holdout_curve[0], result.best_epoch)

        shared = (
            gv["batch_stats"], base, data.images, data.labels, data.server_train, data.server_holdout,
            hparams["filter_lr"], hparams["filter_lr_min"],
        )
        big, f, opt, (acc, before, best) = _map_clients(
            cfg, one_client, shared, trained[t], state.dilation[t], state.dilation_opt[t], keys
        )
        mask = data.client_mask[t]
        dilated.append(big)
        filters.append(select_clients(mask, f, state.dilation[t]))  # absent slots keep theirs
        opts.append(select_clients(mask, opt, state.dilation_opt[t]))
        metrics[f"dilate/{ratio:g}/holdout_accuracy"] = acc
        metrics[f"dilate/{ratio:g}/holdout_before"] = before  # last round's filters on this upload
        metrics[f"dilate/{ratio:g}/best_epoch"] = best
    state = state.replace(dilation=tuple(filters), dilation_opt=tuple(opts))
    return state, tuple(dilated), metrics


def aggregate_phase(
    cfg: FedConvSpec, state: ServerState, data: RoundData, hparams: HParams, dilated: tuple[Variables, ...]
):
    """Aggregates the dilated models into the next global model: learned weights tuned on D
    (Eq. 4/5) or plain sample-weighted averaging; BatchNorm statistics re-estimated on D.

    Returns:
      (state with new `global_vars`, `agg_weights` and `agg_opt`, None (nothing for a next
      server step), metrics). With no usable upload at all the previous model and weights
      are kept.
    """
    stacked = jax.tree.map(lambda *xs: jnp.concatenate(xs), *dilated)
    n = jnp.concatenate(data.num_samples)
    mask = jnp.concatenate(data.client_mask)
    previous = state.global_vars
    stats = weighted_average(stacked["batch_stats"], n, mask)
    metrics = {}

    if cfg.aggregation_scope == "holders":  # loop-invariant parts, built once
        # "model": uploads are 0 where a client holds nothing, so they average around 0
        base = previous["params"] if cfg.dilation_target == "update" else jax.tree.map(jnp.zeros_like, previous["params"])
        updates = jax.tree.map(lambda x, g: x - g, stacked["params"], base)
        coverage = _coverage(cfg, previous["params"])

    def combined(combine):  # the aggregate for a linear client-stacked -> one map
        if cfg.aggregation_scope == "all":
            return combine(stacked["params"])
        return over_holders(combine, updates, base, coverage)

    def learned(v):
        return combined(lambda x: aggregate(x, v, n, mask, cfg.aggregation_normalize))

    if cfg.aggregation == "learned":
        weights, agg_opt, tune_metrics = _tune_aggregation(cfg, state, data, hparams, learned, stats)
        params = learned(weights)
        metrics.update(tune_metrics)
    else:
        weights, agg_opt = state.agg_weights, state.agg_opt
        params = combined(lambda x: weighted_average(x, n, mask))
    new_vars = refresh_batch_stats(
        _apply_at(cfg, 1.0), {"params": params, "batch_stats": stats},
        data.images, data.server_train, cfg.local_batch_size,
    )
    anyone = jnp.any(mask)
    new_vars, weights, agg_opt = jax.tree.map(
        lambda a, b: jnp.where(anyone, a, b),
        (new_vars, weights, agg_opt), (previous, state.agg_weights, state.agg_opt),
    )
    if cfg.keep_best_global:
        def holdout(v):
            return evaluate(_logits_at(cfg, 1.0, v), data.images, data.labels, data.server_holdout)[1]

        accept = holdout(new_vars) <= holdout(previous)
        new_vars = jax.tree.map(lambda a, b: jnp.where(accept, a, b), new_vars, previous)
        metrics["aggregate/accepted"] = accept
    return state.replace(global_vars=new_vars, agg_weights=weights, agg_opt=agg_opt), None, metrics


def _coverage(cfg: FedConvSpec, params: Params) -> Params:
    """Per tensor, (all client slots, *shape) 0/1, tier-major: where each tier's sub-model
    sits in the global tensor (its leading block)."""
    tiers = []
    for ratio, capacity in zip(cfg.tier_ratios, cfg.tier_capacity, strict=True):
        def block(g, s, capacity=capacity):
            held = jnp.zeros(g.shape, g.dtype).at[leading_block(s.shape)].set(1)
            return jnp.broadcast_to(held, (capacity, *g.shape))

        tiers.append(jax.tree.map(block, params, _sub_template(cfg, ratio)["params"]))
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *tiers)


def _tune_aggregation(cfg, state, data, hparams, aggregated_at: Callable, stats):
    """Eq. 5: the aggregation weights v minimise cross-entropy on D plus lambda * KLD;
    aggregated_at(v) is the aggregate params at v."""
    previous = state.global_vars["params"]

    def agg_logits(v, x):
        return cfg.model.apply(1.0, {"params": aggregated_at(v), "batch_stats": stats}, x)[0]

    def kld(v):
        return hparams["kld_weight"] * kld_term(previous, aggregated_at(v))

    result = tune(
        agg_logits, state.agg_weights, state.agg_opt, data.images, data.labels,
        data.server_train, data.server_holdout, round_key(state, "aggregate"),
        cfg.aggregate, lr=hparams["aggregate_lr"], regularizer=kld,
    )
    metrics = {
        "aggregate/holdout_accuracy": result.holdout_accuracy,
        "aggregate/holdout_before": result.holdout_curve[0],  # last round's weights on these uploads
        "aggregate/best_epoch": result.best_epoch,
    }
    return result.params, result.opt_state, metrics


def fedconv_steps(cfg: FedConvSpec) -> RoundSteps:
    """FedConv's parts of the shared round skeleton (core.skeleton): pre-training, compression
    as the send, dilation and aggregation as the server steps."""
    steps = (("dilate", dilate_phase), ("aggregate", aggregate_phase))
    return RoundSteps(
        send=functools.partial(compress_phase, cfg),
        server=tuple((name, functools.partial(fn, cfg)) for name, fn in steps),
        evaluate=global_evaluation(cfg, 1.0),
        trained_ratio=lambda ratio: ratio,
        prepare=functools.partial(pretrain_phase, cfg),
        send_name="compress",
    )


def run_phases(
    cfg: FedConvSpec, state: ServerState, data: RoundData, hparams: HParams, call: PhaseCall = scoped_call
):
    """One FedConv round: (state, data, hparams) -> (next state, metrics), each phase run
    through `call(name, fn, *args)` (`experiment.time_phases` compiles and times each)."""
    return federated_round(cfg, fedconv_steps(cfg), state, data, hparams, call=call)


__all__ = [
    "AGGREGATIONS",
    "DILATION_TARGETS",
    "FEDCONV_HPARAMS",
    "PHASES",
    "FedConvConfig",
    "FedConvSpec",
    "ServerState",
    "aggregate_phase",
    "compress_phase",
    "dilate_phase",
    "fedconv_steps",
    "init_server_state",
    "pretrain_phase",
    "run_phases",
]
