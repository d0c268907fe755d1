"""Checkpoints: round trip, corrupt and partial steps, resume guards, metrics.jsonl repair."""

import json
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedconv_jax import checkpointing
from fedconv_jax.cli import main
from fedconv_jax.config import default_config
from fedconv_jax.experiment import build_experiment

sys.path.insert(0, str(Path(__file__).parent))
from test_round import tiny_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exp():
    return build_experiment(tiny_config())


def _meta(exp):
    return {
        "config": checkpointing.jsonable_config(exp.config),
        "partition_seed": exp.config.seed,
        "data_digest": checkpointing.data_digest(exp.data),
    }


def _state_at(exp, r):
    """A distinct state per round: every float leaf shifted by r, round index r."""
    shifted = jax.tree.map(lambda x: x + r if jnp.issubdtype(x.dtype, jnp.floating) else x, exp.state.replace(key=None))
    return shifted.replace(key=jax.random.fold_in(exp.state.key, r), round=jnp.int32(r))


def _write(exp, workdir, rounds, keep=3):
    saver = checkpointing.Checkpointer(workdir, keep)
    for r in rounds:
        saver.save(_state_at(exp, r), _meta(exp))
    saver.close()


def _assert_same_state(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)  # NamedTuples / dataclasses, not lists
    for x, y in zip(jax.tree.leaves(a.replace(key=None)), jax.tree.leaves(b.replace(key=None))):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(jax.random.key_data(a.key), jax.random.key_data(b.key))
    assert jax.random.key_impl(a.key) == jax.random.key_impl(b.key)


def test_round_trip_keeps_newest_and_restores_identical_state(exp, tmp_path):
    _write(exp, tmp_path, [1, 2, 3, 4], keep=3)
    steps = sorted(int(p.name) for p in checkpointing.checkpoint_dir(tmp_path).iterdir())
    assert steps == [2, 3, 4]
    warnings = []
    state, meta, bad = checkpointing.find_latest(tmp_path, exp.state, warnings.append)
    assert (meta["round"], bad, warnings) == (4, [], [])
    assert meta["config"] == checkpointing.jsonable_config(exp.config)
    _assert_same_state(state, _state_at(exp, 4))
    with pytest.raises(checkpointing.CheckpointError, match="already exists"):
        _write(exp, tmp_path, [4])  # Orbax would skip it silently


def _garble(path: Path):
    for f in path.rglob("*"):
        if f.is_file() and f.parent.name == "d":
            data = bytearray(f.read_bytes())
            data[len(data) // 2] ^= 0xFF
            f.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["garble", "drop_state", "bad_meta", "partial"])
def test_corrupt_or_partial_newest_falls_back(exp, tmp_path, damage):
    _write(exp, tmp_path, [1, 2, 3])
    newest = checkpointing.checkpoint_dir(tmp_path) / "3"
    if damage == "garble":
        _garble(newest / "state")
    elif damage == "drop_state":
        shutil.rmtree(newest / "state")
    elif damage == "bad_meta":
        (newest / "meta" / "metadata").write_text("{not json")
    else:  # what a SIGKILL during a save leaves behind: an uncommitted temporary directory
        newest.rename(newest.with_name("3.orbax-checkpoint-tmp"))
    warnings = []
    state, meta, bad = checkpointing.find_latest(tmp_path, exp.state, warnings.append)
    assert meta["round"] == 2
    _assert_same_state(state, _state_at(exp, 2))
    if damage == "partial":
        assert bad == [] and warnings == []  # never a complete step: nothing to warn about
    else:
        assert bad == [3] and len(warnings) == 1 and "falling back" in warnings[0]


def test_a_flipped_byte_that_still_decodes_is_caught_by_the_digest(exp, tmp_path, monkeypatch):
    _write(exp, tmp_path, [1, 2])
    meta_file = checkpointing.checkpoint_dir(tmp_path) / "2" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["state_digest"] = "0" * 64
    meta_file.write_text(json.dumps(meta))
    warnings = []
    _, meta, bad = checkpointing.find_latest(tmp_path, exp.state, warnings.append)
    assert meta["round"] == 1 and bad == [2] and "digest" in warnings[0]


def test_no_usable_checkpoint_is_an_error(exp, tmp_path):
    _write(exp, tmp_path, [1, 2])
    for step in (1, 2):
        shutil.rmtree(checkpointing.checkpoint_dir(tmp_path) / str(step) / "state")
    with pytest.raises(checkpointing.CheckpointError, match="no usable checkpoint"):
        checkpointing.find_latest(tmp_path, exp.state, lambda _: None)
    assert checkpointing.find_latest(tmp_path / "empty", exp.state, lambda _: None) is None


def test_config_guard():
    saved = checkpointing.jsonable_config(default_config())
    same = dict(saved)
    checkpointing.check_config_change(saved, same, allow_change=False)
    changed = {**saved, "rounds": 7, "alpha": 0.1}
    with pytest.raises(checkpointing.CheckpointError, match=r"alpha \(1.0 -> 0.1\), rounds \(100 -> 7\)"):
        checkpointing.check_config_change(saved, changed, allow_change=False)
    with pytest.raises(checkpointing.CheckpointError, match="alpha cannot change"):
        checkpointing.check_config_change(saved, changed, allow_change=True)
    safe = {**saved, "rounds": 7, "phase_timing": False, "keep_checkpoints": 9, "allow_config_change": True}
    checkpointing.check_config_change(saved, safe, allow_change=True)
    assert checkpointing.config_differences(saved, {**saved, "new_field": 1}) == ["new_field"]


def test_truncate_metrics_keeps_rounds_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"round": r, "x": r} for r in (1, 2, 3, 3, 4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"round": 5, "x"')  # torn last row
    warnings = []
    checkpointing.truncate_metrics(path, 3, warnings.append)
    assert [json.loads(line)["round"] for line in path.read_text().splitlines()] == [1, 2, 3]
    assert warnings == []
    checkpointing.truncate_metrics(path, 5, warnings.append)
    assert "rounds [4, 5]" in warnings[0]


def _cli(tmp_path, *extra):
    config = tmp_path / "tiny.py"
    config.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from test_round import tiny_config\n"
        "def get_config():\n"
        "    return tiny_config()\n"
    )
    return main(["run", "--config", str(config), "--workdir", str(tmp_path / "run"), "--quiet", *extra])


def _snapshot(path: Path):
    return {p: p.stat().st_mtime_ns for p in path.rglob("*")}


def test_cli_refuses_fresh_run_over_checkpoints_and_changed_config(exp, tmp_path, capsys):
    workdir = tmp_path / "run"
    _write(exp, workdir, [1])
    before = _snapshot(workdir)
    assert _cli(tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds a run" in err and "--resume" in err
    assert _cli(tmp_path, "--resume", "--config.local_epochs=2", "--config.seed=3") == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith("fedconv-jax: error: --resume refused")
    assert "local_epochs (1 -> 2)" in err and "seed (0 -> 3)" in err and "Traceback" not in err
    assert _cli(tmp_path, "--resume", "--config.seed=3", "--config.allow_config_change=true") == 2
    assert "seed cannot change" in capsys.readouterr().err
    assert _snapshot(workdir) == before  # refusals write nothing
    shutil.rmtree(checkpointing.checkpoint_dir(workdir) / "1" / "state")
    before = _snapshot(workdir)
    assert _cli(tmp_path, "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "falling back" in err[0] and err[-1].startswith("fedconv-jax: error: no usable checkpoint")
    assert _snapshot(workdir) == before  # refusals write nothing


def test_resume_without_a_checkpoint_starts_a_baseline_from_its_own_state(tmp_path, capsys):
    """`compare` resumes combinations that were cut before their first checkpoint."""
    extra = ("--config.algorithm=fedavg_small", "--config.rounds=1", "--config.client_costs=false")
    assert _cli(tmp_path, "--resume", *extra) == 0
    assert "no complete checkpoint" in capsys.readouterr().err
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["round"], r["algorithm"]) for r in rows] == [(1, "fedavg_small")]


def test_orbax_save_wait_notes_are_not_printed(tmp_path, caplog):
    """A busy machine made Orbax warn on every save of a fast run; other warnings still show."""
    import logging

    checkpointing.Checkpointer(tmp_path, keep=1).close()
    absl = logging.getLogger("absl")
    with caplog.at_level(logging.WARNING):
        absl.warning("Waiting for previous save to complete took %f seconds. If this number is high, ...", 1.2)
        absl.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]
