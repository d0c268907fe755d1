"""One run over two processes (jax.distributed on loopback, gloo CPU collectives) equals the
same run in one process with two devices; a peer's death stops the survivor; resume is exact.

Each process has one XLA:CPU device, so the client mesh spans both processes. The algorithm
is LotteryFL: per-client state (each client's pruning mask) lives half in each process, and
its aggregation sums over clients across them; it compiles in a third of FedConv's time
(whose sharding is checked on 4 in-process devices by test_sharding.py).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fedconv_jax.checkpointing import KILL_DURING_SAVE_ENV

ROOT = Path(__file__).resolve().parents[1]
PEER_TIMEOUT = 10
# The tiny config of test_round.py, written out: its helper validates, which would start
# JAX's backend before jax.distributed.initialize.
CONFIG = """
from fedconv_jax.config import default_config

def get_config():
    c = default_config()
    c.algorithm = "lotteryfl"
    c.num_clients = 4
    c.shrink_ratios = (1.0, 1.0, 0.5, 0.5)
    c.local_epochs = c.pretrain_epochs = 1
    c.compress_epochs = c.dilate_epochs = c.aggregate_epochs = 1
    c.phase_timing = False
    c.client_costs = False
    c.rounds = 3
    c.checkpoint_every = 1
    c.devices = 2
    return c
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(config: Path, workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fedconv_jax.cli", "run", "--config", str(config), "--workdir", str(workdir), "--quiet", *extra]


def _env(**extra) -> dict:
    return {
        **os.environ, "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **extra,
    }


def _two_processes(config: Path, workdir: Path, *extra: str, kill_process_1_at: int | None = None):
    """Starts processes 0 and 1 of one run; returns [(returncode, stdout, stderr, end time)]."""
    port = _free_port()
    procs = []
    for pid in (0, 1):
        env = _env(**({KILL_DURING_SAVE_ENV: str(kill_process_1_at)} if pid == 1 and kill_process_1_at else {}))
        procs.append(subprocess.Popen(
            _command(config, workdir, "--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                     "--process-id", str(pid), "--peer-timeout", str(PEER_TIMEOUT), *extra),
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    deadline = time.monotonic() + 900  # generous: two compiles share a loaded CI machine
    ended = [None, None]
    while None in ended and time.monotonic() < deadline:
        for i, p in enumerate(procs):
            if ended[i] is None and p.poll() is not None:
                ended[i] = time.monotonic()
        time.sleep(0.1)
    results = []
    for p, t in zip(procs, ended, strict=True):
        if t is None:
            p.kill()
        out, err = p.communicate(timeout=60)
        results.append((p.returncode, out, err, t))
    return results


def _digests(workdir: Path) -> list[tuple[int, str]]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [(r["round"], r["global_params_digest"]) for r in rows]


def test_two_processes_equal_one_process_two_devices_survive_a_dead_peer_and_resume(tmp_path):
    config = tmp_path / "tiny.py"
    config.write_text(CONFIG)
    reference = tmp_path / "reference"
    ref = subprocess.run(_command(config, reference), env=_env(), capture_output=True, text=True, timeout=900)
    assert ref.returncode == 0, ref.stderr[-2000:]
    expected = _digests(reference)
    assert [r for r, _ in expected] == [1, 2, 3]

    # Process 1 is killed while the round-2 checkpoint is being written: process 0 must stop
    # on its own within the peer timeout (a collective fails, or the heartbeat check).
    workdir = tmp_path / "two"
    (rc0, _, err0, end0), (rc1, _, err1, end1) = _two_processes(config, workdir, kill_process_1_at=2)
    assert rc1 == -signal.SIGKILL, err1[-2000:]
    assert end0 is not None and rc0 != 0, err0[-2000:]
    assert end0 - end1 < PEER_TIMEOUT + 50, (end0 - end1, err0[-2000:])
    assert "peer process died" in err0 or "another task died" in err0, err0[-2000:]
    assert _digests(workdir) == expected[:2]  # rows written once, by process 0 alone

    # Both resume from the last committed checkpoint and reach the 1-process digests. Round 2's
    # may or may not have been committed: process 1's share is written before save() returns.
    (rc0, out0, err0, _), (rc1, out1, err1, _) = _two_processes(config, workdir, "--resume")
    assert rc0 == 0 and rc1 == 0, (err0[-2000:], err1[-2000:])
    assert re.search(r"resuming from the checkpoint of round [12]\n", err0), err0[-2000:]
    assert "Traceback" not in err0 + err1
    assert "round 3: global_accuracy=" in out0 and "round 3" not in out1  # process 0 reports
    assert _digests(workdir) == expected
