"""Baselines (SPEC §7) as round functions of the same kind as FedConv's `make_round_fn`.

Each is a pure `(state, data) -> (state, metrics)` over the same `RoundConfig` and
`RoundData`, jitted once by the run loop with the state donated.
"""

from collections.abc import Callable

from fedconv_jax.baselines.alone import (
    init_serveralone_state,
    init_standalone_state,
    make_serveralone_round_fn,
    make_standalone_round_fn,
)
from fedconv_jax.baselines.common import BaselineState
from fedconv_jax.baselines.fedavg import (
    fedavg_ratio,
    init_fedavg_state,
    make_fedavg_round_fn,
)
from fedconv_jax.baselines.heterofl import (
    POLICIES,
    init_slice_state,
    make_slice_round_fn,
)
from fedconv_jax.round import RoundConfig
from fedconv_jax.types import PRNGKey

BASELINES = ("fedavg_small", "fedavg_full", "heterofl", "fedrolex", "feddropout", "standalone", "serveralone")


def _check(algorithm: str) -> None:
    if algorithm not in BASELINES:
        raise ValueError(f"algorithm={algorithm!r} is not a baseline; allowed: {', '.join(BASELINES)}")


def init_baseline_state(algorithm: str, cfg: RoundConfig, key: PRNGKey) -> BaselineState:
    """The initial state of a baseline; same model init as FedConv for the same key."""
    _check(algorithm)
    if algorithm.startswith("fedavg_"):
        return init_fedavg_state(cfg, key, algorithm.removeprefix("fedavg_"))
    if algorithm in POLICIES:
        return init_slice_state(cfg, key)
    if algorithm == "standalone":
        return init_standalone_state(cfg, key)
    return init_serveralone_state(cfg, key)


def make_baseline_round_fn(algorithm: str, cfg: RoundConfig, pretrain: bool = False) -> Callable:
    """The baseline's whole round as one pure function; jit it once (state donated).

    Args:
      pretrain: pre-train the global model on D in round 1 as FedConv does (fedavg_*,
        heterofl, fedrolex, feddropout; standalone has no global model and serveralone
        trains on D anyway).
    """
    _check(algorithm)
    if algorithm.startswith("fedavg_"):
        return make_fedavg_round_fn(cfg, algorithm.removeprefix("fedavg_"), pretrain)
    if algorithm in POLICIES:
        return make_slice_round_fn(cfg, algorithm, pretrain)
    if algorithm == "standalone":
        return make_standalone_round_fn(cfg)
    return make_serveralone_round_fn(cfg)


__all__ = [
    "BASELINES",
    "BaselineState",
    "fedavg_ratio",
    "init_baseline_state",
    "make_baseline_round_fn",
]
