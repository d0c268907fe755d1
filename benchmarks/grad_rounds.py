"""Memory, time and compile of value-and-grad through K rounds, with and without remat.

For each K: the forward K rounds (the held-out loss on D after them), then value-and-grad of
that loss with respect to the whole state and the traced hyper-parameters, without and with
`remat`. Memory is XLA's analysis of each compiled program (temporaries + arguments +
outputs, the peak a device must hold); seconds are the median of `--repeats` calls.

    python benchmarks/grad_rounds.py --config configs/smoke.py --rounds 1,2,4 --out R.json
    python benchmarks/grad_rounds.py --config configs/mnist.py --rounds 1,2 --repeats 1 \\
        --set local_epochs=1 --set compress_epochs=1 ...

`--programs` picks rows (forward, plain, remat) and an existing `--out` file of the same
config, overrides and XLA_FLAGS is extended, so a table can be built in several sittings.
"""

import argparse
import json
import os
import statistics
import time

import jax

jax.config.update("jax_compilation_cache_dir", None)

import fedconv_jax as fc  # noqa: E402
from fedconv_jax.config import apply_overrides  # noqa: E402

PROGRAMS = ("forward", "plain", "remat")


def _measure(fn, args, repeats, max_run_mib):
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    peak = memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
    # A program above max_run_mib is compiled and sized but not run: it would not fit here.
    seconds = []
    for _ in range(repeats if peak / 2**20 <= max_run_mib else 0):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        seconds.append(time.perf_counter() - start)
    return {
        "compile_seconds": round(compile_seconds, 1),
        "seconds": round(statistics.median(seconds), 3) if seconds else None,
        "temp_mib": round(memory.temp_size_in_bytes / 2**20, 2),
        "peak_mib": round(peak / 2**20, 2),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/smoke.py")
    parser.add_argument("--rounds", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-run-mib", type=float, default=16 * 1024,
                        help="programs with a larger peak are compiled and sized, not run")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="config override")
    parser.add_argument("--programs", default="forward,plain,remat",
                        help="rows to measure per K, in this order: forward, plain (value-and-grad), remat (with remat)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    overrides = dict(item.split("=", 1) for item in args.set)
    programs = args.programs.split(",")
    if unknown := set(programs) - set(PROGRAMS):
        parser.error(f"--programs={args.programs!r}: {sorted(unknown)} not in {PROGRAMS}")
    summary = {"config": args.config, "overrides": overrides, "xla_flags": os.environ.get("XLA_FLAGS", ""), "results": []}
    summary["results"] = _earlier_rows(args.out, summary)
    results = summary["results"]  # every row is saved as soon as it is measured: an interrupted run keeps them
    for rounds in (int(k) for k in args.rounds.split(",")):
        for program in programs:  # in the order given: the cheap rows first, if asked so
            remat = program == "remat"  # the forward program does not depend on remat
            config = fc.load_config(args.config)
            apply_overrides(config, {**overrides, "phase_timing": "false", "client_costs": "false", "remat": str(remat)})
            fc.validate(config)
            exp = fc.build_experiment(config)
            unrolled = fc.unroll(exp.algorithm, rounds)

            def loss(state, hparams, exp=exp, unrolled=unrolled):
                final, _ = unrolled(state, exp.data, hparams)
                return fc.holdout_loss(exp.algorithm, final, exp.data)

            if program == "forward":
                row = {"rounds": rounds, "program": "forward"}
                fn = loss
            else:
                row = {"rounds": rounds, "program": "value_and_grad", "remat": remat}
                fn = jax.value_and_grad(loss, argnums=(0, 1), allow_int=True)
            row.update(_measure(fn, (exp.state, exp.hparams), args.repeats, args.max_run_mib))
            print(json.dumps(row), flush=True)
            results.append(row)
            _save(args.out, summary)


def _earlier_rows(path, summary):
    """The rows already in `path` when it was measured with the same settings; else a refusal."""
    if not path or not os.path.exists(path):
        return []
    with open(path) as f:
        earlier = json.load(f)
    for key in ("config", "overrides", "xla_flags"):
        if earlier.get(key) != summary[key]:
            raise SystemExit(f"{path} holds {key}={earlier.get(key)!r}, this run {summary[key]!r}: choose another --out")
    return earlier["results"]


def _save(path, summary):
    if path:
        with open(path, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
