"""`fedconv-jax sweep`: K runs that differ only in traced hyper-parameters and seeds, as ONE
compiled program with a leading run axis.

Hyper-parameters are inputs of the round (not constants), and a seed only changes the initial
state and the random streams, so runs that differ in nothing else share the spec, the data
and hence the program: the sweep stacks their states and hyper-parameters along a run axis
and maps the round over it (`lax.map` by default, `vmap` on request). Every run writes the
rows a separate `fedconv-jax run` of its config would write (WORKDIR/<run>/metrics.jsonl and
config.json), and the sweep writes summary.csv, summary.md and curves.png.

The data split is pinned to the base config's (`data_seed`), so every run's config.json,
given to `fedconv-jax run`, reproduces that run.
"""

import copy
import csv
import dataclasses
import itertools
import json
import math
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from fedconv_jax import checkpointing
from fedconv_jax.compare import read_rows
from fedconv_jax.config import (
    ConfigError,
    apply_overrides,
    data_seed,
    make_hparams,
    validate,
)
from fedconv_jax.core.algorithm import FederatedAlgorithm, algorithm_entry
from fedconv_jax.core.sharding import xla_compiler_options
from fedconv_jax.costs import client_costs, server_examples
from fedconv_jax.experiment import build_experiment, initial_state
from fedconv_jax.metrics import CompileCounter, MetricsWriter, params_digest, round_row

RUN_AXES = ("map", "vmap")
MAX_RUNS = 4096


@dataclasses.dataclass(frozen=True)
class SweepRun:
    name: str  # directory name, e.g. "local_lr=0.003,seed=1"
    values: dict  # the swept fields' values
    config: ml_collections.ConfigDict


def sweepable_fields(algorithm: str) -> tuple[str, ...]:
    """What a sweep may vary for `algorithm`: its traced hyper-parameters, and the seed."""
    return (*algorithm_entry(algorithm).hparams, "seed")


def parse_sweep(base: ml_collections.ConfigDict, texts: dict[str, str]) -> dict[str, tuple]:
    """`--sweep.<field>=v1,v2,...` -> {field: (v1, v2, ...)}, typed like the config field."""
    if not texts:
        raise ConfigError("sweep", "", "at least one --sweep.<field>=v1,v2,... (fields: "
                          + ", ".join(sweepable_fields(base.algorithm)) + ")")
    allowed = sweepable_fields(base.algorithm)
    sweep = {}
    for field, text in texts.items():
        if field not in allowed:
            raise ConfigError(f"sweep.{field}", text, f"a field this algorithm's round takes as an input: {', '.join(allowed)}")
        parts = [p.strip() for p in text.split(",")]
        if not parts or any(not p for p in parts):
            raise ConfigError(f"sweep.{field}", text, "a comma-separated list of values")
        values = []
        for part in parts:
            probe = copy.deepcopy(base)  # keeps aliases tied to their fields
            try:
                apply_overrides(probe, {field: part})
            except ConfigError:
                raise ConfigError(f"sweep.{field}", part, f"a value of type {type(base[field]).__name__}") from None
            values.append(probe[field])
        if len(set(values)) != len(values):
            raise ConfigError(f"sweep.{field}", text, "distinct values")
        sweep[field] = tuple(values)
    return sweep


def sweep_runs(base: ml_collections.ConfigDict, sweep: dict[str, tuple]) -> list[SweepRun]:
    """Every combination, in the order given; each config validated like a single run's."""
    count = math.prod(len(v) for v in sweep.values())
    if count > MAX_RUNS:
        raise ConfigError("sweep", f"{count} runs", f"at most {MAX_RUNS} combinations")
    runs = []
    for combo in itertools.product(*sweep.values()):
        values = dict(zip(sweep, combo))
        config = copy.deepcopy(base)  # keeps aliases tied to their fields
        config.data_seed = data_seed(base)  # one split for all runs: they share the data
        for field, value in values.items():
            config[field] = value
        try:
            validate(config)
        except ConfigError as err:
            raise ConfigError(f"sweep.{err.field}", config[err.field], str(err).split(" is not allowed: ")[-1]) from None
        name = ",".join(f"{field}={value:g}" if isinstance(value, float) else f"{field}={value}" for field, value in values.items())
        runs.append(SweepRun(name, values, config))
    return runs


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _unstack(tree, i: int):
    return jax.tree.map(lambda x: x[i], tree)


def make_sweep_round(algorithm: FederatedAlgorithm, run_axis: str = "map"):
    """(states, data, hparams) -> (states, metrics), every leaf of states, hparams and
    metrics with a leading run axis; `data` is shared."""
    if run_axis not in RUN_AXES:
        raise ValueError(f"run_axis={run_axis!r} is not known; allowed: {', '.join(RUN_AXES)}")

    def sweep_round(states, data, hparams):
        if run_axis == "vmap":
            return jax.vmap(algorithm.round, in_axes=(0, None, 0))(states, data, hparams)
        return jax.lax.map(lambda run: algorithm.round(run[0], data, run[1]), (states, hparams))

    return sweep_round


def run_sweep(
    base: ml_collections.ConfigDict,
    sweep: dict[str, tuple],
    workdir: Path,
    run_axis: str = "map",
    progress: bool = True,
) -> list[dict]:
    """Runs every combination of `sweep` in one compiled program; returns one summary per run."""
    runs = sweep_runs(base, sweep)
    if base.devices != 1:
        raise ConfigError("devices", base.devices, "1 with sweep (runs are mapped on one device)")
    workdir = Path(workdir)
    found = [f for run in runs for f in checkpointing.existing_run_files(workdir / run.name)]
    if found or (workdir / "summary.csv").exists():
        raise checkpointing.CheckpointError(f"{workdir} already holds a sweep ({(found or ['summary.csv'])[0]}): use a new --workdir")
    exp = build_experiment(runs[0].config, abstract_state=True)  # data, spec, algorithm: shared
    algorithm = exp.algorithm
    states = _stack([initial_state(algorithm, run.config.seed) for run in runs])
    hparams = _stack([make_hparams(run.config) for run in runs])
    writers = []
    for run in runs:
        (workdir / run.name).mkdir(parents=True, exist_ok=True)
        (workdir / run.name / "config.json").write_text(json.dumps(run.config.to_dict(), indent=2, default=list))
        writers.append(MetricsWriter(workdir / run.name / "metrics.jsonl"))
    costs = (
        client_costs(algorithm, [np.asarray(n) for n in exp.data.num_samples], server_examples(exp.data))
        if base.client_costs else None
    )

    counter = CompileCounter()
    with counter.counting():
        start = time.perf_counter()
        options = xla_compiler_options(base.xla_opt_level)
        program = jax.jit(make_sweep_round(algorithm, run_axis), donate_argnums=0, compiler_options=options)
        compiled = program.lower(states, exp.data, hparams).compile()
        compile_seconds = time.perf_counter() - start
    client_masks = tuple(np.asarray(m) for m in exp.data.client_mask)
    bar = tqdm(range(1, base.rounds + 1), desc=f"sweep of {len(runs)}", unit="round", disable=not progress)
    try:
        for r in bar:
            with counter.counting():
                start = time.perf_counter()
                states, metrics = compiled(states, exp.data, hparams)
                metrics = jax.block_until_ready(metrics)
                seconds = time.perf_counter() - start
            metrics = jax.device_get(metrics)
            params = jax.device_get(algorithm.digest(states))  # one copy to the host, run axis leading
            for i, writer in enumerate(writers):
                row = round_row(
                    round_index=r, algorithm=base.algorithm, device_metrics=_unstack(metrics, i),
                    tier_ratios=exp.spec.tier_ratios, client_masks=client_masks, seconds=seconds,
                    phase_seconds=None, compiles=counter.count,
                    digest=params_digest(_unstack(params, i)),
                )
                row.update(compile_seconds=compile_seconds, client_costs=costs, sweep_runs=len(runs), run_axis=run_axis)
                writer.write(row)
            bar.set_postfix(best_global_acc=f"{np.nanmax(np.asarray(metrics['global_accuracy'])):.3f}")
    finally:
        bar.close()
        for writer in writers:
            writer.close()
    summaries = [summarize(run, read_rows(workdir / run.name)) for run in runs]
    write_summary(summaries, sweep, workdir)
    return summaries


def summarize(run: SweepRun, rows: list[dict]) -> dict:
    accuracies = [(r["global_accuracy"], r["round"]) for r in rows if not math.isnan(r["global_accuracy"])]
    best, best_round = max(accuracies, key=lambda x: (x[0], -x[1])) if accuracies else (None, None)
    last = rows[-1]
    return {
        "run": run.name, **run.values,
        "final_global_accuracy": None if math.isnan(last["global_accuracy"]) else last["global_accuracy"],
        "best_global_accuracy": best, "best_global_round": best_round,
        "final_client_accuracy": last["client_accuracy"],
        "seconds_per_round": statistics.median(r["seconds"] for r in rows),
        "compile_seconds": last["compile_seconds"],
        "final_digest": last["global_params_digest"],
    }


def write_summary(summaries: list[dict], sweep: dict[str, tuple], workdir: Path) -> None:
    """summary.csv, summary.md (one row per run) and curves.png (global accuracy per round)."""
    fields = list(summaries[0])
    with (workdir / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(summaries)

    def pct(x):
        return "–" if x is None else f"{100 * x:.2f}"

    lines = [
        f"# Sweep of {len(summaries)} runs in one program",
        "",
        "Accuracy in %. Seconds per round are the whole sweep's (all runs together).",
        "",
        "| " + " | ".join(sweep) + " | final global | best global (round) | final client |",
        "|" + "---|" * (len(sweep) + 3),
    ]
    for s in summaries:
        cells = [str(s[f]) for f in sweep]
        lines.append(
            "| " + " | ".join(cells) + f" | {pct(s['final_global_accuracy'])} | "
            f"{pct(s['best_global_accuracy'])} ({s['best_global_round']}) | {pct(s['final_client_accuracy'])} |"
        )
    lines += ["", f"{summaries[0]['seconds_per_round']:.3f} s per round for all runs; compile {summaries[0]['compile_seconds']:.1f} s."]
    (workdir / "summary.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for s in summaries:
        rows = read_rows(workdir / s["run"])
        points = [(r["round"], r["global_accuracy"]) for r in rows if not math.isnan(r["global_accuracy"])]
        if points:
            ax.plot(*zip(*points), label=s["run"], marker="." if len(points) < 30 else None)
    ax.set_xlabel("round")
    ax.set_ylabel("global accuracy")
    ax.grid(alpha=0.3)
    if len(summaries) <= 16:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(workdir / "curves.png", dpi=120)
    plt.close(fig)


__all__ = ["RUN_AXES", "make_sweep_round", "parse_sweep", "run_sweep", "sweep_runs", "sweepable_fields"]
