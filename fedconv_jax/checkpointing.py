"""Orbax checkpoints of the whole round state (any algorithm's), resume guards, and metrics.jsonl repair.

A checkpoint is the directory `<workdir>/checkpoints/<round>/` written by an Orbax
`CheckpointManager` (atomic commit: a step is written to a temporary directory and renamed
when complete, so a SIGKILL leaves either a complete step or a `*.orbax-checkpoint-tmp*`
directory that is ignored). It holds two items:

- `state`: the algorithm's state after `round` rounds, as host arrays; the PRNG key is stored as its
  raw `key_data` and wrapped back on restore (restored against an abstract target built from a
  freshly initialised state, so NamedTuples and dataclasses come back as themselves);
- `meta` (JSON): format version, round, the run's config, the partition seed, a digest of the
  device data (split and images) and a sha256 of the state, checked on restore so a corrupt
  step is detected even when its files still decode.

Nothing here uses pickle.
"""

import hashlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from fedconv_jax.core.algorithm import State
from fedconv_jax.core.data import RoundData
from fedconv_jax.distributed import host_copy

FORMAT_VERSION = 1
CHECKPOINT_SUBDIR = "checkpoints"
# Fields that may change between a checkpoint and its resume with allow_config_change=true:
# none of them changes what any round computes.
RESUMABLE_FIELDS = ("rounds", "phase_timing", "checkpoint_every", "keep_checkpoints")
# Test hook: SIGKILL this process right after the save of this round has started writing.
KILL_DURING_SAVE_ENV = "FEDCONV_JAX_TEST_KILL_DURING_SAVE"


class CheckpointError(ValueError):
    """A workdir / checkpoint problem the user must resolve; the message is one line."""


def checkpoint_dir(workdir: Path) -> Path:
    return Path(workdir) / CHECKPOINT_SUBDIR


def jsonable_config(config) -> dict:
    """The config as plain JSON types (tuples become lists), as it is stored."""
    return json.loads(json.dumps(config.to_dict(), default=list))


def _flat(config: dict, prefix: str = "") -> dict:
    """Nested sections as dotted field names."""
    out = {}
    for name, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{name}."))
        else:
            out[prefix + name] = value
    return out


def config_differences(saved: dict, current: dict) -> list[str]:
    """Names (dotted in sections) of the fields whose values differ or exist in only one."""
    saved, current = _flat(saved), _flat(current)
    fields = sorted(set(saved) | set(current))
    return [f for f in fields if f != "allow_config_change" and saved.get(f, "<absent>") != current.get(f, "<absent>")]


def check_config_change(saved: dict, current: dict, allow_change: bool) -> None:
    """Refuses a resume whose config differs from the checkpoint's, except for safe fields."""
    diff = config_differences(saved, current)
    saved, current = _flat(saved), _flat(current)
    if not diff:
        return
    shown = ", ".join(f"{f} ({saved.get(f, '<absent>')!r} -> {current.get(f, '<absent>')!r})" for f in diff)
    unsafe = [f for f in diff if f not in RESUMABLE_FIELDS]
    if not allow_change:
        raise CheckpointError(
            f"--resume refused: the config differs from the checkpoint's in {shown}; "
            f"pass --config.allow_config_change=true to change only {', '.join(RESUMABLE_FIELDS)}"
        )
    if unsafe:
        raise CheckpointError(
            f"--resume refused: {', '.join(unsafe)} cannot change on resume (only "
            f"{', '.join(RESUMABLE_FIELDS)} can); start a new workdir instead"
        )


def tree_digest(tree) -> str:
    """sha256 over the bytes, dtypes and shapes of a pytree's leaves, in flatten order."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(host_copy(tree)):
        leaf = np.asarray(leaf)
        digest.update(f"{leaf.dtype}{leaf.shape}".encode())
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


def data_digest(data: RoundData) -> str:
    """Fingerprint of the device data: a changed data set or split refuses the resume."""
    return tree_digest(data)


def _storable(state: State) -> State:
    """Host copy with the typed PRNG key as its raw uint32 data; gathered from every process
    in a multi-process run, so the files are the same whatever the process count."""
    return host_copy(state.replace(key=jax.random.key_data(state.key)))


def existing_run_files(workdir: Path) -> list[str]:
    """What in `workdir` belongs to an earlier run (checkpoints, metrics rows)."""
    found = []
    ckpt = checkpoint_dir(workdir)
    if ckpt.is_dir() and any(ckpt.iterdir()):
        found.append(str(ckpt))
    metrics = Path(workdir) / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append(str(metrics))
    return found


class _DropSaveWaitNotes(logging.Filter):
    """Orbax warns when a save waits for the previous one (over about a second). Rounds of a
    small config are shorter than an async save, so on a busy machine every run would print
    it; the save still completes, in order, and a row's `seconds` excludes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Waiting for previous save to complete")


_SAVE_WAIT_FILTER = _DropSaveWaitNotes()


class Checkpointer:
    """Saves every `every` rounds (and the last), keeps the `keep` newest complete steps."""

    def __init__(self, workdir: Path, keep: int):
        logging.getLogger("absl").addFilter(_SAVE_WAIT_FILTER)  # once: filters are a set
        self.directory = checkpoint_dir(workdir)
        self.manager = ocp.CheckpointManager(
            self.directory.absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True),
        )

    def save(self, state: State, meta: dict) -> None:
        """Starts an async save of the state after `state.round` rounds (host copy first)."""
        step = int(state.round)
        host = _storable(state)  # a host copy: the next round may donate the device buffers
        meta = {
            **meta, "format": FORMAT_VERSION, "round": step, "state_digest": tree_digest(host),
            "key_impl": str(jax.random.key_impl(state.key)),
        }
        saved = self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(host), meta=ocp.args.JsonSave(meta))
        )
        if not saved:  # Orbax skips a step that already exists without saying so
            raise CheckpointError(f"checkpoint for round {step} was not written: it already exists in {self.directory}")
        if os.environ.get(KILL_DURING_SAVE_ENV) == str(step):
            os.kill(os.getpid(), signal.SIGKILL)

    def delete(self, step: int) -> None:
        self.manager.delete(step)

    def close(self) -> None:
        """Waits for the last async save to commit."""
        self.manager.wait_until_finished()
        self.manager.close()


def _restore_step(manager, step: int, template: State) -> tuple[State, dict]:
    abstract = jax.eval_shape(lambda s: s.replace(key=jax.random.key_data(s.key)), template)
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
    )
    meta, host = restored.meta, restored.state
    if meta.get("format") != FORMAT_VERSION or meta.get("round") != step:
        raise CheckpointError(f"metadata says format {meta.get('format')}, round {meta.get('round')}")
    if tree_digest(host) != meta.get("state_digest"):
        raise CheckpointError("state digest does not match the one written with it")
    if int(host.round) != step:
        raise CheckpointError(f"state round {int(host.round)} != step {step}")
    return host.replace(key=jax.random.wrap_key_data(host.key, impl=meta["key_impl"])), meta


def find_latest(
    workdir: Path, template: State, warn: Callable[[str], None]
) -> tuple[State, dict, list[int]] | None:
    """The newest complete, intact checkpoint: (state, meta, newer unusable steps).

    `template` may be abstract (`jax.eval_shape` of the initial state): only its structure,
    shapes and dtypes are used. Read-only. Returns None when the workdir has no complete checkpoint at all; raises
    CheckpointError when it has some but none can be restored.
    """
    directory = checkpoint_dir(workdir)
    if not directory.is_dir():
        return None
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # Orbax warns that a read-only manager is read-only
    try:
        options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
        manager = ocp.CheckpointManager(directory.absolute(), options=options)
    finally:
        absl_logger.setLevel(level)
    try:
        steps = sorted(manager.all_steps(), reverse=True)
        bad = []
        for step in steps:
            try:
                state, meta = _restore_step(manager, step, template)
            except Exception as err:  # noqa: BLE001 -- any failure to read a step: try the previous one
                reason = (str(err).strip().splitlines() or [""])[0][:200]
                warn(f"checkpoint {directory / str(step)} is unusable ({type(err).__name__}: {reason}); falling back to the previous one")
                bad.append(step)
                continue
            return state, meta, bad
    finally:
        manager.close()
    if steps:
        raise CheckpointError(
            f"no usable checkpoint in {directory}: all of rounds {sorted(steps)} are corrupt or incomplete"
        )
    return None


def truncate_metrics(path: Path, last_round: int, warn: Callable[[str], None]) -> None:
    """Keeps the rows of rounds 1..last_round (dropping later or torn rows), atomically."""
    path = Path(path)
    if not path.exists():
        if last_round > 0:
            warn(f"{path} is missing: rows of rounds 1..{last_round} are lost")
        return
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a row torn by the kill
        if isinstance(row, dict) and isinstance(row.get("round"), int) and row["round"] <= last_round:
            rows.append(row)
    kept = {r["round"]: r for r in rows}  # one row per round: the last one written
    missing = [r for r in range(1, last_round + 1) if r not in kept]
    if missing:
        warn(f"{path} has no rows for rounds {missing} (checkpoint is at round {last_round})")
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(kept[r]) + "\n" for r in sorted(kept)))
    tmp.replace(path)


def stderr_warn(message: str) -> None:
    print(f"fedconv-jax: {message}", file=sys.stderr)


__all__ = [
    "CHECKPOINT_SUBDIR",
    "RESUMABLE_FIELDS",
    "CheckpointError",
    "Checkpointer",
    "check_config_change",
    "checkpoint_dir",
    "config_differences",
    "data_digest",
    "existing_run_files",
    "find_latest",
    "jsonable_config",
    "stderr_warn",
    "tree_digest",
    "truncate_metrics",
]
