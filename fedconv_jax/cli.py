"""`fedconv-jax` command line: run a config, print one-line errors for bad input (exit 2)."""

import argparse
import sys
from pathlib import Path

USAGE = "fedconv-jax run --config configs/<name>.py --workdir DIR [--config.<field>=<value> ...]"


def _split_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Separates `--config.<field>=<value>` (or `--config.<field> <value>`) from other args."""
    rest, overrides = [], {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            field, eq, value = arg[len("--config.") :].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise SystemExit(_fail(f"--config.{field} needs a value: --config.{field}=<value>"))
                value, i = argv[i + 1], i + 1
            overrides[field] = value
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def _fail(message: str) -> int:
    print(f"fedconv-jax: error: {message}", file=sys.stderr)
    return 2


def _run(args, overrides) -> int:
    # Heavy imports only after the arguments parse, so `--help` and usage errors are instant.
    from fedconv_jax.config import ConfigError, apply_overrides, load_config, validate

    try:
        config = load_config(args.config)
        apply_overrides(config, overrides)
        if isinstance(config.get("devices"), int):
            from fedconv_jax.sharding import request_cpu_devices

            request_cpu_devices(config.devices)  # before JAX starts: N XLA:CPU devices
        validate(config)
    except ConfigError as err:
        return _fail(str(err))

    from fedconv_jax.experiment import run_experiment

    try:
        rows = run_experiment(config, Path(args.workdir), progress=not args.quiet)
    except ValueError as err:  # data-level refusals (e.g. too many clients for the data set)
        return _fail(str(err))
    last = rows[-1]
    print(
        f"round {last['round']}: global_accuracy={last['global_accuracy']:.4f} "
        f"client_accuracy={last['client_accuracy']} compiles={last['compiles']} "
        f"-> {Path(args.workdir) / 'metrics.jsonl'}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="fedconv-jax", description="FedConv in JAX.", usage=USAGE)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a federated experiment", usage=USAGE)
    run.add_argument("--config", required=True, help="path to a configs/<name>.py file")
    run.add_argument("--workdir", required=True, help="output directory (metrics.jsonl)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    rest, overrides = _split_overrides(argv)
    args = parser.parse_args(rest)
    if args.command == "run":
        return _run(args, overrides)
    return _fail(f"unknown command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())
