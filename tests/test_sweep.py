"""`fedconv-jax sweep`: 6 runs (3 learning rates x 2 seeds) in one program equal 6 separate runs."""

import json
from pathlib import Path

import jax
import pytest
from test_round import tiny_config

from fedconv_jax.cli import main
from fedconv_jax.config import ConfigError
from fedconv_jax.experiment import build_experiment
from fedconv_jax.metrics import params_digest
from fedconv_jax.sweep import parse_sweep, run_sweep, sweep_runs

ROUNDS = 2
SWEEP = {"local_lr": "1e-3,3e-3,1e-2", "seed": "0,1"}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    base = tiny_config()
    # Any algorithm's round is swept the same way; heterofl's compiles in a fraction of
    # FedConv's (a sweep of FedConv is benchmarks/sweep.py's).
    base.algorithm, base.rounds, base.client_costs = "heterofl", ROUNDS, False
    sweep = parse_sweep(base, SWEEP)
    workdir = tmp_path_factory.mktemp("sweep")
    summaries = run_sweep(base, sweep, workdir, progress=False)
    return base, sweep, workdir, summaries


def test_six_runs_in_one_program_equal_six_separate_runs(swept):
    base, sweep, workdir, summaries = swept
    runs = sweep_runs(base, sweep)
    assert [r.name for r in runs] == [
        f"local_lr={lr},seed={s}" for lr in ("0.001", "0.003", "0.01") for s in (0, 1)
    ]
    for run in runs:
        rows = [json.loads(line) for line in (workdir / run.name / "metrics.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rows] == [1, 2] and all(r["sweep_runs"] == 6 for r in rows)
        exp = build_experiment(run.config)  # what `fedconv-jax run` with the run's config.json builds
        assert json.loads((workdir / run.name / "config.json").read_text())["local_lr"] == run.config.local_lr
        round_fn = jax.jit(exp.algorithm.round)
        state = exp.state
        for row in rows:
            state, metrics = round_fn(state, exp.data, exp.hparams)
            assert row["global_accuracy"] == pytest.approx(float(metrics["global_accuracy"]), abs=1e-6)
        # lax.map runs each run's round as the same computation: bit-identical parameters.
        assert params_digest(exp.algorithm.digest(state)) == rows[-1]["global_params_digest"], run.name
    # The six runs are six different models: every swept value reached the round.
    assert len({s["final_digest"] for s in summaries}) == 6


def test_the_sweep_compiles_one_round_program(swept):
    """Every row's `compiles` counts the XLA compilations of the sweep's rounds so far."""
    _, _, workdir, summaries = swept
    for s in summaries:
        rows = [json.loads(line) for line in (workdir / s["run"] / "metrics.jsonl").read_text().splitlines()]
        assert [r["compiles"] for r in rows] == [1, 1]


def test_summary_files(swept):
    _, _, workdir, summaries = swept
    assert (workdir / "curves.png").stat().st_size > 0
    md = (workdir / "summary.md").read_text()
    assert md.count("\n| 0.01 |") == 2 and "6 runs in one program" in md
    header = (workdir / "summary.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["run", "local_lr", "seed"] and len(summaries) == 6


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--sweep.num_clients=2,3", "--sweep.num_clients='2,3' is not allowed: a field this algorithm's round takes"),
        ("--sweep.local_lr=1e-3,abc", "--sweep.local_lr='abc' is not allowed: a value of type float"),
        ("--sweep.local_lr=1e-3,-1", "--sweep.local_lr=-1.0 is not allowed: a finite number in (0.0, 10.0]"),
        ("--sweep.local_lr=1e-3,1e-3", "distinct values"),
        ("--sweep.filter_lr=1e-3,2e-3", "--sweep.filter_lr"),  # fedavg_full has no filters
    ],
)
def test_bad_sweeps_exit_2_with_one_line(tmp_path, capsys, flag, message):
    algorithm = "fedavg_full" if "filter_lr" in flag else "fedconv"
    config = tmp_path / "c.py"
    tests = str(Path(__file__).parent)
    config.write_text(
        f"import sys\nsys.path.insert(0, {tests!r})\nfrom test_round import tiny_config\n"
        f"def get_config():\n    c = tiny_config()\n    c.algorithm = {algorithm!r}\n    return c\n"
    )
    code = main(["sweep", "--config", str(config), "--workdir", str(tmp_path / "w"), flag])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert message in err, err
    assert not (tmp_path / "w").exists()


def test_a_sweep_needs_a_field():
    with pytest.raises(ConfigError, match="at least one --sweep"):
        parse_sweep(tiny_config(), {})
