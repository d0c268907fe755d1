"""The command line as a new user meets it: the smoke run, and one-line errors for bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import OPT_LEVEL_FLAG

from fedconv_jax.cli import main
from fedconv_jax.config import ALIASES

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.py")


def _smoke_run(workdir: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    """The README's first command as a fresh install runs it (progress bar included), with
    XLA's default optimisation (conftest.py lowers it for the rest of the suite)."""
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "").replace(OPT_LEVEL_FLAG, "").strip()}
    return subprocess.run(
        [sys.executable, "-m", "fedconv_jax.cli", "run", "--config", SMOKE, "--workdir", str(workdir),
         "--compile-cache", str(cache), *extra],
        capture_output=True, text=True, env=env, timeout=900,  # a safety stop: a shared CI core can triple the ~2 min run
    )


def test_smoke_config_learns_compiles_once_and_reruns_from_the_cache(tmp_path):
    """The smoke run, then a rerun that must load its programs from the compilation cache.

    The cache is this test's own (not the test run's shared one), so the first run compiles
    everything and the second shows what a user's rerun gets. A missing dependency of JAX's
    cache (filelock) once made every read and write fail with a warning, and reruns compiled
    in full.
    """
    cache = tmp_path / "xla"
    first = _smoke_run(tmp_path / "smoke", cache)
    assert first.returncode == 0, first.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "smoke" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(1, 31))
    for row in rows:
        assert row["compiles"] == 1
        assert row["algorithm"] == "fedconv"
        assert set(row["tier_accuracy"]) == {"1", "0.75", "0.5"}
        assert row["phase_seconds"] is None  # the smoke config skips the phase-separated pass
        assert len(row["global_params_digest"]) == 64
        assert 0.0 <= row["global_accuracy"] <= 1.0
    assert rows[-1]["global_accuracy"] >= 0.85
    assert rows[-1]["client_accuracy"] >= 0.7
    assert len({r["global_params_digest"] for r in rows}) == 30
    assert any(cache.iterdir()), "the compilation cache stored nothing"

    second = _smoke_run(tmp_path / "rerun", cache, "--config.rounds=2")  # same programs
    assert second.returncode == 0, second.stderr[-2000:]
    rerun = [json.loads(line) for line in (tmp_path / "rerun" / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_params_digest"] for r in rerun] == [r["global_params_digest"] for r in rows[:2]]
    assert rerun[0]["compile_seconds"] < rows[0]["compile_seconds"] / 4, (rerun[0]["compile_seconds"], rows[0]["compile_seconds"])
    for proc in (first, second):
        output = proc.stdout + proc.stderr
        assert "warning" not in output.lower(), output[-2000:]
        assert "Traceback" not in output
        # Nothing but what is compiling, the progress bar (carriage-return updates on stderr)
        # and the result line.
        assert proc.stdout.strip().startswith("round "), proc.stdout
        lines = [line for line in proc.stderr.replace("\r", "\n").splitlines() if line.strip()]
        assert "fedconv-jax: compiling the round program (fedconv, cnn) ..." in lines, proc.stderr[-2000:]
        assert any(line.startswith("fedconv-jax: compiled in ") for line in lines), proc.stderr[-2000:]
        assert all(line.startswith(("rounds:", "fedconv-jax: compil")) for line in lines), proc.stderr[-2000:]


BAD = [
    ("shrink_ratios", "(1.0, 1.0, 1.0, 0.75, 0.75, 0.75, 0.75, 0.5, 0.5, 0.0)", "every SR in (0, 1]"),
    ("shrink_ratios", "(1.5, 1.0, 1.0, 0.75, 0.75, 0.75, 0.75, 0.5, 0.5, 0.5)", "every SR in (0, 1]"),
    ("shrink_ratios", "(1.0, 1.0, 1.0, 0.75, 0.75, 0.75, 0.75, 0.5, 0.5, 0.05)", "zero-width"),
    ("shrink_ratios", "(1.0, 0.5)", "one SR per client"),
    ("alpha", "0", "(0.0, inf)"),
    ("alpha", "-1.5", "(0.0, inf)"),
    ("rounds", "two", "type int"),
    ("no_such_field", "1", "not a config field"),
    ("model", "resnet", "one of cnn, cnn_bn"),
    ("filter_init", "zeros", "one of identity, random"),  # an alias: named as fedconv.filters.init
    ("fedconv.filters.hidden", "0", "an integer in [1, 4096]"),
    ("global_width", "0.05", "a multiplier that leaves every unit of cnn a channel"),
    ("fedconv.aggregation", "median", "one of learned, mean"),
    ("fedconv.aggregation_scope", "element", "one of all, holders"),
    ("client_chunk", "fast", '"auto" or an integer'),
    ("xla_opt_level", "4", '"auto" or an integer in [0, 3]'),
    ("xla_opt_level", "fast", '"auto" or an integer'),
    ("dataset", "mnist", "digits or tfds:<name>"),
    ("dataset", "tfds:", "digits or tfds:<name>"),
    ("partition", "pathological", "one of dirichlet, iid, shards"),
    ("shards_per_client", "0", "an integer in [1, "),
    # Checked on the loaded data, before anything compiles: digits are 8x8x1.
    ("model", "resnet18", "resnet18 takes 3-channel examples, the data's are 8x8x1"),
    ("model", "har_wiar", "har_wiar's strides and pools leave nothing of a 8x8x1 example"),
    ("image_size", "4", "at least the data's 8x8"),
    ("channels", "-1", "an integer in [0, 64]"),
    ("partition", "natural", "a partition of digits, which has no users"),
]


@pytest.mark.parametrize("field, value, allowed", BAD)
def test_bad_config_values_exit_2_with_one_line(tmp_path, capsys, field, value, allowed):
    workdir = tmp_path / "out"
    code = main(["run", "--config", SMOKE, "--workdir", str(workdir), f"--config.{field}={value}"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert f"config.{ALIASES.get(field, field)}=" in err and allowed in err
    assert not workdir.exists()


def test_more_clients_than_samples_is_refused(tmp_path, capsys):
    config = tmp_path / "many.py"
    config.write_text(
        "from fedconv_jax.config import default_config\n"
        "def get_config():\n"
        "    c = default_config()\n"
        "    c.num_clients = 2000\n"
        "    c.shrink_ratios = (1.0,) * 2000\n"
        "    return c\n"
    )
    code = main(["run", "--config", str(config), "--workdir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "num_clients=2000" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_console_script_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fedconv_jax.cli", "run", "--config", SMOKE, "--workdir", str(tmp_path / "o"), "--config.alpha=0"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("fedconv-jax: error: config.alpha=0")


def test_missing_config_file(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path / "o")]) == 2
    assert "config.config=" in capsys.readouterr().err


def test_background_errors_print_one_line_not_a_traceback(monkeypatch, capsys):
    """What Orbax's late callbacks raise after a corrupt checkpoint was skipped (test_resume)."""
    import threading

    from fedconv_jax.cli import _quiet_background_errors

    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored after the test
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    _quiet_background_errors()

    class ClosedLoopCallback:
        def __del__(self):
            raise RuntimeError("Event loop is closed")

    ClosedLoopCallback()  # an exception in __del__ goes to sys.unraisablehook
    thread = threading.Thread(target=lambda: 1 / 0)
    thread.start()
    thread.join()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines() == [
        "fedconv-jax: warning: ignored background error: RuntimeError: Event loop is closed",
        "fedconv-jax: warning: background thread: ZeroDivisionError: division by zero",
    ]


def test_compile_cache_flag_then_environment_then_default(monkeypatch, tmp_path):
    from fedconv_jax.cli import DEFAULT_COMPILE_CACHE, _compile_cache_dir

    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
    assert _compile_cache_dir(str(tmp_path / "flag")) == str(tmp_path / "flag")
    assert _compile_cache_dir(None) == str(tmp_path / "env")
    assert _compile_cache_dir("off") is None
    assert _compile_cache_dir("") is None
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    assert _compile_cache_dir(None) == str(Path(DEFAULT_COMPILE_CACHE).expanduser())
    assert "~" not in _compile_cache_dir(None)


@pytest.mark.parametrize("flags, message", [
    (["--process-id", "1"], "--process-id given without --distributed"),
    (["--distributed", "--num-processes", "0"], "--num-processes=0 is not allowed: an integer >= 1"),
    (["--distributed", "--num-processes", "2", "--process-id", "2"], "--process-id=2 is not allowed: an integer in [0, 1]"),
    (["--distributed", "--peer-timeout", "0"], "--peer-timeout=0 is not allowed"),
])
def test_bad_distributed_flags_exit_2_before_joining_anything(tmp_path, capsys, flags, message):
    code = main(["run", "--config", SMOKE, "--workdir", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o").exists()


def test_report_draws_each_phase_before_and_after_tuning(tmp_path, capsys):
    rows = [
        {"round": r, "algorithm": "fedconv", "global_accuracy": g, "client_accuracy": 0.9, "details": {
            "compress/0.5/holdout_before": 0.5, "compress/0.5/holdout_accuracy": 0.6, "compress/0.5/best_epoch": 2,
            "dilate/0.5/holdout_before": [0.7, 0.9], "dilate/0.5/holdout_accuracy": [0.8, 0.9], "dilate/0.5/best_epoch": [1, 0],
            "aggregate/holdout_before": 0.95, "aggregate/holdout_accuracy": 0.93, "aggregate/best_epoch": 0,
        }}
        for r, g in ((1, 0.91), (2, 0.92))
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"torn')
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| round | global | aggregate gain | compress/0.5 gain | dilate/0.5 gain |"
    assert out[2] == "| 1 | 91.00 | -2.00 | +10.00 | +5.00 |"  # dilation: the mean over the tier's clients
    assert out[-1] == f"phase plot -> {tmp_path / 'phases.png'}"
    assert (tmp_path / "phases.png").stat().st_size > 10_000
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "new" / "folder" / "p.png")]) == 0  # made
    assert (tmp_path / "new" / "folder" / "p.png").is_file()


def test_report_of_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "metrics.jsonl does not exist" in err
