"""Global accuracy with 0, 1, 2 poisoned clients of 10: FedConv's learned aggregation vs plain
sample-weighted averaging (`aggregation="mean"`).

    python benchmarks/poisoning.py --quick                 # every client SR 0.5, sign flip, 5 rounds, 1 seed
    python benchmarks/poisoning.py                         # sign flip and noise, 30 rounds, 3 seeds
    python benchmarks/poisoning.py --dataset tfds:mnist    # after `fedconv-jax data import mnist ...`
    python benchmarks/poisoning.py --config.local_epochs=1 --config.devices=2   # any config override

Starts from a config file (default configs/smoke.py: 10 clients, SR 3 x 1.0 / 4 x 0.75 /
3 x 0.5). The poisoned clients are the last k in config order (here SR 0.5 clients): their
uploads are replaced after local training, before dilation (fedconv_jax/participation.py).
The attacks are data, so every (k, mode) shares one compiled round per aggregation rule (a
seed can change the padded client capacity, hence one compile per (aggregation, seed)).
Prints a table and writes JSON to benchmarks/results/.
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedconv_jax.cli import _load_config, _split_overrides
from fedconv_jax.config import validate
from fedconv_jax.experiment import build_experiment

AGGREGATIONS = ("learned", "mean")


def run(config, rounds: int) -> list[float]:
    """Global accuracy after every round."""
    exp = build_experiment(config)
    round_fn = _round_fn(exp.algorithm)
    state, accuracy = exp.state, []
    for _ in range(rounds):
        state, metrics = round_fn(state, exp.data, exp.hparams)
        accuracy.append(float(metrics["global_accuracy"]))
    return accuracy


_COMPILED = {}


def _round_fn(algorithm):
    # One jit per algorithm (name and spec), reused across seeds, numbers of attackers and
    # poison scales (all of them round inputs: no recompile).
    if algorithm not in _COMPILED:
        _COMPILED[algorithm] = jax.jit(algorithm.round, donate_argnums=0)
    return _COMPILED[algorithm]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "smoke.py"))
    parser.add_argument("--dataset", default=None, help="override config.dataset (e.g. tfds:mnist)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--attackers", default="0,1,2")
    parser.add_argument("--modes", default=None, help="comma-separated: sign_flip,noise")
    parser.add_argument("--poison-scale", type=float, default=1.0)
    parser.add_argument("--out", default=None)
    rest, overrides = _split_overrides(sys.argv[1:])  # --config.<field>=<value>, as in the CLI
    args = parser.parse_args(rest)

    base = _load_config(args.config, overrides)
    if args.dataset:
        base.dataset = args.dataset
    base.phase_timing = False
    base.poison_scale = args.poison_scale
    if args.quick:  # one SR tier instead of three: a small program to compile
        base.shrink_ratios = (0.5,) * base.num_clients
        base.local_epochs = 1
    rounds = args.rounds or (5 if args.quick else base.rounds)
    seeds = args.seeds or (1 if args.quick else 3)
    modes = (args.modes or ("sign_flip" if args.quick else "sign_flip,noise")).split(",")
    attackers = [int(k) for k in args.attackers.split(",")]

    results, start = [], time.perf_counter()
    for aggregation in AGGREGATIONS:
        for mode in modes:
            for k in attackers:
                if k == 0 and mode != modes[0]:
                    continue  # no attacker: the mode does not matter
                curves = []
                for seed in range(seeds):
                    config = base.copy_and_resolve_references()
                    config.aggregation, config.poison_mode, config.poisoned_clients, config.seed = aggregation, mode, k, seed
                    validate(config)
                    curves.append(run(config, rounds))
                final = [c[-1] for c in curves]
                row = {
                    "dataset": base.dataset, "aggregation": aggregation, "poison_mode": mode if k else "none",
                    "poisoned_clients": k, "num_clients": base.num_clients, "rounds": rounds, "seeds": seeds,
                    "final_accuracy_mean": float(np.mean(final)), "final_accuracy_std": float(np.std(final)),
                    "final_accuracy_per_seed": final, "best_accuracy_mean": float(np.mean([max(c) for c in curves])),
                }
                results.append(row)
                print(f"{aggregation:8s} {row['poison_mode']:9s} k={k}  final {row['final_accuracy_mean']:.3f} "
                      f"± {row['final_accuracy_std']:.3f}  best {row['best_accuracy_mean']:.3f}", flush=True)
    seconds = time.perf_counter() - start

    print(f"\n| aggregation | attack | poisoned of {base.num_clients} | global accuracy, round {rounds} (mean ± std over {seeds} seeds) | best round |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['aggregation']} | {r['poison_mode']} | {r['poisoned_clients']} | "
              f"{r['final_accuracy_mean']:.3f} ± {r['final_accuracy_std']:.3f} | {r['best_accuracy_mean']:.3f} |")
    print(f"\n{seconds:.0f} s")
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"poisoning{'_quick' if args.quick else ''}_{base.dataset.replace(':', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": " ".join(sys.argv), "config": args.config, "poison_scale": args.poison_scale,
        "seconds": seconds, "jax": jax.__version__, "backend": jax.default_backend(),
        "machine": platform.platform(), "results": results,
    }, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
