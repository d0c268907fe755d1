"""Compile time and seconds of one 4-tier FedConv round program per model family.

Synthetic 32x32x3 data (compile time depends on shapes only), 8 clients at SR 1, 1, 0.75,
0.75, 0.5, 0.5, 0.25, 0.25, one epoch in every loop, persistent compilation cache off:

    python benchmarks/family_round.py --model cnn
    python benchmarks/family_round.py --model resnet18 --global-width 0.125
    python benchmarks/family_round.py --model resnet18 --lower-only   # program size, no compile

The program size is the number of StableHLO operations of the lowered round (`--lower-only`
stops there: it takes seconds where the compile takes minutes).
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
    parser.add_argument("--lower-only", action="store_true", help="report the program size, do not compile")
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
    lowered = round_fn.lower(*inputs)
    result = {
        "model": args.model, "global_width": args.global_width,
        "parameter_tensors": len(jax.tree.leaves(exp.state.global_vars["params"])),
        "lower_seconds": round(time.perf_counter() - start, 1),
        "stablehlo_ops": sum(" = " in line for line in lowered.as_text().splitlines()),
    }
    if not args.lower_only:
        start = time.perf_counter()
        compiled = lowered.compile()
        result["compile_seconds"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        jax.block_until_ready(compiled(*inputs))
        result["round_seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
