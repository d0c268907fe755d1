"""benchmarks/device_suite.sh --cpu: every step of the accelerator suite and the merge (opt-in).

A dry run of the issue 19 GPU suite with the smallest sizes, about 3-4 minutes on the 2-core
development machine, so it runs only when asked:

    FEDCONV_SLOW_TESTS=1 python -m pytest -q tests/test_device_suite.py
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not os.environ.get("FEDCONV_SLOW_TESTS"), reason="opt-in: FEDCONV_SLOW_TESTS=1 (about 4 minutes)"
)


def test_cpu_dry_run_runs_every_step(tmp_path):
    out = tmp_path / "suite.json"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device_suite.sh"), "--cpu", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["backend"] == "cpu" and report["mode"] == "cpu"
    assert report["jax"] and report["devices"]
    names = set(report["steps"])
    assert {"paper_round", "scale"} <= names and any(n.startswith("sweep") for n in names)
    assert {n for n in names if n.startswith("rt_")} == {"rt_k2_im2col", "rt_k2_lax", "rt_k4_im2col", "rt_k4_lax"}
    for name, step in report["steps"].items():
        assert step["returncode"] == 0, (name, step.get("stderr_tail"))
        assert step["result"] is not None, name
        assert step["args"] and step["seconds"] > 0, name
    lax = report["steps"]["rt_k4_lax"]["result"]
    assert lax["settings"]["conv_impl"] == "lax" and lax["settings"]["clients"] == 4
    assert {r["strategy"] for r in lax["results"]} == {"map", "vmap"}
    assert report["steps"]["scale"]["result"]["rows"][0]["clients"] == 4
    sweep = next(s for n, s in report["steps"].items() if n.startswith("sweep"))["result"]
    assert sweep["digests_equal"] == sweep["digests_compared"] >= 1
