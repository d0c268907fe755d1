"""Compression alone (paper Fig. 7a) on real MNIST: which filter set-up learns?

Pre-trains the global CNN on the 50k MNIST train split, then, for each sub-model ratio (SR)
and filter set-up, initialises compression filters and tunes them on a 3,500-sample server
set drawn from the validation split (25% of it is the held-out selection slice). Reports
sub-model accuracy on the 10k test split right after init (epoch 0) and after the last
tuning epoch (no best-epoch selection), plus the tuning time (compilation excluded).

Usage (from the repository root)::

    python benchmarks/filter_init.py --mnist /work/shared/data/mnist.pkl.gz
    python benchmarks/filter_init.py --mnist /work/shared/data/mnist.pkl.gz --quick

`--quick` runs 1 pre-training epoch on 10k train images, 1 tuning epoch, SR 0.75 only and
two set-ups (the reference code's and ours), and tests on 2k test images: a check that the
script runs, in under a minute on a 2-core CPU. Results go to
benchmarks/results/filter_init.json (filter_init_quick.json with `--quick`) unless `--out`
is given.
"""

import argparse
import dataclasses
import gzip
import json
import pathlib
import pickle
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from fedconv_jax.algorithms.fedconv.compression import (
    compress,
    init_compression_filters,
)
from fedconv_jax.algorithms.fedconv.filters import FilterConfig
from fedconv_jax.core.tuning import (
    IndexSet,
    TuningConfig,
    evaluate,
    make_optimizer,
    tune,
)
from fedconv_jax.models.zoo import ModelSpec, make_model

SETUPS = {
    "reference: random init, affine pre-proj, MLR": FilterConfig(
        init="random", mlr=True, pre_projection="affine", residual="conv"
    ),
    "paper: random init, paper pre-proj, MLR": FilterConfig(init="random", mlr=True),
    "identity init + MLR": FilterConfig(init="identity", mlr=True),
    "ours (default): identity init, no MLR": FilterConfig(init="identity", mlr=False),
}
SERVER_SIZE, HOLDOUT_FRACTION = 3500, 0.25
RESULTS = pathlib.Path(__file__).parent / "results"


def load_mnist(path: str) -> tuple[jax.Array, jax.Array, dict[str, np.ndarray]]:
    """All 70k MNIST examples on device, plus the index range of each split.

    Args:
      path: gzip'd pickle of (train, valid, test), each (images [N, 784] float32, labels).

    Returns:
      (images [70000, 28, 28, 1], labels [70000], {"train"|"valid"|"test": indices}).
    """
    with gzip.open(path) as f:
        splits = pickle.load(f, encoding="latin1")
    images = np.concatenate([s[0] for s in splits]).reshape(-1, 28, 28, 1)
    labels = np.concatenate([s[1] for s in splits]).astype(np.int32)
    ends = np.cumsum([0] + [len(s[1]) for s in splits])
    ranges = {
        n: np.arange(a, b)
        for n, a, b in zip(("train", "valid", "test"), ends, ends[1:])
    }
    return jnp.asarray(images, jnp.float32), jnp.asarray(labels), ranges


def index_set(idx: np.ndarray) -> IndexSet:
    """An unpadded `IndexSet` over the given example indices."""
    return IndexSet(jnp.asarray(idx, jnp.int32), jnp.ones(len(idx), bool))


def run_tune(logits_fn, params, data: tuple, key: jax.Array, config: TuningConfig):
    """Compiles and runs `tune` with a fresh Adam state.

    Args:
      logits_fn: (params, images) -> logits.
      params: the trainable starting point.
      data: (images, labels, train IndexSet, holdout IndexSet).
      key: shuffling key.
      config: tuning settings.

    Returns:
      (TuneResult, compile seconds, run seconds).
    """
    args = (params, make_optimizer().init(params), *data, key)
    start = time.perf_counter()
    compiled = (
        jax.jit(
            lambda p, s, im, lb, tr, ho, k: tune(
                logits_fn, p, s, im, lb, tr, ho, k, config, lr=1e-3
            )
        )
        .lower(*args)
        .compile()
    )
    compiled_at = time.perf_counter()
    result = jax.block_until_ready(compiled(*args))
    return result, compiled_at - start, time.perf_counter() - compiled_at


def make_test_accuracy(model: ModelSpec, images, labels, test: IndexSet):
    """A jitted (ratio, params) -> test accuracy of the model without BatchNorm state."""

    def accuracy(ratio: float, params) -> float:
        variables = {"params": params, "batch_stats": {}}
        logits = lambda x: model.apply(ratio, variables, x)[0]
        return evaluate(logits, images, labels, test)[0]

    jitted = jax.jit(accuracy, static_argnums=0)
    return lambda ratio, params: float(jitted(ratio, params))


def main(argv: list[str] | None = None) -> dict:
    """Runs the experiment, prints a markdown table and writes the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist", required=True, help="path to mnist.pkl.gz")
    parser.add_argument("--pretrain-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5, help="filter tuning epochs")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.75, 0.5])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="1 + 1 epochs, SR 0.75, 2 set-ups, 10k/2k images"
    )
    parser.add_argument("--out", help="JSON path (default: benchmarks/results/...)")
    parser.add_argument("--train-limit", type=int, help="pre-train on the first N train images")
    parser.add_argument("--test-limit", type=int, help="test on the first N test images")
    args = parser.parse_args(argv)
    if args.quick:
        args.pretrain_epochs, args.epochs, args.ratios = 1, 1, [0.75]
        args.train_limit, args.test_limit = args.train_limit or 10_000, args.test_limit or 2_000
    # Quick: the reference code's set-up and ours, which between them take every code path.
    setups = dict([*SETUPS.items()][:: len(SETUPS) - 1]) if args.quick else SETUPS
    out = pathlib.Path(
        args.out or RESULTS / f"filter_init{'_quick' if args.quick else ''}.json"
    )
    t0 = time.perf_counter()

    images, labels, split = load_mnist(args.mnist)
    rng = np.random.default_rng(args.seed)
    server = rng.choice(split["valid"], SERVER_SIZE, replace=False)
    n_holdout = int(SERVER_SIZE * HOLDOUT_FRACTION)
    holdout, server_train = index_set(server[:n_holdout]), index_set(server[n_holdout:])
    test = index_set(split["test"][: args.test_limit])
    model = make_model("cnn", 10, (28, 28, 1), "im2col")
    test_accuracy = make_test_accuracy(model, images, labels, test)
    key = jax.random.key(args.seed)

    # Pre-train the global model (Adam 1e-3, batch 64) on the 50k train split.
    pre_cfg = TuningConfig(
        epochs=args.pretrain_epochs, batch_size=64, select_best=False
    )
    pre, _, pre_s = run_tune(
        lambda p, x: model.apply(1.0, {"params": p, "batch_stats": {}}, x)[0],
        jax.jit(model.init)(jax.random.fold_in(key, 0))["params"],
        (images, labels, index_set(split["train"][: args.train_limit]), holdout),
        jax.random.fold_in(key, 1),
        pre_cfg,
    )
    global_params = pre.params
    global_acc = test_accuracy(1.0, global_params)
    print(
        f"global model: {global_acc:.2%} test accuracy ({pre_s:.1f} s pre-training)",
        flush=True,
    )

    tune_cfg = TuningConfig(
        epochs=args.epochs, batch_size=32, select_best=False
    )
    compress_jit = jax.jit(compress, static_argnums=2)
    # Jitted: run eagerly, the inits dispatch (and compile) about a hundred small ops each.
    init_filters_jit = jax.jit(init_compression_filters, static_argnums=3)
    rows = []
    for sr in args.ratios:
        sub_params = jax.jit(model.init, static_argnums=1)(jax.random.fold_in(key, 2), sr)["params"]
        for name, cfg in setups.items():
            filters = init_filters_jit(
                jax.random.fold_in(key, 3), global_params, sub_params, cfg
            )

            def logits_fn(f, x, sr=sr, cfg=cfg):
                sub = {"params": compress(global_params, f, cfg), "batch_stats": {}}
                return model.apply(sr, sub, x)[0]

            result, compile_s, run_s = run_tune(
                logits_fn,
                filters,
                (images, labels, server_train, holdout),
                jax.random.fold_in(key, 4),
                tune_cfg,
            )
            row = {
                "sr": sr,
                "setup": name,
                "filter_config": dataclasses.asdict(cfg),
                "after_init": test_accuracy(
                    sr, compress_jit(global_params, filters, cfg)
                ),
                "after_tuning": test_accuracy(
                    sr, compress_jit(global_params, result.params, cfg)
                ),
                "holdout_accuracy": float(result.holdout_accuracy),
                "seconds": run_s,
                "compile_seconds": compile_s,
            }
            rows.append(row)
            print(
                f"SR {sr} | {name}: {row['after_init']:.2%} -> {row['after_tuning']:.2%}"
                f" ({run_s:.1f} s + {compile_s:.1f} s compile)",
                flush=True,
            )

    print(
        f"\nGlobal model (SR 1.0): {global_acc:.2%}. Tuning: {args.epochs} epoch(s), last kept.\n"
    )
    print(f"| SR | set-up | after init | after {args.epochs} epochs | seconds |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['sr']} | {r['setup']} | {r['after_init']:.2%} | {r['after_tuning']:.2%}"
            f" | {r['seconds']:.1f} |"
        )

    report = {
        "command": " ".join(["python", *sys.argv]) if argv is None else " ".join(argv),
        "jax_version": jax.__version__,
        "device": str(jax.devices()[0]),
        "platform": platform.platform(),
        "settings": {
            **{k: v for k, v in vars(args).items() if k != "out"},
            "server_size": SERVER_SIZE,
            "holdout_size": n_holdout,
            "pretrain": dataclasses.asdict(pre_cfg),
            "tuning": dataclasses.asdict(tune_cfg),
            "model": "cnn, im2col, no BatchNorm",
            "seconds_note": "tuning wall time, compilation excluded; shared CPU",
        },
        "global_test_accuracy": global_acc,
        "pretrain_seconds": pre_s,
        "results": rows,
        "total_seconds": time.perf_counter() - t0,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\ntotal {report['total_seconds']:.0f} s; wrote {out}")
    return report


if __name__ == "__main__":
    main()
