"""Research that needs exact gradients through rounds: a hypergradient client learning rate
per tier, and compression filters meta-learned for the global loss after the round.

`lr`: FedHyper's idea with the exact hypergradient. The per-tier client learning rate
(`local_lr` as a (num_tiers,) vector, in log space) starts 10x too small or 10x too large and
is learned by Adam on d holdout_loss / d log(lr) through the last `window` rounds: each window
is run once, forward and backward, and its final state is the next window's start, so every
round trains the federation exactly once. Compared with the best of a grid of one shared rate
run by the sweep machinery (`fedconv-jax sweep`), in seconds measured in the same process.

`compression`: FedConv tunes each tier's compression filters for the sub-model's own loss on
D (`own`). `meta` tunes them instead for the held-out loss of the global model after client
training, dilation and aggregation (a second-order objective through every client): no
own-loss epochs, and `--meta-steps` Adam steps per round on d holdout_loss(round(state)) /
d compression, the last evaluation's round being the round that is kept. `none` keeps the
identity-initialised filters (no tuning at all), as the control.

    python benchmarks/hypergrad.py lr --quick --out benchmarks/results/hypergrad_lr_quick.json
    python benchmarks/hypergrad.py compression --quick --out benchmarks/results/hypergrad_compression_quick.json
    python benchmarks/hypergrad.py lr --out benchmarks/results/hypergrad_lr_mnist.json   # MNIST, reduced epochs
    python benchmarks/hypergrad.py compression --set alpha=0.1 --out ...                   # MNIST, alpha 0.1

MNIST needs `fedconv-jax data import mnist` once (README, "Data sets").
"""

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import fedconv_jax as fc
from fedconv_jax.config import apply_overrides
from fedconv_jax.sweep import run_sweep

# --quick: bundled digits (configs/smoke.py, 10 clients in 3 SR tiers), one epoch per loop, the
# client lr the lr experiment's grid found best there (at 1e-3 the model is at 30% after 6 rounds).
QUICK = {"config": "configs/smoke.py", "rounds": 6, "windows": "1,2",
         "set": {"local_lr": 1e-2, "local_epochs": 1, "pretrain_epochs": 5, "compress_epochs": 1, "dilate_epochs": 1,
                 "aggregate_epochs": 1}}
# Full: the paper's MNIST setting (20 clients, SR 4x1, 8x0.75, 4x0.5, 4x0.25), reduced epochs.
# Reverse mode through 20 clients' local training needs remat here (about 17 GB without).
FULL = {"config": "configs/mnist.py", "rounds": 6, "windows": "1",
        "set": {"local_epochs": 1, "pretrain_epochs": 2, "compress_epochs": 1, "dilate_epochs": 1,
                "aggregate_epochs": 1, "remat": "true"}}
GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def _experiment(args, **extra):
    config = fc.load_config(args.config)
    apply_overrides(config, {**args.overrides, "phase_timing": "false", "client_costs": "false",
                             "rounds": str(args.rounds), **extra})
    fc.validate(config)
    return config, fc.build_experiment(config)


def _round_rows(metrics, rounds_done, **fields):
    """One row per round of a window's stacked metrics."""
    metrics = jax.device_get(metrics)
    rows = []
    for i in range(len(metrics["global_accuracy"])):
        row = {"round": rounds_done + i + 1, "global_accuracy": float(metrics["global_accuracy"][i])}
        for name, value in metrics.items():
            if name.startswith("compress/") and name.endswith("/test_accuracy"):
                row[name] = float(value[i])
        row.update(fields)
        rows.append(row)
    return rows


def _print(row):
    print(json.dumps(row), flush=True)


def learn_lr(exp, start_lr: float, window: int, rounds: int, meta_lr: float, compiled: dict):
    """Per-tier client learning rate learned by its exact hypergradient, one Adam step on
    log(lr) per window of `window` rounds. Returns (rows, seconds without compile, compile seconds)."""
    tiers = len(exp.spec.tier_ratios)
    if window not in compiled:
        unrolled = fc.unroll(exp.algorithm, window)

        def objective(log_lr, state):
            final, metrics = unrolled(state, exp.data, {**exp.hparams, "local_lr": jnp.exp(log_lr)})
            return fc.holdout_loss(exp.algorithm, final, exp.data), (final, metrics)

        start = time.perf_counter()
        step = jax.jit(jax.value_and_grad(objective, has_aux=True))
        step = step.lower(jnp.zeros(tiers), exp.state).compile()
        compiled[window] = (step, time.perf_counter() - start)
    step, compile_seconds = compiled[window]
    optimizer = optax.adam(meta_lr)
    log_lr = jnp.full(tiers, math.log(start_lr), jnp.float32)
    opt_state = optimizer.init(log_lr)
    state, rows, seconds = exp.state, [], 0.0
    for done in range(0, rounds, window):
        start = time.perf_counter()
        (loss, (state, metrics)), grad = jax.block_until_ready(step(log_lr, state))
        finite = bool(jnp.all(jnp.isfinite(grad)))
        lrs = [float(x) for x in jnp.exp(log_lr)]  # the rates this window trained with
        if finite:  # a non-finite hypergradient skips the step (counted in the rows)
            updates, opt_state = optimizer.update(grad, opt_state)
            log_lr = optax.apply_updates(log_lr, updates)
        seconds += time.perf_counter() - start
        for row in _round_rows(metrics, done, local_lr=lrs, holdout_loss=float(loss), finite_grad=finite):
            rows.append(row)
            _print({"start_lr": start_lr, "window": window, **row})
    return rows, seconds, compile_seconds


def lr_experiment(args, save):
    config, exp = _experiment(args)
    results = {"grid": [], "hypergrad": []}
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        summaries = run_sweep(config, {"local_lr": GRID}, Path(workdir) / "grid", progress=False)
        grid_seconds = time.perf_counter() - start
    for s in summaries:
        results["grid"].append({k: s[k] for k in ("local_lr", "final_global_accuracy", "best_global_accuracy",
                                                   "seconds_per_round", "compile_seconds")})
        _print({"grid": results["grid"][-1]})
    best = max(results["grid"], key=lambda s: s["final_global_accuracy"])  # on the test set: the grid's favour
    results["grid_best"] = {**best, "total_seconds": round(grid_seconds, 1), "runs": len(GRID)}
    save(results)
    compiled = {}
    for window in args.windows:
        for factor in (0.1, 10.0):  # a bad start: 10x off the grid's best
            start_lr = factor * best["local_lr"]
            rows, seconds, compile_seconds = learn_lr(exp, start_lr, window, args.rounds, args.meta_lr, compiled)
            results["hypergrad"].append({
                "start_lr": start_lr, "window": window, "rows": rows,
                "final_global_accuracy": rows[-1]["global_accuracy"], "final_local_lr": rows[-1]["local_lr"],
                "seconds": round(seconds, 1), "compile_seconds": round(compile_seconds, 1),
            })
            save(results)
    return results


def compression_experiment(args, save):
    results = {}
    for variant in args.variants:
        extra = {} if variant == "own" else {"compress_epochs": "0"}
        _, exp = _experiment(args, **extra)
        start = time.perf_counter()
        if variant == "meta":
            rows = _meta_compression(exp, args.rounds, args.meta_steps, args.meta_lr)
        else:
            step = jax.jit(exp.algorithm.round).lower(exp.state, exp.data, exp.hparams).compile()
            holdout = jax.jit(lambda s, exp=exp: fc.holdout_loss(exp.algorithm, s, exp.data))
            state, rows = exp.state, []
            for r in range(args.rounds):
                state, metrics = step(state, exp.data, exp.hparams)
                metrics = jax.tree.map(lambda x: jnp.expand_dims(x, 0), metrics)
                loss = holdout(state)
                for row in _round_rows(metrics, r, holdout_loss=float(loss)):
                    rows.append(row)
                    _print({"variant": variant, **row})
        results[variant] = {"rows": rows, "final_global_accuracy": rows[-1]["global_accuracy"],
                            "best_global_accuracy": max(r["global_accuracy"] for r in rows),
                            "seconds_with_compile": round(time.perf_counter() - start, 1)}
        save(results)
    return results


def _meta_compression(exp, rounds: int, steps: int, meta_lr: float):
    def objective(compression, state):
        final, metrics = exp.algorithm.round(state.replace(compression=compression), exp.data, exp.hparams)
        return fc.holdout_loss(exp.algorithm, final, exp.data), (final, metrics)

    step = jax.jit(jax.value_and_grad(objective, has_aux=True))
    holdout = jax.jit(lambda s: fc.holdout_loss(exp.algorithm, s, exp.data))
    optimizer = optax.adam(meta_lr)
    compression = exp.state.compression
    opt_state = optimizer.init(compression)
    state, rows = exp.state, []
    for r in range(rounds):
        for _ in range(steps):  # the last evaluation's round is the round kept
            (_, (final, metrics)), grad = step(compression, state)
            finite = bool(all(jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grad)))
            if finite:
                updates, opt_state = optimizer.update(grad, opt_state)
                compression = optax.apply_updates(compression, updates)
        state = final
        metrics = jax.tree.map(lambda x: jnp.expand_dims(x, 0), metrics)
        for row in _round_rows(metrics, r, holdout_loss=float(holdout(state)),
                               finite_grad=finite):
            rows.append(row)
            _print({"variant": "meta", **row})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=("lr", "compression"))
    parser.add_argument("--quick", action="store_true", help="bundled digits, a few seconds per round")
    parser.add_argument("--config", default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--windows", default=None, help="lr: rounds per hypergradient step, e.g. 1,3")
    parser.add_argument("--meta-lr", type=float, default=None,
                        help="Adam lr of the outer step (lr: on log(lr), default 0.5; compression: 1e-3)")
    parser.add_argument("--meta-steps", type=int, default=1, help="compression: meta steps per round")
    parser.add_argument("--variants", default="own,none,meta", help="compression: own, none, meta")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="config override")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    args.config = args.config or preset["config"]
    args.rounds = args.rounds or preset["rounds"]
    args.windows = [int(w) for w in (args.windows or preset["windows"]).split(",")]
    args.meta_lr = args.meta_lr or (0.5 if args.experiment == "lr" else 1e-3)
    args.variants = args.variants.split(",")
    args.overrides = {**{k: str(v) for k, v in preset["set"].items()}, **dict(s.split("=", 1) for s in args.set)}
    if args.meta_steps < 1:
        parser.error(f"--meta-steps={args.meta_steps} is not allowed: an int >= 1")
    for window in args.windows:
        if args.rounds % window:
            parser.error(f"--rounds={args.rounds} is not a multiple of the window {window}")
    header = {"experiment": args.experiment, "config": args.config, "overrides": args.overrides,
              "rounds": args.rounds, "meta_lr": args.meta_lr, "backend": jax.default_backend()}
    if args.experiment == "compression":
        header["meta_steps"] = args.meta_steps
    else:
        header["windows"] = args.windows

    def save(results):  # after every run, so that an interrupted benchmark keeps what it measured
        if args.out:
            Path(args.out).write_text(json.dumps({**header, **results}, indent=1))

    run = lr_experiment if args.experiment == "lr" else compression_experiment
    results = run(args, save)
    print(json.dumps(header | _brief(results)))


def _brief(results):
    """The final accuracies only, for the last printed line."""
    brief = {}
    for name, value in results.items():
        if isinstance(value, list):
            brief[name] = [{k: v for k, v in item.items() if k != "rows"} for item in value]
        elif isinstance(value, dict) and "rows" in value:
            brief[name] = {k: v for k, v in value.items() if k != "rows"}
        else:
            brief[name] = value
    return brief


if __name__ == "__main__":
    main()
