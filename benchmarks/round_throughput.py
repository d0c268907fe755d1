"""Target 1: client-training throughput of the compiled round vs PyTorch eager and a step loop.

Client training of the paper's MNIST CNN (batch 32, Adam 1e-3) on synthetic MNIST-shaped
data held on the device, K clients x n samples x E epochs, done five ways in ONE process
with interleaved repeats (so machine load hits all alike):

* ``map`` / ``vmap``: `fedconv_jax.core.client.local_train` over clients under one jit, as the
  round's clients phase runs it (`lax.map` with batch_size ``--chunk``, or `vmap`);
* ``map@D``: the same with the client axis sharded over D XLA:CPU devices (shard_map, as
  the round does with ``--config.devices=D``; one device per core);
* ``loop``: one jitted Adam step called from Python per batch (same math and shuffles);
* ``torch``: PyTorch eager, the same model and steps (benchmarks/torch_peer.py; ``nan``
  where torch is not importable).

FLOPs per client-step are counted analytically (forward MACs x 2, backward twice the
forward except the first conv, whose input gradient is not needed) and compared with an
fp32 2048x2048 matmul timed in the same run. Compilation is excluded (AOT compile, or one
warm-up call). Each reported time is the median over ``--repeats`` interleaved calls.

Usage (from the repository root)::

    python benchmarks/round_throughput.py           # K=8, n=640, 5 repeats
    python benchmarks/round_throughput.py --quick   # K=4, n=320, 3 repeats; < 1 minute
    python benchmarks/round_throughput.py --conv-impl lax --strategies map vmap   # lax.conv model

Writes benchmarks/results/round_throughput{,_quick}.json. The last line is
``speedup_vs_pytorch=<x> speedup_vs_loop=<y> matmul_fraction=<z>`` for the best compiled
strategy.
"""

import argparse
import functools
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import time

import jax

jax.config.update("jax_num_cpu_devices", max(2, os.cpu_count() or 1))  # before JAX starts

import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import torch_peer

from fedconv_jax.core.client import local_train, map_clients
from fedconv_jax.core.sharding import make_client_mesh, map_clients_sharded
from fedconv_jax.core.tuning import IndexSet, masked_cross_entropy, shuffled_batches
from fedconv_jax.models.zoo import make_model

RESULTS = pathlib.Path(__file__).parent / "results"


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


def make_loop(model, variables, images, labels, data, keys, args):
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

    return run


def max_abs_diff(stacked, per_client: list) -> float:
    diffs = []
    for c, tree in enumerate(per_client):
        ref = jax.tree.map(lambda x, c=c: x[c], stacked)
        diffs += jax.tree.leaves(
            jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), ref, tree)
        )
    return max(diffs)



def make_compiled(model, variables, images, labels, data, keys, args, strategy: str):
    """`local_train` over clients under one jit: "vmap", "map" or "map@D" (D devices)."""
    apply_fn = functools.partial(model.apply, 1.0)  # as round.py's `apply_at(1.0)`

    def one_client(shared, train_set, k):
        variables, images, labels = shared
        return local_train(
            apply_fn, variables, images, labels, train_set, k, epochs=args.epochs, batch_size=args.batch, lr=args.lr
        )

    def local_map(shared, data, keys):
        one = functools.partial(one_client, shared)
        return map_clients("vmap" if strategy == "vmap" else "map", args.chunk, one, data, keys)

    shared = (variables, images, labels)
    if "@" in strategy:
        mesh = make_client_mesh(int(strategy.split("@")[1]))

        def run(shared, data, keys):
            return map_clients_sharded(mesh, local_map, shared, data, keys)
    else:
        run = local_map
    compiled = jax.jit(run).lower(shared, data, keys).compile()
    return lambda: compiled(shared, data, keys)


def step_flops(batch: int, height: int = 28, width: int = 28, widths=(16, 32), classes: int = 10) -> float:
    """Analytic FLOPs of one training step (forward + backward, 1 FLOP = 1 add or mul)."""
    conv1 = height * width * 9 * 1 * widths[0]
    conv2 = (height // 2) * (width // 2) * 9 * widths[0] * widths[1]
    dense = (height // 4) * (width // 4) * widths[1] * classes
    forward = conv1 + conv2 + dense
    backward = conv1 + 2 * (conv2 + dense)  # weight grads everywhere, input grads not for conv1
    return 2.0 * batch * (forward + backward)


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(a))
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(f(a))
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="K clients (all SR 1.0)")
    parser.add_argument("--samples", type=int, default=640, help="n samples per client")
    parser.add_argument("--epochs", type=int, default=1, help="E local epochs")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--chunk", type=int, default=1, help="lax.map batch_size")
    parser.add_argument("--devices", type=int, default=2, help="D of the sharded strategy")
    parser.add_argument("--images", type=int, default=20_000, help="synthetic set size")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--strategies", nargs="+", default=None)
    parser.add_argument(
        "--conv-impl", choices=("im2col", "lax"), default="im2col",
        help="convolution of the JAX model (models/layers.py); torch is unaffected",
    )
    parser.add_argument("--torch-threads", type=int, default=0, help="0 = torch's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="K=4, n=320, 3 repeats")
    parser.add_argument("--out", help="JSON path (default: benchmarks/results/...)")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.samples, args.repeats = 4, 320, 3
    strategies = args.strategies or ["map", "vmap", f"map@{args.devices}", "loop", "torch"]
    out_path = pathlib.Path(args.out or RESULTS / f"round_throughput{'_quick' if args.quick else ''}.json")
    t0 = time.perf_counter()
    load_start = os.getloadavg()

    key = jax.random.key(args.seed)
    images, labels = synthetic_data(jax.random.fold_in(key, 0), args.images)
    rng = np.random.default_rng(args.seed)
    data = client_index_sets(rng, args.clients, args.samples, args.images, args.batch)
    keys = jax.random.split(jax.random.fold_in(key, 1), args.clients)
    steps_per_epoch = data.idx.shape[1] // args.batch
    client_steps = args.clients * args.epochs * steps_per_epoch
    flops = step_flops(args.batch)
    model = make_model("cnn", 10, (28, 28, 1), args.conv_impl)
    variables = model.init(jax.random.fold_in(key, 2))
    inputs = (model, variables, images, labels, data, keys)

    runners, compile_s, outs = {}, {}, {}
    for strategy in strategies:
        start = time.perf_counter()
        if strategy == "torch":
            if not torch_peer.available():
                print("torch not importable: torch column is nan", flush=True)
                continue
            if args.torch_threads:
                import torch

                torch.set_num_threads(args.torch_threads)  # oversubscribed cores: OpenMP spin-waits
            run = torch_peer.make_runner(
                np.asarray(images), np.asarray(labels), np.asarray(data.idx), args.epochs, args.batch, args.lr
            )
            run()  # warm-up
            runners[strategy] = run
        else:
            fn = make_loop(*inputs, args) if strategy == "loop" else make_compiled(*inputs, args, strategy)
            outs[strategy] = jax.block_until_ready(fn())  # compile (AOT or first call) + warm-up

            def timed(fn=fn):
                start = time.perf_counter()
                jax.block_until_ready(fn())
                return time.perf_counter() - start

            runners[strategy] = timed
        compile_s[strategy] = time.perf_counter() - start
        print(f"ready {strategy} ({compile_s[strategy]:.1f} s incl. compile + warm-up)", flush=True)

    rate = matmul_gflops()
    times = {s: [] for s in runners}
    for _ in range(args.repeats):  # interleaved: load drifts hit every strategy alike
        for strategy, run in runners.items():
            times[strategy].append(run())
    rate_end = matmul_gflops()
    matmul_rate = max(rate, rate_end)

    rows = []
    for strategy in strategies:
        sec = statistics.median(times[strategy]) if strategy in times else math.nan
        steps_per_s = client_steps / sec
        rows.append({
            "strategy": strategy,
            "seconds": sec,
            "client_steps_per_s": steps_per_s,
            "ms_per_client_step": 1e3 * sec / client_steps,
            "gflops": flops * steps_per_s / 1e9,
            "matmul_fraction": flops * steps_per_s / 1e9 / matmul_rate,
            "times_s": times.get(strategy, []),
            "setup_s": compile_s.get(strategy, math.nan),
        })
    by = {r["strategy"]: r for r in rows}
    compiled = [r for r in rows if r["strategy"] not in ("loop", "torch")]
    best = max(compiled, key=lambda r: r["client_steps_per_s"])
    loop_ref = next((s for s in outs if s == "loop"), None)
    agreement = {
        s: max_abs_diff(outs[s]["params"], [o["params"] for o in outs[loop_ref]])
        for s in outs if s != "loop" and loop_ref
    }

    print(
        f"\nK={args.clients} clients x n={args.samples} samples x E={args.epochs} epochs, batch {args.batch}:"
        f" {client_steps} client-steps per call; {args.conv_impl} convolutions; {flops / 1e6:.1f} MFLOP per step; median of {args.repeats}"
        f" interleaved calls; lax.map batch_size={args.chunk}; fp32 2048^2 matmul {matmul_rate:.1f} GFLOP/s"
        f" (start {rate:.1f}, end {rate_end:.1f})\n"
    )
    print("| strategy | client-steps/s | ms / client-step | GFLOP/s | of matmul rate |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['strategy']} | {r['client_steps_per_s']:.1f} | {r['ms_per_client_step']:.2f}"
            f" | {r['gflops']:.1f} | {100 * r['matmul_fraction']:.1f}% |"
        )
    print("\nmax |param - loop param| per strategy: " + ", ".join(f"{s} {d:.1e}" for s, d in agreement.items()))
    torch_rate = by["torch"]["client_steps_per_s"] if "torch" in by else math.nan
    loop_rate = by["loop"]["client_steps_per_s"] if "loop" in by else math.nan
    summary = {
        "best_compiled": best["strategy"],
        "speedup_vs_pytorch": best["client_steps_per_s"] / torch_rate,
        "speedup_vs_loop": best["client_steps_per_s"] / loop_rate,
        "matmul_fraction": best["matmul_fraction"],
    }
    report = {
        "command": " ".join(["python", *sys.argv]),
        "jax_version": jax.__version__,
        "torch": torch_peer.versions() if torch_peer.available() else None,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "settings": {**vars(args), "steps_per_epoch": steps_per_epoch, "strategies": strategies},
        "client_steps_per_call": client_steps,
        "flops_per_client_step": flops,
        "matmul_gflops": matmul_rate,
        "results": rows,
        "max_abs_param_diff_vs_loop": agreement,
        "summary": summary,
        "total_seconds": time.perf_counter() - t0,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2))
    print(f"best compiled: {best['strategy']}; load average {load_start[0]:.1f} -> {os.getloadavg()[0]:.1f};"
          f" wrote {out_path} ({report['total_seconds']:.0f} s total)")
    print(
        f"speedup_vs_pytorch={summary['speedup_vs_pytorch']:.2f} speedup_vs_loop={summary['speedup_vs_loop']:.2f}"
        f" matmul_fraction={summary['matmul_fraction']:.3f}"
    )
    return report


if __name__ == "__main__":
    main()
