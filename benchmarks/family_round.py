"""Compile time and seconds of one 4-tier FedConv round program per model family.

Synthetic 32x32x3 data (compile time depends on shapes only), 8 clients at SR 1, 1, 0.75,
0.75, 0.5, 0.5, 0.25, 0.25, one epoch in every loop, persistent compilation cache off:

    python benchmarks/family_round.py --model cnn
    python benchmarks/family_round.py --model resnet18 --global-width 0.125
"""

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np

jax.config.update("jax_compilation_cache_dir", None)

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from synthetic_round import build_synthetic_experiment  # noqa: E402

from fedconv_jax.data import Dataset  # noqa: E402
from fedconv_jax.experiment import round_program  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--global-width", type=float, default=1.0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    dataset = Dataset(
        name="synthetic_32x32x3", images=rng.random((6000, 32, 32, 3), dtype=np.float32),
        labels=rng.integers(0, 10, 6000).astype(np.int32), num_classes=10,
    )
    exp = build_synthetic_experiment(
        dataset, model=args.model, global_width=args.global_width, num_clients=8,
        shrink_ratios=(1.0, 1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25), local_epochs=1, pretrain_epochs=1,
        compress_epochs=1, dilate_epochs=1, aggregate_epochs=1, phase_timing=False, client_costs=False,
    )
    round_fn, inputs = round_program(exp)
    start = time.perf_counter()
    compiled = round_fn.lower(*inputs).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(compiled(*inputs))
    print(json.dumps({
        "model": args.model, "global_width": args.global_width, "compile_seconds": round(compile_s, 1),
        "round_seconds": round(time.perf_counter() - start, 1),
        "parameter_tensors": len(jax.tree.leaves(exp.state.global_vars["params"])),
    }))


if __name__ == "__main__":
    main()
