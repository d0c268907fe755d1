"""From a validated config to a finished run: build, compile once, loop rounds, log rows."""

import dataclasses
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from fedconv_jax import checkpointing
from fedconv_jax.config import ConfigError, data_seed, make_hparams, make_round_spec
from fedconv_jax.core.algorithm import (
    FederatedAlgorithm,
    HParams,
    State,
    make_algorithm,
)
from fedconv_jax.core.data import RoundData
from fedconv_jax.core.sharding import (
    data_shardings,
    jit_round,
    make_client_mesh,
    padded_capacity,
    place,
    replicated,
    state_shardings,
    xla_compiler_options,
)
from fedconv_jax.core.spec import RoundSpec
from fedconv_jax.costs import client_costs, server_examples
from fedconv_jax.data import (
    Dataset,
    FederatedSplit,
    fit_images,
    load_dataset,
    split_federated,
    split_natural,
)
from fedconv_jax.device_data import group_tiers, make_round_data
from fedconv_jax.distributed import host_copy, is_primary
from fedconv_jax.metrics import CompileCounter, MetricsWriter, params_digest, round_row


@dataclasses.dataclass
class Experiment:
    """A built run: the config, its algorithm (with its spec), device data, initial state and
    traced hyper-parameters."""

    config: ml_collections.ConfigDict
    algorithm: FederatedAlgorithm
    data: RoundData
    state: State
    tier_members: tuple[tuple[int, ...], ...]
    hparams: HParams

    @property
    def spec(self) -> RoundSpec:
        return self.algorithm.spec


@functools.lru_cache(maxsize=32)
def _jitted_init(algorithm: FederatedAlgorithm) -> Callable:
    # One program, not an eager dispatch (and compile) per init op: about as slow the first
    # time, but the persistent compilation cache then serves every later run of the config.
    return jax.jit(lambda seed: algorithm.init(jax.random.key(seed)))


def initial_state(algorithm: FederatedAlgorithm, seed: int) -> State:
    """The algorithm's initial state for `seed`, built by one jitted program."""
    return _jitted_init(algorithm)(np.int32(seed))


def federated_split(config: ml_collections.ConfigDict, dataset: Dataset) -> FederatedSplit:
    """The config's client partition of `dataset` (ValueError, one line, if it cannot be made)."""
    fractions = tuple(config.split_fractions)
    if config.partition == "natural":
        if dataset.groups is None:
            raise ConfigError(
                "partition", "natural", f"a partition of {dataset.name}, which has no users (natural: e.g. tfds:hapt)"
            )
        return split_natural(dataset.labels, dataset.groups, config.num_clients, data_seed(config), fractions)
    return split_federated(
        dataset.labels, config.num_clients, config.alpha, data_seed(config), fractions,
        partition=config.partition, shards_per_client=config.shards_per_client,
    )


def build_experiment(
    config: ml_collections.ConfigDict,
    abstract_state: bool = False,
    dataset: Dataset | None = None,
    slot_multiple: int | None = None,
) -> Experiment:
    """Loads and splits the data, uploads it once, and initialises the server state.

    With `abstract_state`, the state is only its shapes (`jax.eval_shape`): enough to restore
    a checkpoint into, without paying for the initialisation. `dataset` replaces the config's
    data set (benchmarks on in-memory data). Every tier gets empty slots up to a multiple of
    `slot_multiple` (default `config.devices`, so each device holds whole slots).
    """
    if dataset is None:
        dataset = load_dataset(config.dataset, config.data_dir or None)
    dataset = fit_images(dataset, config.image_size, config.channels)
    split = federated_split(config, dataset)
    ratios, members = group_tiers(config.shrink_ratios)
    capacity = tuple(padded_capacity(len(m), slot_multiple or config.devices) for m in members)
    spec = make_round_spec(config, ratios, capacity, dataset.num_classes, dataset.images.shape[1:])
    problem = spec.model.input_problem()
    if problem:
        raise ConfigError("model", config.model, f"a family that fits the data ({problem}; see config.image_size / channels)")
    algorithm = make_algorithm(config.algorithm, spec, config)
    data = make_round_data(
        dataset, split, members, batch_size=config.batch_size,
        holdout_fraction=config.holdout_fraction, seed=data_seed(config), tier_capacity=capacity,
        poisoned_clients=config.poisoned_clients, poison_mode=config.poison_mode,
    )
    init = functools.partial(initial_state, algorithm, config.seed)
    state = jax.eval_shape(init) if abstract_state else init()
    # Laid out on the client mesh (1 device included), so round 2 sees round 1's input layout.
    mesh = make_client_mesh(config.devices)
    data = jax.device_put(data, data_shardings(mesh, data))
    if not abstract_state:
        state = place(state, state_shardings(mesh, state, algorithm.per_client_fields))
    hparams = make_hparams(config)
    hparams = jax.device_put(hparams, replicated(mesh, hparams))
    return Experiment(config, algorithm, data, state, members, hparams)


def round_program(exp: Experiment) -> tuple[Callable, tuple]:
    """The run's round function, jitted as the run loop jits it (state donated, layouts
    pinned), and the inputs it is called with."""
    mesh = make_client_mesh(exp.config.devices)
    options = xla_compiler_options(exp.config.xla_opt_level)
    round_fn = jit_round(exp.algorithm, mesh, exp.state, exp.data, exp.hparams, compiler_options=options)
    return round_fn, (exp.state, exp.data, exp.hparams)


def time_phases(
    algorithm: FederatedAlgorithm, state: State, data: RoundData, hparams: HParams, compiler_options=None
) -> tuple[dict[str, float], State]:
    """Seconds per phase of one round, each phase its own jitted program (compile excluded),
    and the state after the round (the fused round's result, up to summation order).

    Runs the algorithm's own phase chain (`phased_round`) with a timing hook. The state is
    not donated, so the caller can still run the fused round on it.
    """
    if algorithm.phased_round is None:
        raise ValueError(f"algorithm {algorithm.name!r} has no phases to time")
    seconds = {}

    def timed(name: str, fn, *args):
        compiled = jax.jit(fn, compiler_options=compiler_options).lower(*args).compile()
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        seconds[name] = time.perf_counter() - start
        return out

    state, _ = algorithm.phased_round(timed)(state, data, hparams)
    return seconds, state


def _prepare_workdir(
    exp: Experiment, workdir: Path, resume: bool, warn: Callable[[str], None]
) -> tuple[State, list[int]]:
    """Resume guards; returns the state to start from and unusable checkpoint steps.

    Read-only: every refusal happens before anything is written to the workdir.
    """
    config = exp.config
    if not resume:
        found = checkpointing.existing_run_files(workdir)
        if found:
            raise checkpointing.CheckpointError(
                f"{workdir} already holds a run ({', '.join(found)}): pass --resume to continue it, or use a new --workdir"
            )
        return exp.state, []
    latest = checkpointing.find_latest(workdir, exp.state, warn)
    if latest is None:
        warn(f"--resume: no complete checkpoint in {checkpointing.checkpoint_dir(workdir)}; starting at round 1")
        return initial_state(exp.algorithm, config.seed), []
    state, meta, bad = latest
    checkpointing.check_config_change(
        meta["config"], checkpointing.jsonable_config(config), config.allow_config_change
    )
    if meta["data_digest"] != checkpointing.data_digest(exp.data):
        raise checkpointing.CheckpointError(
            f"--resume refused: the data set or its split differs from the checkpoint's (round {meta['round']})"
        )
    warn(f"resuming from the checkpoint of round {meta['round']}")
    return state, bad


def _silent(message: str) -> None:
    del message


def run_experiment(
    config: ml_collections.ConfigDict,
    workdir: Path,
    progress: bool = True,
    on_row: Callable[[dict], None] | None = None,
    resume: bool = False,
    warn: Callable[[str], None] = checkpointing.stderr_warn,
) -> list[dict]:
    """Runs rounds up to `config.rounds`, writing workdir/metrics.jsonl; returns this call's rows.

    With `resume`, continues from the newest intact checkpoint in `workdir/checkpoints`
    (rows of later rounds are dropped from metrics.jsonl and recomputed, so every round
    appears once). Without it, a workdir that already holds a run is refused.
    """
    primary = is_primary()  # with several processes, only process 0 writes files and shows progress
    if not primary:
        warn = _silent
    exp = build_experiment(config, abstract_state=resume)  # data refusals come before any write
    workdir = Path(workdir)
    state, bad_steps = _prepare_workdir(exp, workdir, resume, warn)
    start_round = int(state.round)
    if primary:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=list))
        checkpointing.truncate_metrics(workdir / "metrics.jsonl", start_round, warn)
    saver = None
    if config.checkpoint_every > 0:
        saver = checkpointing.Checkpointer(workdir, config.keep_checkpoints)
        for step in bad_steps:  # or a later save of that round would be silently skipped
            saver.delete(step)
    meta = {
        "config": checkpointing.jsonable_config(config),
        "partition_seed": data_seed(config),
        "data_digest": checkpointing.data_digest(exp.data),
    }
    counter = CompileCounter()
    mesh = make_client_mesh(config.devices)
    round_fn, _ = round_program(exp)
    # a restored state arrives unplaced
    state = place(state, state_shardings(mesh, state, exp.algorithm.per_client_fields))

    # Compiles can take minutes for the big families before the progress bar starts: say so.
    say = functools.partial(print, file=sys.stderr, flush=True) if progress and primary else _silent
    costs = None
    if config.client_costs:
        say("fedconv-jax: compiling one client step per width for client_costs ...")
        samples = list(host_copy(exp.data.num_samples))
        costs = client_costs(exp.algorithm, samples, server_examples(exp.data))

    phase_seconds = None
    if config.phase_timing and exp.algorithm.phased_round is not None and start_round < config.rounds:
        options = xla_compiler_options(config.xla_opt_level)
        say("fedconv-jax: timing each phase of one round in its own program (phase_timing) ...")
        phase_seconds, _ = time_phases(exp.algorithm, state, exp.data, exp.hparams, options)

    say(f"fedconv-jax: compiling the round program ({config.algorithm}, {config.model}) ...")
    with counter.counting():
        start = time.perf_counter()
        compiled = round_fn.lower(state, exp.data, exp.hparams).compile()
        compile_seconds = time.perf_counter() - start
    say(f"fedconv-jax: compiled in {compile_seconds:.1f} s")

    client_masks = tuple(host_copy(exp.data.client_mask))
    rows = []
    writer = MetricsWriter(workdir / "metrics.jsonl") if primary else None
    rounds = range(start_round + 1, config.rounds + 1)
    bar = tqdm(
        rounds, desc="rounds", unit="round", disable=not (progress and primary), initial=start_round, total=config.rounds
    )
    try:
        for r in bar:
            with counter.counting():
                start = time.perf_counter()
                state, device_metrics = compiled(state, exp.data, exp.hparams)
                device_metrics = jax.block_until_ready(device_metrics)
                seconds = time.perf_counter() - start
            phases = None
            if phase_seconds is not None:
                phases = dict(phase_seconds)
                if r > 1 and "pretrain" in phases and not config.pretrain_every_round:
                    phases["pretrain"] = 0.0  # the fused program skips it after round 1
            row = round_row(
                round_index=r, algorithm=config.algorithm, device_metrics=device_metrics,
                tier_ratios=exp.spec.tier_ratios, client_masks=client_masks,
                seconds=seconds, phase_seconds=phases, compiles=counter.count,
                digest=params_digest(exp.algorithm.digest(state)),
            )
            row["compile_seconds"] = compile_seconds
            row["client_costs"] = costs
            row["phase_seconds_source"] = (
                f"phase-separated run of round {start_round + 1}, compile excluded" if phases else None
            )
            if writer is not None:
                writer.write(row)
            rows.append(row)
            if saver is not None and (r % config.checkpoint_every == 0 or r == config.rounds):
                saver.save(state, meta)  # after the row: a checkpoint never runs ahead of metrics
            if on_row is not None:
                on_row(row)
            bar.set_postfix(
                global_acc=f"{row['global_accuracy']:.3f}",
                client_acc=f"{row['client_accuracy'] or 0:.3f}",
            )
    finally:
        if writer is not None:
            writer.close()
        bar.close()
        if saver is not None:
            saver.close()
    return rows
