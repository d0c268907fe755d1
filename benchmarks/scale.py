"""Target 3: one compiled FedConv round at 10..500 clients (MNIST CNN, paper SR mix 20/40/20/20 %).

Synthetic MNIST-shaped data (70,000 images). Tuning is reduced OPENLY so the sweep fits a
shared 2-core CPU: 1 local epoch, 1 epoch each of compression, dilation and aggregation
tuning, no pre-training, and a 1 % server tuning set (700 images) instead of 5 %. Prints
seconds per round (compile excluded), client-steps per second (steps on real data: each
client's local_epochs x ceil(n_j / batch); padding steps are skipped inside the round and
not counted; over the clients phase when phases are timed, else over the round), the
compiled program's memory (XLA memory_analysis: arguments + temporaries) and the process's
peak RSS. Unless --no-phases, each size is also run once phase by phase
(experiment.time_phases: one more compile) to split the round into server time (compress,
dilate, aggregate, evaluate) and client training, and to print the server's marginal
seconds per added client between sweep points.

    python benchmarks/scale.py            # 10, 50, 100, 200, 500 clients
    python benchmarks/scale.py --quick    # 4 clients of SR 0.5, 3,500 images, no phases
"""

import argparse
import json
import os
import pathlib
import platform
import resource
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from synthetic_round import build_synthetic_experiment, paper_ratios, synthetic_mnist

from fedconv_jax.core.sharding import request_cpu_devices
from fedconv_jax.experiment import time_phases

RESULTS = pathlib.Path(__file__).parent / "results"


SERVER_PHASES = ("pretrain", "compress", "dilate", "aggregate", "evaluate")


def client_steps(cfg, data) -> tuple[int, int]:
    """(steps on real data, steps including the skipped all-padding ones) of one round."""
    real = padded = 0
    for train, mask in zip(data.client_train, data.client_mask):
        n = np.asarray(jax.device_get(train.mask)).sum(axis=1)[np.asarray(jax.device_get(mask))]
        real += int(np.sum(-(-n // cfg.local_batch_size))) * cfg.local_epochs
        padded += int(mask.sum()) * cfg.local_epochs * (train.idx.shape[1] // cfg.local_batch_size)
    return real, padded


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100, 200, 500])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--client-parallelism", default="map")
    parser.add_argument("--client-chunk", type=int, default=1)
    parser.add_argument("--devices", type=int, default=1, help="XLA:CPU devices the client axis is sharded over")
    parser.add_argument("--no-phases", action="store_true", help="skip the phase-separated run (and its compile)")
    args = parser.parse_args(argv)
    request_cpu_devices(args.devices)
    ratios, images = paper_ratios, 70_000
    if args.quick:  # a check that the script runs: one SR tier (a small program), 3,500 images
        args.clients, args.no_phases, images = [4], True, 3_500
        ratios = lambda k: (0.5,) * k
    load_start = os.getloadavg()
    dataset = synthetic_mnist(images)
    rows = []
    for k in args.clients:
        exp = build_synthetic_experiment(
            dataset, num_clients=k, shrink_ratios=ratios(k), local_epochs=1, pretrain_epochs=0,
            compress_epochs=1, dilate_epochs=1, aggregate_epochs=1, split_fractions=(0.01, 0.2, 0.74, 0.05),
            client_parallelism=args.client_parallelism, client_chunk=args.client_chunk, devices=args.devices,
        )
        cfg, data, state, hparams = exp.spec, exp.data, exp.state, exp.hparams
        phases = None
        if not args.no_phases:
            phases, _ = time_phases(exp.algorithm, state, data, hparams)  # state is not donated here
        start = time.perf_counter()
        compiled = jax.jit(exp.algorithm.round, donate_argnums=0).lower(state, data, hparams).compile()
        compile_s = time.perf_counter() - start
        mem = compiled.memory_analysis()
        program_bytes = (mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes) if mem else None
        start = time.perf_counter()
        state, metrics = compiled(state, data, hparams)
        jax.block_until_ready(metrics)
        seconds = time.perf_counter() - start
        real_steps, padded_steps = client_steps(cfg, data)
        row = {
            "clients": k, "tiers": dict(zip(map(str, cfg.tier_ratios), cfg.tier_capacity)),
            "seconds_per_round": seconds, "compile_s": compile_s, "client_steps": real_steps,
            "padded_client_steps": padded_steps,
            # over the clients phase when it was timed alone, else over the whole round
            "client_steps_per_s": real_steps / (phases["clients"] if phases else seconds),
            "program_bytes": program_bytes,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "global_accuracy": float(metrics["global_accuracy"]),
            "phase_seconds": phases,
            "server_seconds": None if phases is None else sum(phases[p] for p in SERVER_PHASES),
        }
        rows.append(row)
        split = "" if phases is None else (
            f" (phase by phase: server {row['server_seconds']:.1f} s, clients {phases['clients']:.1f} s)"
        )
        print(f"{k} clients: {seconds:.1f} s/round{split}, {row['client_steps_per_s']:.0f} client-steps/s, "
              f"program {program_bytes / 2**30:.2f} GiB, peak RSS {row['peak_rss_bytes'] / 2**30:.2f} GiB "
              f"(compile {compile_s:.0f} s)", flush=True)
    print("\n| clients | s / round | server s | server s per added client | client phase s | client-steps / s | program memory GiB | peak RSS GiB | compile s |")
    print("|---|---|---|---|---|---|---|---|---|")
    previous = None
    for r in rows:
        server = "-" if r["server_seconds"] is None else f"{r['server_seconds']:.1f}"
        marginal = "-"
        if previous is not None and r["server_seconds"] is not None and previous["server_seconds"] is not None:
            marginal = f"{(r['server_seconds'] - previous['server_seconds']) / (r['clients'] - previous['clients']):.3f}"
        clients_s = "-" if r["phase_seconds"] is None else f"{r['phase_seconds']['clients']:.1f}"
        print(f"| {r['clients']} | {r['seconds_per_round']:.1f} | {server} | {marginal} | {clients_s} |"
              f" {r['client_steps_per_s']:.0f} | {r['program_bytes'] / 2**30:.2f} |"
              f" {r['peak_rss_bytes'] / 2**30:.2f} | {r['compile_s']:.0f} |")
        previous = r
    out = RESULTS / f"scale{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": " ".join(["python", *sys.argv]), "jax_version": jax.__version__, "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "load_average_start": load_start, "load_average_end": os.getloadavg(), "rows": rows,
    }, indent=2))
    print(f"load average {load_start[0]:.1f} -> {os.getloadavg()[0]:.1f}; wrote {out}")


if __name__ == "__main__":
    main()
