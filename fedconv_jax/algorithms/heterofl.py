"""Channel-slice baselines (SPEC §7): HeteroFL, FedRolex and Federated Dropout.

A client of ratio s trains the global model restricted to k_u = floor(s * C_u) channels of
every conv layer (`slicing.py` gives the rules); the server averages every element over the
clients that hold it (plain counts, as in HeteroFL), and elements nobody holds keep their
value. The three differ only in which channels a client gets:
  - heterofl:   the first k_u channels, every round (nested, static);
  - fedrolex:   channels (arange(k_u) + round) % C_u, rolled by one per round;
  - feddropout: k_u random channels per client and round, keyed by (seed, round, client).
SR 1 clients always train the whole model. The index vectors are computed inside the
compiled round from `state.round` and keys, so the rolling and random variants never recompile.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from fedconv_jax.algorithms import slicing
from fedconv_jax.algorithms.common import (
    BaselineState,
    baseline,
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
from fedconv_jax.core.data import RoundData
from fedconv_jax.core.sampling import sample_round_clients
from fedconv_jax.core.spec import RoundSpec
from fedconv_jax.core.types import PRNGKey

POLICIES = {"heterofl": "nested", "fedrolex": "rolling", "feddropout": "random"}


def init_slice_state(cfg: RoundSpec, key: PRNGKey) -> BaselineState:
    k_model, k_round = split_init_keys(key)
    return BaselineState(
        global_vars=cfg.model.init(k_model, 1.0), client_vars=(), round=jnp.zeros((), jnp.int32), key=k_round
    )


def tier_indices(
    cfg: RoundSpec, policy: str, state: BaselineState, tier: int
) -> tuple[jax.Array, ...]:
    """Per unit, the (capacity, k_u) channel indices of a tier's clients this round."""
    full = jax.eval_shape(lambda: cfg.model.init(jax.random.key(0), 1.0))
    ratio, capacity = cfg.tier_ratios[tier], cfg.tier_capacity[tier]
    sub = jax.eval_shape(lambda: cfg.model.init(jax.random.key(0), ratio))
    widths, kept = slicing.unit_widths(full), slicing.kept_widths(full, sub)
    if policy == "nested" or ratio == 1.0:
        return slicing.nested_indices(widths, kept, capacity)
    if policy == "rolling":
        return slicing.rolling_indices(widths, kept, capacity, state.round)
    if policy == "random":
        return slicing.random_indices(widths, kept, client_keys(phase_key(state, "slices"), cfg, tier))
    raise ValueError(f"slice policy={policy!r} is not known; allowed: nested, rolling, random")


def make_slice_round_fn(cfg: RoundSpec, algorithm: str, pretrain: bool = False) -> Callable:
    policy = POLICIES[algorithm]
    rules = slicing.channel_rules(jax.eval_shape(lambda: cfg.model.init(jax.random.key(0), 1.0)))

    def round_fn(state: BaselineState, data: RoundData, hparams: HParams):
        data = sample_round_clients(state.key, state.round, data, hparams)
        state = state.replace(global_vars=pretrain_on_server(cfg, 1.0, state, data, hparams, pretrain))
        key = phase_key(state, "clients")
        sent, trained, indices, accuracy = [], [], [], []
        for t, ratio in enumerate(cfg.tier_ratios):
            idx = tier_indices(cfg, policy, state, t)
            start = jax.vmap(lambda i: slicing.gather(state.global_vars, rules, i))(idx)
            out, acc = train_tier(cfg, ratio, start, data, t, client_keys(key, cfg, t), hparams["local_lr"])
            sent.append(start)
            trained.append(out)
            indices.append(idx)
            accuracy.append(acc)
        trained, participating, screen_metrics = screen_tiers(state, data, hparams, sent, trained)
        tiers = [(out, idx, keep.astype(jnp.float32)) for out, idx, keep in zip(trained, indices, participating)]
        new = slicing.aggregate_slices(state.global_vars, rules, tiers)
        metrics = {**client_metrics(data, accuracy), **screen_metrics, **global_metrics(cfg, 1.0, new, data)}
        return state.replace(global_vars=new, round=state.round + 1), metrics

    return round_fn


def _slices(algorithm: str, spec: RoundSpec, pretrain: bool = False) -> FederatedAlgorithm:
    return baseline(
        algorithm, spec, functools.partial(init_slice_state, spec), make_slice_round_fn(spec, algorithm, pretrain),
        lambda s: s,
    )


for _name in POLICIES:
    register(_name, options=pretrain_option)(functools.partial(_slices, _name))
