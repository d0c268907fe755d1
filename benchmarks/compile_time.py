"""Compile time of whole round programs: the smoke config and the paper's 4-tier MNIST round.

Each program is lowered and compiled with the persistent compilation cache off, `--repeats`
times in fresh processes' worth of state (jax.clear_caches between repeats), and the median
is reported. MNIST is synthetic data of MNIST's shape (compile time depends on shapes only).

    python benchmarks/compile_time.py [--repeats 3] [--out benchmarks/results/compile_time.json]
"""

import argparse
import json
import pathlib
import platform
import statistics
import sys
import time

import jax

jax.config.update("jax_compilation_cache_dir", None)

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from synthetic_round import build_synthetic_experiment, paper_ratios, synthetic_mnist  # noqa: E402

from fedconv_jax.config import load_config  # noqa: E402
from fedconv_jax.experiment import build_experiment, round_program  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _seconds(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        jax.clear_caches()
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "compile_time.json"))
    args = parser.parse_args(argv)
    results = {}

    smoke = build_experiment(load_config(ROOT / "configs" / "smoke.py"))
    round_fn, inputs = round_program(smoke)
    results["smoke"] = _seconds(lambda: round_fn.lower(*inputs).compile(), args.repeats)
    print(f"smoke: {results['smoke']}", flush=True)

    ratios = paper_ratios(20)
    mnist = build_synthetic_experiment(
        synthetic_mnist(70_000), num_clients=20, shrink_ratios=ratios, local_epochs=5, pretrain_epochs=5,
        compress_epochs=20, dilate_epochs=20, aggregate_epochs=20,
    )
    round_fn, inputs = round_program(mnist)
    results["mnist_4_tiers"] = _seconds(lambda: round_fn.lower(*inputs).compile(), args.repeats)
    print(f"mnist_4_tiers: {results['mnist_4_tiers']}", flush=True)

    summary = {name: statistics.median(s) for name, s in results.items()}
    for name, median in summary.items():
        print(f"{name}: median compile {median:.1f} s over {args.repeats}")
    record = {
        "command": " ".join(sys.argv), "median_seconds": summary, "seconds": results,
        "jax": jax.__version__, "machine": platform.machine(), "backend": jax.default_backend(),
    }
    pathlib.Path(args.out).write_text(json.dumps(record, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
