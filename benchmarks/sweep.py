"""K runs in one program (`fedconv-jax sweep`) against K separate `fedconv-jax run`s.

Both sides are the CLI as a user runs it, wall time of the whole command, compile included,
each side with its own fresh compilation cache:
  - separate: 16 runs one after another (local_lr x seed, the same 16 combinations as the
    K = 16 sweep); the first compiles, the others load its programs from the cache. The
    totals for K = 1, 4, 16 are the first 1, 4, 16 of them.
  - sweep: one `fedconv-jax sweep` per K (K = 1, 4, 16), `--run-axis map` and `vmap`.

    python benchmarks/sweep.py [--rounds 5] [--out benchmarks/results/sweep.json]
    python benchmarks/sweep.py --quick   # K = 1, 2; map only; 4 tiny clients (about 2 minutes)
"""

import argparse
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
LRS = ("1e-3", "2e-3", "3e-3", "5e-3")
SEEDS = ("0", "1", "2", "3")


def grid(k: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(learning rates, seeds) of a K-run sweep: 1 = 1x1, 2 = 2x1, 4 = 2x2, 16 = 4x4."""
    lrs, seeds = {1: (1, 1), 2: (2, 1), 4: (2, 2), 16: (4, 4)}[k]
    return LRS[:lrs], SEEDS[:seeds]


def _cli(args: list[str], cache: pathlib.Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "fedconv_jax.cli", *args, "--quiet", "--compile-cache", str(cache)],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    overrides = [f"--config.rounds={args.rounds}", "--config.client_costs=false"]
    ks, axes = (1, 4, 16), ("map", "vmap")
    if args.quick:
        ks, axes = (1, 2), ("map",)
        overrides = [
            "--config.rounds=1", "--config.client_costs=false", "--config.num_clients=4",
            "--config.shrink_ratios=(1.0, 1.0, 0.5, 0.5)", "--config.local_epochs=1", "--config.pretrain_epochs=1",
            "--config.compress_epochs=1", "--config.dilate_epochs=1", "--config.aggregate_epochs=1",
        ]
    config = str(ROOT / "configs" / "smoke.py")
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="fedconv_sweep_bench_"))
    load_start = os.getloadavg()
    try:
        lrs, seeds = grid(max(ks))
        separate = []
        for lr in lrs:
            for seed in seeds:
                workdir = scratch / f"run_{lr}_{seed}"
                separate.append(_cli(
                    ["run", "--config", config, "--workdir", str(workdir), *overrides,
                     f"--config.local_lr={lr}", f"--config.seed={seed}", "--config.data_seed=0",
                     "--config.checkpoint_every=0"],
                    scratch / "cache_separate",
                ))
                print(f"separate run {len(separate)}: {separate[-1]:.1f} s", flush=True)
        swept = {}
        for axis in axes:
            for k in ks:
                lrs, seeds = grid(k)
                cache = scratch / f"cache_{axis}_{k}"
                swept[f"{axis}/{k}"] = _cli(
                    ["sweep", "--config", config, "--workdir", str(scratch / f"sweep_{axis}_{k}"), *overrides,
                     f"--sweep.local_lr={','.join(lrs)}", f"--sweep.seed={','.join(seeds)}", "--run-axis", axis],
                    cache,
                )
                print(f"sweep {axis} K={k}: {swept[f'{axis}/{k}']:.1f} s", flush=True)
        # The digests of the K = max sweep's runs against the separate runs of the same configs.
        axis, k = axes[0], max(ks)
        same = 0
        for lr in grid(k)[0]:
            for seed in grid(k)[1]:
                name = f"local_lr={float(lr):g},seed={seed}"
                a = (scratch / f"sweep_{axis}_{k}" / name / "metrics.jsonl").read_text().splitlines()[-1]
                b = (scratch / f"run_{lr}_{seed}" / "metrics.jsonl").read_text().splitlines()[-1]
                same += json.loads(a)["global_params_digest"] == json.loads(b)["global_params_digest"]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    table = []
    print("\n| K | separate runs (s) | sweep, lax.map (s) | sweep, vmap (s) | separate / map |")
    print("|---|---|---|---|---|")
    for k in ks:
        sep = sum(separate[:k])
        row = {"k": k, "separate_seconds": sep, **{f"sweep_{a}_seconds": swept.get(f"{a}/{k}") for a in ("map", "vmap")}}
        table.append(row)
        vmap = "–" if row["sweep_vmap_seconds"] is None else f"{row['sweep_vmap_seconds']:.1f}"
        print(f"| {k} | {sep:.1f} | {row['sweep_map_seconds']:.1f} | {vmap} | {sep / row['sweep_map_seconds']:.2f}x |")
    print(f"final digests equal to the separate runs': {same} of {max(ks)} ({axes[0]} sweep, K = {max(ks)})")
    out = pathlib.Path(args.out or ROOT / "benchmarks" / "results" / f"sweep{'_quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": " ".join(["python", *sys.argv]), "overrides": overrides, "separate_run_seconds": separate,
        "sweep_seconds": swept, "table": table, "digests_equal": same, "platform": platform.platform(),
        "load_average_start": load_start, "load_average_end": os.getloadavg(),
    }, indent=2))
    print(f"load average {load_start[0]:.1f} -> {os.getloadavg()[0]:.1f}; wrote {out}")


if __name__ == "__main__":
    main()
