"""Channel-slice baselines (SPEC §7): HeteroFL, FedRolex and Federated Dropout.

A client of ratio s trains the global model restricted to k_u = floor(s * C_u) channels of
every width unit (`slicing.py` gives the rules); the server averages every element over the
clients that hold it (plain counts, as in HeteroFL), and elements nobody holds keep their
value. The three differ only in which channels a client gets:
  - heterofl:   the first k_u channels, every round (nested, static);
  - fedrolex:   channels (arange(k_u) + round) % C_u, rolled by one per round;
  - feddropout: k_u random channels per client and round, keyed by (seed, round, client).
SR 1 clients always train the whole model. The index vectors are computed inside the
compiled round from `state.round` and keys, so the rolling and random variants never recompile.
"""

import functools

import jax
import jax.numpy as jnp

from fedconv_jax.algorithms import slicing
from fedconv_jax.algorithms.common import (
    BaselineState,
    baseline,
    client_keys,
    pretrain_option,
    pretrain_step,
    split_init_keys,
)
from fedconv_jax.core.algorithm import FederatedAlgorithm, HParams, register
from fedconv_jax.core.data import RoundData
from fedconv_jax.core.skeleton import RoundSteps, global_evaluation, round_key
from fedconv_jax.core.spec import RoundSpec
from fedconv_jax.core.types import PRNGKey
from fedconv_jax.models import kept_widths

POLICIES = {"heterofl": "nested", "fedrolex": "rolling", "feddropout": "random"}


def init_slice_state(cfg: RoundSpec, key: PRNGKey) -> BaselineState:
    k_model, k_round = split_init_keys(key)
    return BaselineState(
        global_vars=cfg.model.init(k_model, 1.0), client_vars=(), round=jnp.zeros((), jnp.int32), key=k_round
    )


def tier_indices(cfg: RoundSpec, policy: str, state: BaselineState, tier: int) -> dict[str, jax.Array]:
    """Per width unit, the (capacity, k_u) channel indices of a tier's clients this round."""
    ratio, capacity = cfg.tier_ratios[tier], cfg.tier_capacity[tier]
    widths = cfg.model.unit_widths(1.0)
    kept = kept_widths(widths, cfg.model.unit_widths(ratio))
    if policy == "nested" or ratio == 1.0:
        return slicing.nested_indices(widths, kept, capacity)
    if policy == "rolling":
        return slicing.rolling_indices(widths, kept, capacity, state.round)
    if policy == "random":
        return slicing.random_indices(widths, kept, client_keys(round_key(state, "slices"), cfg, tier))
    raise ValueError(f"slice policy={policy!r} is not known; allowed: nested, rolling, random")


def slice_steps(cfg: RoundSpec, algorithm: str, pretrain: bool = False) -> RoundSteps:
    policy = POLICIES[algorithm]
    rules = slicing.channel_rules(cfg.model)

    def send(state: BaselineState, data: RoundData, hparams: HParams):
        """Each client slot gets its own slice of the global model."""
        del data, hparams
        sent = tuple(
            jax.vmap(lambda i: slicing.gather(state.global_vars, rules, i))(tier_indices(cfg, policy, state, t))
            for t in range(len(cfg.tier_ratios))
        )
        return state, sent, {}

    def aggregate(state: BaselineState, data: RoundData, hparams: HParams, uploads):
        """Every element averaged over the participants that hold it (the same indices as
        `send`: they are a function of the state and the tier)."""
        del hparams
        tiers = [
            (out, tier_indices(cfg, policy, state, t), data.client_mask[t].astype(jnp.float32))
            for t, out in enumerate(uploads)
        ]
        return state.replace(global_vars=slicing.aggregate_slices(state.global_vars, rules, tiers)), None, {}

    return RoundSteps(
        send=send,
        server=(("aggregate", aggregate),),
        evaluate=global_evaluation(cfg, 1.0),
        trained_ratio=lambda s: s,
        prepare=pretrain_step(cfg, 1.0, pretrain),
        per_client_start=True,
    )


def _slices(algorithm: str, spec: RoundSpec, pretrain: bool = False) -> FederatedAlgorithm:
    return baseline(
        algorithm, spec, functools.partial(init_slice_state, spec), slice_steps(spec, algorithm, pretrain)
    )


for _name in POLICIES:
    register(_name, options=pretrain_option)(functools.partial(_slices, _name))
