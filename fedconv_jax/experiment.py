"""From a validated config to a finished run: build, compile once, loop rounds, log rows."""

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from fedconv_jax.config import make_round_config
from fedconv_jax.data import load_dataset, split_federated
from fedconv_jax.device_data import group_tiers, make_round_data
from fedconv_jax.metrics import CompileCounter, MetricsWriter, params_digest, round_row
from fedconv_jax.round import (
    PHASES,
    RoundConfig,
    RoundData,
    ServerState,
    init_server_state,
    make_phases,
    make_round_fn,
)
from fedconv_jax.sharding import (
    jit_round,
    make_client_mesh,
    padded_capacity,
    shard_round_inputs,
)


@dataclasses.dataclass
class Experiment:
    config: ml_collections.ConfigDict
    round_config: RoundConfig
    data: RoundData
    state: ServerState
    tier_members: tuple[tuple[int, ...], ...]


def build_experiment(config: ml_collections.ConfigDict) -> Experiment:
    """Loads and splits the data, uploads it once, and initialises the server state."""
    dataset = load_dataset(config.dataset)
    split = split_federated(
        dataset.labels, config.num_clients, config.alpha, config.seed, tuple(config.split_fractions)
    )
    ratios, members = group_tiers(config.shrink_ratios)
    capacity = tuple(padded_capacity(len(m), config.devices) for m in members)
    round_config = make_round_config(config, ratios, capacity, dataset.num_classes, dataset.images.shape[1:])
    data = make_round_data(
        dataset, split, members, batch_size=config.batch_size,
        holdout_fraction=config.holdout_fraction, seed=config.seed, tier_capacity=capacity,
    )
    state = init_server_state(round_config, jax.random.key(config.seed))
    state, data = shard_round_inputs(make_client_mesh(config.devices), state, data)
    return Experiment(config, round_config, data, state, members)


def time_phases(round_config: RoundConfig, state: ServerState, data: RoundData) -> dict[str, float]:
    """Seconds per phase of one round, each phase its own jitted program (compile excluded).

    The state is not donated, so the caller can still run the fused round on it.
    """
    phases = make_phases(round_config)
    seconds = {}

    def timed(name: str, *args):
        compiled = jax.jit(phases[name]).lower(*args).compile()
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        seconds[name] = time.perf_counter() - start
        return out

    state = timed("pretrain", state, data)
    state, subs, _ = timed("compress", state, data)
    trained, _ = timed("clients", state, data, subs)
    state, dilated, _ = timed("dilate", state, data, trained)
    state, _ = timed("aggregate", state, data, dilated)
    timed("evaluate", state, data)
    return {name: seconds[name] for name in PHASES}


def run_experiment(
    config: ml_collections.ConfigDict,
    workdir: Path,
    progress: bool = True,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Runs `config.rounds` rounds, writing workdir/metrics.jsonl; returns the rows."""
    exp = build_experiment(config)  # data-level refusals happen before anything is written
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=list))
    counter = CompileCounter()
    round_fn = jit_round(make_round_fn(exp.round_config), make_client_mesh(config.devices), exp.state, exp.data)

    phase_seconds = None
    if config.phase_timing:
        phase_seconds = time_phases(exp.round_config, exp.state, exp.data)

    with counter.counting():
        start = time.perf_counter()
        compiled = round_fn.lower(exp.state, exp.data).compile()
        compile_seconds = time.perf_counter() - start

    client_masks = tuple(np.asarray(m) for m in exp.data.client_mask)
    rows, state = [], exp.state
    writer = MetricsWriter(workdir / "metrics.jsonl")
    bar = tqdm(range(1, config.rounds + 1), desc="rounds", unit="round", disable=not progress)
    try:
        for r in bar:
            with counter.counting():
                start = time.perf_counter()
                state, device_metrics = compiled(state, exp.data)
                device_metrics = jax.block_until_ready(device_metrics)
                seconds = time.perf_counter() - start
            phases = None
            if phase_seconds is not None:
                phases = dict(phase_seconds)
                if r > 1 and not config.pretrain_every_round:
                    phases["pretrain"] = 0.0  # the fused program skips it after round 1
            row = round_row(
                round_index=r, algorithm=config.algorithm, device_metrics=device_metrics,
                tier_ratios=exp.round_config.tier_ratios, client_masks=client_masks,
                seconds=seconds, phase_seconds=phases, compiles=counter.count,
                digest=params_digest(state),
            )
            row["compile_seconds"] = compile_seconds
            row["phase_seconds_source"] = "phase-separated run of round 1, compile excluded" if phases else None
            writer.write(row)
            rows.append(row)
            if on_row is not None:
                on_row(row)
            bar.set_postfix(
                global_acc=f"{row['global_accuracy']:.3f}",
                client_acc=f"{row['client_accuracy'] or 0:.3f}",
            )
    finally:
        writer.close()
        bar.close()
    return rows
