"""Compile time of the pieces of a FedConv round for one model family, one piece at a time.

Where a round program's compile time goes, without compiling the round: each piece is
jitted alone on synthetic data, persistent cache off. Program size is the StableHLO
operation count.

    python benchmarks/compile_pieces.py --model resnet18 --global-width 0.125
    python benchmarks/compile_pieces.py --model resnet18 --pieces compress_tune --filter-impl matmul

Pieces: forward (eval logits), grad (one training gradient), local_train (one client, one
epoch of 2 batches), pretrain_tune (`tune` over the model's parameters, one epoch),
filters_grad (gradient of the generated sub-model through compression alone),
compress_tune (one tier's compression tuning loop, one epoch).
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp

from fedconv_jax.algorithms.fedconv.compression import (
    compress,
    compress_batch_stats,
    init_compression_filters,
)
from fedconv_jax.algorithms.fedconv.filters import FilterConfig
from fedconv_jax.core.client import local_train
from fedconv_jax.core.data import IndexSet
from fedconv_jax.core.tuning import TuningConfig, make_optimizer, tune
from fedconv_jax.models import make_model
from fedconv_jax.models.zoo import example_model

PIECES = ("forward", "grad", "local_train", "pretrain_tune", "filters_grad", "compress_tune")


def _piece(name, model, ratio, filters_config):
    shape = model.input_shape
    images = jnp.zeros((256, *shape))
    labels = jnp.zeros((256,), jnp.int32)
    data = IndexSet(jnp.arange(64, dtype=jnp.int32), jnp.ones(64, bool))
    full = model.init(jax.random.key(0), 1.0)
    loop = TuningConfig(epochs=1, batch_size=32)
    if name == "forward":
        return (lambda v: model.apply(1.0, v, images[:32])[0]), (full,)
    if name == "grad":
        def loss(p):
            return jnp.sum(model.apply(1.0, {"params": p, "batch_stats": full["batch_stats"]}, images[:32], True)[0])
        return jax.grad(loss), (full["params"],)
    if name == "local_train":
        def train(v, k):
            return local_train(lambda *a, **kw: model.apply(1.0, *a, **kw), v, images, labels, data, k, epochs=1)
        return train, (full, jax.random.key(1))
    if name == "pretrain_tune":
        def pretrain(p, opt, k):
            logits = lambda p, x: model.apply(1.0, {"params": p, "batch_stats": full["batch_stats"]}, x)[0]
            return tune(logits, p, opt, images, labels, data, data, k, loop, lr=1e-3).params
        return pretrain, (full["params"], make_optimizer().init(full["params"]), jax.random.key(2))
    sub = jax.eval_shape(lambda: model.init(jax.random.key(0), ratio))
    filters = init_compression_filters(jax.random.key(1), full["params"], sub["params"], filters_config)
    stats = compress_batch_stats(full["batch_stats"], sub["batch_stats"])
    if name == "filters_grad":
        def generated(f):
            return sum(jnp.sum(x**2) for x in jax.tree.leaves(compress(full["params"], f, filters_config)))
        return jax.grad(generated), (filters,)

    def compress_loop(f, opt, k):
        def logits(f, x):
            return model.apply(ratio, {"params": compress(full["params"], f, filters_config), "batch_stats": stats}, x)[0]
        return tune(logits, f, opt, images, labels, data, data, k, loop, lr=1e-3).params
    return compress_loop, (filters, make_optimizer().init(filters), jax.random.key(2))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--global-width", type=float, default=0.125)
    parser.add_argument("--conv-impl", default="im2col")
    parser.add_argument("--filter-impl", default="fft")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--pieces", default=",".join(PIECES))
    args = parser.parse_args(argv)
    jax.config.update("jax_compilation_cache_dir", None)
    shape = example_model(args.model).input_shape
    model = make_model(args.model, 10, shape, args.conv_impl, args.global_width)
    for name in args.pieces.split(","):
        fn, inputs = _piece(name, model, args.ratio, FilterConfig(impl=args.filter_impl))
        start = time.perf_counter()
        lowered = jax.jit(fn).lower(*inputs)
        lower_s = time.perf_counter() - start
        start = time.perf_counter()
        lowered.compile()
        print(json.dumps({
            "piece": name, "model": args.model, "global_width": args.global_width, "conv_impl": args.conv_impl,
            "filter_impl": args.filter_impl, "stablehlo_ops": sum(" = " in line for line in lowered.as_text().splitlines()),
            "lower_seconds": round(lower_s, 1), "compile_seconds": round(time.perf_counter() - start, 1),
        }), flush=True)


if __name__ == "__main__":
    main()
