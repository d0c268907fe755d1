"""Seconds per client training step (batch 32) per model family, width and conv implementation.

Adam steps (forward, backward, update) on synthetic data of the family's example input,
inside a `lax.scan` of `--steps` steps as client training runs them (XLA:CPU runs a
`lax.conv` gradient inside a scan far slower than alone); persistent cache off; median of
`--repeats` timed calls after a warm-up call, divided by the steps.

    python benchmarks/step_time.py --out benchmarks/results/step_time.json
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from fedconv_jax.core.tuning import masked_cross_entropy
from fedconv_jax.models import make_model
from fedconv_jax.models.zoo import example_model

FAMILIES = ("cnn", "resnet18", "har_wiar", "har_dcd", "har_harbox")


def step_seconds(name: str, width: float, impl: str, repeats: int, steps: int = 4, batch: int = 32) -> dict:
    shape = example_model(name).input_shape
    model = make_model(name, 10, shape, impl, width)
    variables = model.init(jax.random.key(0))
    optimizer = optax.flatten(optax.adam(1e-3))
    x = jax.random.uniform(jax.random.key(1), (batch, *shape))
    y = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
    mask = jnp.ones((batch,), bool)

    def one_step(carry, _):
        params, stats, opt_state = carry

        def loss(p):
            logits, new_stats = model.apply(1.0, {"params": p, "batch_stats": stats}, x, True)
            return masked_cross_entropy(logits, y, mask), new_stats

        grads, new_stats = jax.grad(loss, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), new_stats, opt_state), None

    run = jax.jit(lambda carry: jax.lax.scan(one_step, carry, None, length=steps)[0])
    carry = (variables["params"], variables["batch_stats"], optimizer.init(variables["params"]))
    start = time.perf_counter()
    compiled = run.lower(carry).compile()
    compile_s = time.perf_counter() - start
    carry = jax.block_until_ready(compiled(carry))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        carry = jax.block_until_ready(compiled(carry))
        times.append((time.perf_counter() - start) / steps)
    return {
        "model": name, "global_width": width, "conv_impl": impl, "batch": batch,
        "parameters": sum(int(v.size) for v in jax.tree.leaves(variables["params"])),
        "step_ms": round(1e3 * statistics.median(times), 2), "compile_seconds": round(compile_s, 1),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(FAMILIES))
    parser.add_argument("--widths", default="1,0.125")
    parser.add_argument("--impls", default="im2col,lax")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    jax.config.update("jax_compilation_cache_dir", None)
    rows = []
    for name in args.models.split(","):
        for width in map(float, args.widths.split(",")):
            if not example_model(name, width).fits(1.0):
                continue  # the HAR CNNs' 16 channels at 1/8 width are 2: kept; 0 would be skipped
            for impl in args.impls.split(","):
                rows.append(step_seconds(name, width, impl, args.repeats))
                print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"jax": jax.__version__, "backend": jax.default_backend(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
