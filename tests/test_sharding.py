"""The client axis sharded over 2 and 4 CPU devices gives the 1-device results (FedConv and baselines).

FedConv runs on 1 and 4 devices (4: two empty slots per tier, so padding is covered too):
a send per tier and plain averaging. Standalone (a start per slot, per-client state) and
heterofl (slice-averaging) run on 1 and 2. fedavg_full (a send per tier, plain averaging)
adds nothing to FedConv's run here and is left out for suite time.

JAX fixes its CPU device count when the backend starts, so the multi-device runs happen in
a fresh interpreter (`jax_num_cpu_devices`), which prints the global parameters it reaches.
Clients run one by one inside each device (lax.map, chunk 1) so every client's arithmetic is
the same on 1, 2 or 4 devices; what differs is only where the cross-client sums happen.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fedconv_jax.core.sharding import padded_capacity

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_num_cpu_devices", 4)
    import numpy as np
    from fedconv_jax.config import default_config, validate
    from fedconv_jax.experiment import build_experiment
    from fedconv_jax.metrics import CompileCounter
    from fedconv_jax.core.sharding import jit_round, make_client_mesh

    out = {}
    counter = CompileCounter()
    for devices in ((1, 4) if len(sys.argv) == 1 else ()):  # 4: sharded and padded (2 empty slots per tier)
        c = default_config()
        c.num_clients, c.shrink_ratios = 4, (1.0, 1.0, 0.5, 0.5)
        # Filter and aggregation tuning off (dilation itself still runs sharded): their Adam
        # steps turn summation-order rounding (1e-7) into lr-sized (1e-3) moves of weights
        # whose gradient is ~0, which a tolerance cannot tell from a bug.
        c.local_epochs, c.pretrain_epochs = 1, 0
        c.compress_epochs = c.dilate_epochs = 0
        c.aggregation = "mean"
        c.client_parallelism, c.client_chunk, c.devices = "map", 1, devices
        validate(c)
        exp = build_experiment(c)
        round_fn = jit_round(exp.algorithm, make_client_mesh(devices), exp.state, exp.data, exp.hparams)
        state = exp.state
        with counter.counting():
            for _ in range(2):
                state, metrics = round_fn(state, exp.data, exp.hparams)
        out[devices] = {
            "params": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(state.global_vars["params"])],
            "capacity": list(exp.spec.tier_capacity),
            "shards": len(jax.tree.leaves(state.dilation[1])[0].sharding.device_set),
            "compiles": counter.count,
            "accuracy": float(metrics["global_accuracy"]),
        }
        counter.count = 0
    # The skeleton's other patterns: a start per slot and per-client state (standalone), a
    # start per slot and slice-averaging (heterofl); others on request (argv[1]).
    for algorithm in (sys.argv[1].split(",") if len(sys.argv) > 1 else ("standalone", "heterofl")):
        for devices in (1, 2):
            c = default_config()
            c.algorithm, c.num_clients, c.shrink_ratios = algorithm, 3, (1.0, 0.5, 0.5)
            c.local_epochs, c.devices = 1, devices
            validate(c)
            exp = build_experiment(c)
            state, _ = jit_round(exp.algorithm, make_client_mesh(devices), exp.state, exp.data, exp.hparams)(exp.state, exp.data, exp.hparams)
            has_global = bool(jax.tree.leaves(state.global_vars["params"]))
            trained = state.global_vars if has_global else state.client_vars[1]  # standalone, fedmd: own models
            out[f"{algorithm}@{devices}"] = {
                "params": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(trained)],
                "capacity": list(exp.spec.tier_capacity),
                "shards": len(jax.tree.leaves(trained)[0].sharding.device_set),
            }
    print("RESULT" + json.dumps(out))
    """
)


def test_padded_capacity_fills_every_device():
    assert [padded_capacity(c, 4) for c in (1, 4, 5, 8)] == [4, 4, 8, 8]
    assert padded_capacity(3, 1) == 3


def _run_script(*args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, env=env, timeout=900, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def test_two_and_four_devices_equal_one_device():
    out = _run_script()
    baselines = {k: out.pop(k) for k in list(out) if "@" in k}
    out = {int(k): v for k, v in out.items()}
    assert out[1]["capacity"] == [2, 2]
    assert out[4]["capacity"] == [4, 4]  # two masked-out slots per tier
    assert out[4]["shards"] == 4
    for devices in (1, 4):
        assert out[devices]["compiles"] == 1  # round 2 reuses round 1's program
    reference = np.concatenate([np.asarray(x) for x in out[1]["params"]])
    for devices in (4,):
        got = np.concatenate([np.asarray(x) for x in out[devices]["params"]])
        np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-5)
        assert out[devices]["accuracy"] == pytest.approx(out[1]["accuracy"], abs=1e-6)
    # Baselines: capacities padded to the device count; standalone's own models split over
    # the devices; results equal to one device.
    assert baselines["heterofl@1"]["capacity"] == [1, 2]
    assert baselines["standalone@2"]["shards"] == 2
    assert baselines["heterofl@2"]["capacity"] == [2, 2]
    for algorithm in ("standalone", "heterofl"):  # standalone: the SR 0.5 tier, 2 slots on both
        one, two = (np.concatenate(baselines[f"{algorithm}@{d}"]["params"]) for d in (1, 2))
        np.testing.assert_allclose(two, one, rtol=1e-4, atol=1e-5)


PERSONAL = ("fedmd", "lotteryfl", "hermes", "tailorfl")


@pytest.mark.skipif(not os.environ.get("FEDCONV_SLOW_TESTS"), reason="opt-in: FEDCONV_SLOW_TESTS=1 (8 compiles)")
def test_personalised_baselines_on_two_devices_equal_one_device():
    """Cross-client scores (fedmd's consensus), per-client masks and channel sets sharded over
    2 devices, the SR 1 tier padded from 1 slot to 2: the 1-device result."""
    out = _run_script(",".join(PERSONAL))
    for algorithm in PERSONAL:
        assert out[f"{algorithm}@2"]["capacity"] == [2, 2]
        one, two = (np.concatenate(out[f"{algorithm}@{d}"]["params"]) for d in (1, 2))
        np.testing.assert_allclose(two, one, rtol=1e-4, atol=1e-5, err_msg=algorithm)
