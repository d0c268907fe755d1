"""Client-training throughput: the compiled round's clients phase vs a Python step loop.

Measures client-steps per second of local training of the paper's MNIST CNN (batch 32,
Adam 1e-3) on synthetic MNIST-shaped data held on the device, in two ways that do the same
math:

* compiled: K clients, each a padded `IndexSet` of n samples, trained for E epochs by
  `fedconv_jax.client.local_train` under `jax.jit(jax.vmap(...))` ("vmap") or
  `jax.jit(lax.map(..., batch_size=chunk))` ("map"), exactly as round.py's clients phase
  calls it. Compilation is timed separately (AOT `lower().compile()`); the calls after it
  are timed.
* loop: one jitted Adam step (same masked cross-entropy, same model apply, same batch
  gathers from the device arrays, same all-padding guard) called from Python over clients,
  epochs and batches, with the same shuffles (`shuffled_batches`, jitted) and keys; blocks
  once at the end. The first call (which compiles) is a warm-up; the calls after it are
  timed, and "compile s" is the first call's excess over their median.

Each reported time is the median of up to `--repeats` calls; a configuration stops
repeating once its timed calls have used `--budget-s` seconds (slow ones get one call).
Both are run for conv_impl "im2col" and "lax". A client-step is one batch of one client:
K * E * ceil(n / 32) per call. The loop's final parameters are checked against the
compiled ones (max abs difference is reported).

Usage (from the repository root)::

    python benchmarks/round_throughput.py
    python benchmarks/round_throughput.py --quick   # K=4, n=320, 1 repeat; < 1 minute

Results go to benchmarks/results/round_throughput.json (round_throughput_quick.json with
`--quick`) unless `--out` is given. The last printed line is
`compiled_vs_loop_im2col=<x> compiled_vs_loop_lax=<y>`: the best compiled strategy's
throughput over the loop's, per conv_impl.
"""

import argparse
import functools
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedconv_jax.client import local_train
from fedconv_jax.models.zoo import make_model
from fedconv_jax.tuning import IndexSet, masked_cross_entropy, shuffled_batches

RESULTS = pathlib.Path(__file__).parent / "results"
CONV_IMPLS = ("im2col", "lax")


def synthetic_data(key, n_images: int) -> tuple[jax.Array, jax.Array]:
    """Uniform [0, 1) images (n, 28, 28, 1) and uniform labels in 0..9, on the device."""
    k_img, k_lab = jax.random.split(key)
    images = jax.random.uniform(k_img, (n_images, 28, 28, 1), jnp.float32)
    labels = jax.random.randint(k_lab, (n_images,), 0, 10, jnp.int32)
    return images, labels


def client_index_sets(
    rng: np.random.Generator, clients: int, n: int, n_images: int, batch: int
) -> IndexSet:
    """(clients, n_pad) index lists: n valid random indices each, padded to whole batches."""
    n_pad = -(-n // batch) * batch
    idx = np.zeros((clients, n_pad), np.int32)
    mask = np.zeros((clients, n_pad), bool)
    for c in range(clients):
        idx[c, :n] = rng.choice(n_images, n, replace=False)
        mask[c, :n] = True
    return IndexSet(jnp.asarray(idx), jnp.asarray(mask))


def timed_calls(fn, repeats: int, budget_s: float) -> tuple[list[float], object]:
    """Up to `repeats` timed calls, stopping early once they have used `budget_s` seconds.

    Returns the seconds of each call and the last call's output.
    """
    times, out = [], None
    while len(times) < repeats and sum(times) < budget_s:
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times, out


def bench_compiled(
    model, variables, images, labels, data, keys, args, strategy: str
) -> tuple[dict, dict]:
    """vmap / lax.map over clients of `local_train`, jitted as one program."""
    apply_fn = functools.partial(model.apply, 1.0)  # as round.py's `apply_at(1.0)`

    def run(variables, images, labels, data, keys):
        def one_client(train_set, k):
            return local_train(
                apply_fn,
                variables,
                images,
                labels,
                train_set,
                k,
                epochs=args.epochs,
                batch_size=args.batch,
                lr=args.lr,
            )

        if strategy == "vmap":
            return jax.vmap(one_client)(data, keys)
        return jax.lax.map(
            lambda a: one_client(*a), (data, keys), batch_size=args.chunk
        )

    inputs = (variables, images, labels, data, keys)
    start = time.perf_counter()
    compiled = jax.jit(run).lower(*inputs).compile()
    compile_s = time.perf_counter() - start
    times, out = timed_calls(lambda: compiled(*inputs), args.repeats, args.budget_s)
    return {"compile_s": compile_s, "times_s": times}, out


def bench_loop(model, variables, images, labels, data, keys, args) -> tuple[dict, list]:
    """Python loop over clients, epochs and batches of one jitted Adam step."""
    optimizer = optax.adam(args.lr)

    @jax.jit
    def step(carry, images, labels, batches: IndexSet, i):
        params, stats, opt_state = carry
        idx, mask = batches.idx[i], batches.mask[i]

        def loss(p):
            v = {"params": p, "batch_stats": stats}
            logits, new_stats = model.apply(1.0, v, images[idx], True)
            return masked_cross_entropy(logits, labels[idx], mask), new_stats

        grads, new_stats = jax.grad(loss, has_aux=True)(params)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new = (optax.apply_updates(params, updates), new_stats, new_opt_state)
        keep = jnp.any(mask)
        return jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, carry)

    @jax.jit
    def client_epochs(data_c: IndexSet, key):
        """Every epoch's shuffled (n_batches, batch) index sets, as local_train draws them."""
        ks = jax.random.split(key, args.epochs)
        return jax.vmap(lambda k: shuffled_batches(k, data_c, args.batch))(ks)

    opt_init = jax.jit(optimizer.init)
    clients = data.idx.shape[0]
    per_client = [IndexSet(data.idx[c], data.mask[c]) for c in range(clients)]
    per_key = [keys[c] for c in range(clients)]
    n_batches = -(-data.idx.shape[1] // args.batch)
    steps = [jnp.int32(i) for i in range(n_batches)]

    def run():
        results = []
        for c in range(clients):
            epochs = client_epochs(per_client[c], per_key[c])
            carry = (variables["params"], variables["batch_stats"])
            carry = (*carry, opt_init(variables["params"]))
            for e in range(args.epochs):
                batches = IndexSet(epochs.idx[e], epochs.mask[e])
                for i in steps:
                    carry = step(carry, images, labels, batches, i)
            results.append({"params": carry[0], "batch_stats": carry[1]})
        return results

    start = time.perf_counter()
    jax.block_until_ready(run())  # compiles the step, then runs once (warm-up)
    first_s = time.perf_counter() - start
    times, out = timed_calls(run, args.repeats, args.budget_s)
    compile_s = max(first_s - statistics.median(times), 0.0)
    return {
        "compile_s": compile_s,
        "times_s": times,
        "compile_note": "first - median",
    }, out


def max_abs_diff(stacked, per_client: list) -> float:
    diffs = []
    for c, tree in enumerate(per_client):
        ref = jax.tree.map(lambda x, c=c: x[c], stacked)
        diffs += jax.tree.leaves(
            jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), ref, tree)
        )
    return max(diffs)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="K clients (all SR 1.0)")
    parser.add_argument("--samples", type=int, default=640, help="n samples per client")
    parser.add_argument("--epochs", type=int, default=1, help="E local epochs")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--chunk", type=int, default=4, help="lax.map batch_size")
    parser.add_argument("--images", type=int, default=20_000, help="synthetic set size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--budget-s", type=float, default=30.0, help="stop repeating after this long"
    )
    parser.add_argument("--conv-impls", nargs="+", default=list(CONV_IMPLS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="K=4, n=320, 1 repeat, chunk 2"
    )
    parser.add_argument("--out", help="JSON path (default: benchmarks/results/...)")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.samples, args.repeats, args.chunk = 4, 320, 1, 2
    suffix = "_quick" if args.quick else ""
    out_path = pathlib.Path(args.out or RESULTS / f"round_throughput{suffix}.json")
    t0 = time.perf_counter()
    load_start = os.getloadavg()

    key = jax.random.key(args.seed)
    images, labels = synthetic_data(jax.random.fold_in(key, 0), args.images)
    rng = np.random.default_rng(args.seed)
    data = client_index_sets(rng, args.clients, args.samples, args.images, args.batch)
    keys = jax.random.split(jax.random.fold_in(key, 1), args.clients)
    steps_per_epoch = data.idx.shape[1] // args.batch
    client_steps = args.clients * args.epochs * steps_per_epoch

    rows, agreement = [], {}
    for impl in args.conv_impls:
        model = make_model("cnn", 10, (28, 28, 1), impl)
        variables = model.init(jax.random.fold_in(key, 2))
        inputs = (model, variables, images, labels, data, keys)
        outs = {}
        for strategy in ("vmap", "map", "loop"):
            if strategy == "loop":
                res, outs[strategy] = bench_loop(*inputs, args)
            else:
                res, outs[strategy] = bench_compiled(*inputs, args, strategy)
            sec = statistics.median(res["times_s"])
            row = {
                "strategy": strategy,
                "conv_impl": impl,
                "client_steps": client_steps,
                "seconds": sec,
                "client_steps_per_s": client_steps / sec,
                "ms_per_client_step": 1e3 * sec / client_steps,
                "calls": len(res["times_s"]),
                **res,
            }
            rows.append(row)
            print(
                f"{strategy:>4} {impl:>6}: {row['client_steps_per_s']:8.1f} steps/s"
                f" ({sec:.2f} s/call, compile {res['compile_s']:.1f} s)",
                flush=True,
            )
        agreement[impl] = {
            s: max_abs_diff(outs[s]["params"], [o["params"] for o in outs["loop"]])
            for s in ("vmap", "map")
        }

    def rate(strategy, impl):
        return next(
            r["client_steps_per_s"]
            for r in rows
            if r["strategy"] == strategy and r["conv_impl"] == impl
        )

    ratios = {}
    for impl in args.conv_impls:
        best = max(("vmap", "map"), key=lambda s: rate(s, impl))
        ratios[impl] = {
            "best_compiled": best,
            "compiled_vs_loop": rate(best, impl) / rate("loop", impl),
            "vmap_vs_loop": rate("vmap", impl) / rate("loop", impl),
            "map_vs_loop": rate("map", impl) / rate("loop", impl),
        }

    print(
        f"\nK={args.clients} clients x n={args.samples} samples x E={args.epochs} epochs,"
        f" batch {args.batch}: {client_steps} client-steps per call;"
        f" median of <= {args.repeats} calls; lax.map batch_size={args.chunk}\n"
    )
    print(
        "| strategy | conv_impl | client-steps/s | ms / client-step | compile s | calls |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['strategy']} | {r['conv_impl']} | {r['client_steps_per_s']:.1f}"
            f" | {r['ms_per_client_step']:.2f} | {r['compile_s']:.1f} | {r['calls']} |"
        )
    print()
    for impl, r in ratios.items():
        print(
            f"{impl}: vmap/loop {r['vmap_vs_loop']:.2f}x, map/loop {r['map_vs_loop']:.2f}x;"
            f" max |compiled - loop| param diff: vmap {agreement[impl]['vmap']:.2e},"
            f" map {agreement[impl]['map']:.2e}"
        )

    report = {
        "command": " ".join(["python", *sys.argv]),
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "settings": {**vars(args), "steps_per_epoch": steps_per_epoch},
        "client_steps_per_call": client_steps,
        "results": rows,
        "ratios": ratios,
        "max_abs_param_diff_vs_loop": agreement,
        "total_seconds": time.perf_counter() - t0,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out_path} ({report['total_seconds']:.0f} s total)")
    print(
        " ".join(
            f"compiled_vs_loop_{impl}={r['compiled_vs_loop']:.2f}"
            for impl, r in ratios.items()
        )
    )
    return report


if __name__ == "__main__":
    main()
