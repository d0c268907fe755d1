"""Exact resume of a real CLI run killed with SIGKILL during a checkpoint write, past a corrupt checkpoint.

Every subprocess would pay the round's compile; they share the test run's persistent
compilation cache (conftest.py), so only the uninterrupted reference, run first, compiles;
a cached executable computes the same digests.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedconv_jax.checkpointing import KILL_DURING_SAVE_ENV, checkpoint_dir

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 5
CONFIG = f"""
import sys
sys.path.insert(0, {str(ROOT / "tests")!r})
from test_round import tiny_config

def get_config():
    c = tiny_config()
    c.rounds = {ROUNDS}
    c.checkpoint_every = 1
    c.keep_checkpoints = 3
    c.client_costs = False  # not under test here: four processes would each compile the cost programs
    return c
"""


@pytest.fixture(scope="module")
def env():
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }


def _command(config: Path, workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fedconv_jax.cli", "run", "--config", str(config), "--workdir", str(workdir), "--quiet", *extra]


def _rows(workdir: Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def _garble_newest(workdir: Path) -> int:
    newest = max(int(p.name) for p in checkpoint_dir(workdir).iterdir() if p.name.isdigit())
    for f in (checkpoint_dir(workdir) / str(newest) / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            data = bytearray(f.read_bytes())
            data[len(data) // 2] ^= 0xFF
            f.write_bytes(bytes(data))
    return newest


def test_sigkill_during_a_save_then_resume_past_a_corrupt_checkpoint_gives_the_uninterrupted_digests(tmp_path, env):
    config = tmp_path / "tiny.py"
    config.write_text(CONFIG)
    workdir = tmp_path / "killed"

    # The uninterrupted reference runs first: it compiles, the killed runs load its programs.
    reference = tmp_path / "reference"
    ref = subprocess.run(_command(config, reference), env=env, check=False, capture_output=True, text=True, timeout=900)
    assert ref.returncode == 0, ref.stderr[-2000:]

    # 1. Killed mid-run by SIGKILL while the round-4 checkpoint is being written: the saves of
    # rounds 2 and 3 may still be in flight too (they are asynchronous).
    killed = subprocess.run(
        _command(config, workdir), env={**env, KILL_DURING_SAVE_ENV: "4"},
        check=False, capture_output=True, text=True, timeout=900,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [r["round"] for r in _rows(workdir)] == [1, 2, 3, 4]  # row 4 is written before its save

    # 2. Resumed: the newest complete checkpoint is corrupted first, so the resume falls back past it.
    garbled = _garble_newest(workdir)
    done = subprocess.run(_command(config, workdir, "--resume"), env=env, check=False, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "falling back" in done.stderr and "Traceback" not in done.stderr
    assert f"resuming from the checkpoint of round {garbled - 1}" in done.stderr

    resumed, expected = _rows(workdir), _rows(reference)
    assert [r["round"] for r in resumed] == list(range(1, ROUNDS + 1))
    assert [r["round"] for r in expected] == list(range(1, ROUNDS + 1))
    assert [r["global_params_digest"] for r in resumed] == [r["global_params_digest"] for r in expected]
    assert len({r["global_params_digest"] for r in expected}) == ROUNDS
    assert [r["global_accuracy"] for r in resumed] == [r["global_accuracy"] for r in expected]
    steps = sorted(int(p.name) for p in checkpoint_dir(workdir).iterdir() if p.name.isdigit())
    assert steps == [ROUNDS - 2, ROUNDS - 1, ROUNDS]  # keep_checkpoints newest, the final round included
