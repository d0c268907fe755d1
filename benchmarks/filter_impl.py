"""The filters' 2-D correlation per implementation: one dilation tuning step, and each tensor.

A dilation step is the value and gradient (w.r.t. the dilation filters) of the full MNIST
CNN's loss on a batch of 32, the model's parameters generated from a client model of SR 0.75
or 0.25 (what 20 epochs x 16 clients of a paper round repeat 26,000 times). Also timed: the
filters alone (value and gradient of a sum of squares of the dilated tensors), and each
tensor's transposed correlation by itself. Median of --repeats calls, one process, the
implementations interleaved per measurement.

    python benchmarks/filter_impl.py            # matmul, fft, conv; 30 repeats
    python benchmarks/filter_impl.py --quick    # matmul, fft; 5 repeats
"""

import argparse
import json
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from fedconv_jax.algorithms.fedconv.dilation import dilate, init_dilation_filters
from fedconv_jax.algorithms.fedconv.filters import FilterConfig
from fedconv_jax.core.tuning import masked_cross_entropy
from fedconv_jax.models import make_model

RESULTS = pathlib.Path(__file__).parent / "results"


def median_ms(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def dilation_programs(model, small, impl):
    """(step, filters-only) jitted value-and-grad functions and the filters they take."""
    config = FilterConfig(impl=impl)
    big = jax.eval_shape(lambda: model.init(jax.random.key(0), 1.0))["params"]
    filters = init_dilation_filters(jax.random.key(3), big, small, config)
    images = jax.random.uniform(jax.random.key(1), (32, *model.input_shape))
    labels, mask = jnp.arange(32) % 10, jnp.ones(32, bool)

    def loss(f):
        params = dilate(small, f, config)
        return masked_cross_entropy(model.apply(1.0, {"params": params, "batch_stats": {}}, images)[0], labels, mask)

    def filters_only(f):
        return sum(jnp.sum(t**2) for t in jax.tree.leaves(dilate(small, f, config)))

    return jax.jit(jax.value_and_grad(loss)), jax.jit(jax.value_and_grad(filters_only)), filters


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    impls = ("matmul", "fft") if args.quick else ("matmul", "fft", "conv")
    repeats = args.repeats or (5 if args.quick else 30)
    load_start = os.getloadavg()
    model = make_model("cnn", 10, (28, 28, 1), "im2col")
    rows = []
    for ratio in (0.75, 0.25):
        small = model.init(jax.random.key(2), ratio)["params"]
        programs = {impl: dilation_programs(model, small, impl) for impl in impls}
        row = {"ratio": ratio, "step_ms": {}, "filters_ms": {}, "tensor_ms": {}}
        for impl, (step, filters_only, filters) in programs.items():
            row["step_ms"][impl] = median_ms(step, filters, repeats=repeats)
            row["filters_ms"][impl] = median_ms(filters_only, filters, repeats=repeats)
        leaves = jax.tree_util.tree_flatten_with_path(small)[0]
        for path, tensor in leaves:
            name = jax.tree_util.keystr(path)
            row["tensor_ms"][name] = {}
            for impl, (_, _, filters) in programs.items():
                f = filters
                for key in path:
                    f = f[key.key]
                config = FilterConfig(impl=impl)
                fn = jax.jit(jax.value_and_grad(lambda f, t=tensor, c=config: jnp.sum(dilate(t, f, c) ** 2)))
                row["tensor_ms"][name][impl] = median_ms(fn, f, repeats=repeats)
        rows.append(row)
        print(f"\nSR {ratio}: value and gradient, ms (median of {repeats})")
        print("| what | " + " | ".join(impls) + " |")
        print("|---|" + "---|" * len(impls))
        print("| dilation step (model + filters) | " + " | ".join(f"{row['step_ms'][i]:.2f}" for i in impls) + " |")
        print("| filters alone | " + " | ".join(f"{row['filters_ms'][i]:.2f}" for i in impls) + " |")
        for name, per in row["tensor_ms"].items():
            print(f"| {name} | " + " | ".join(f"{per[i]:.2f}" for i in impls) + " |")
    out = RESULTS / f"filter_impl{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": "python benchmarks/filter_impl.py" + (" --quick" if args.quick else ""),
        "jax_version": jax.__version__, "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "load_average_start": load_start, "load_average_end": os.getloadavg(), "repeats": repeats, "rows": rows,
    }, indent=2))
    speedups = [r["step_ms"]["matmul"] / r["step_ms"]["fft"] for r in rows]
    print(f"\nload average {load_start[0]:.1f} -> {os.getloadavg()[0]:.1f}; wrote {out}")
    print("dilation_step_speedup_fft_vs_matmul=" + ",".join(f"{s:.2f}" for s in speedups))


if __name__ == "__main__":
    main()
