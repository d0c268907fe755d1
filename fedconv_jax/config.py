"""Run configs: defaults, loading, command-line overrides, validation, the spec and hparams.

Every shared field has its default here (the paper's setting where it gives one, SPEC
§2-§6); an algorithm with settings of its own brings a section named after it, built from its
settings dataclass (`config.fedconv.filters.init` is `FedConvConfig.filters.init`), with
aliases that keep the earlier flat names valid (`filter_init`). Files in configs/ start
from `default_config()` and change what they need. Library functions never read configs:
`make_round_spec` and `make_hparams` turn one into a static spec and traced
hyper-parameters, and each algorithm's registered `options` into its factory's arguments.
"""

import ast
import importlib.util
import math
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections

import fedconv_jax.algorithms  # noqa: F401  (registers every algorithm)
from fedconv_jax.core.algorithm import (
    HParams,
    algorithm_entries,
    algorithm_entry,
    algorithm_names,
    section_values,
)
from fedconv_jax.core.participation import POISON_MODES
from fedconv_jax.core.placement import device_memory_bytes, resolve_client_parallelism
from fedconv_jax.core.spec import CLIENT_PARALLELISM, RoundSpec
from fedconv_jax.core.tuning import TuningConfig
from fedconv_jax.core.validation import FieldError
from fedconv_jax.costs import step_costs_of
from fedconv_jax.data import PARTITIONS, is_dataset_name
from fedconv_jax.models import CONV_IMPLS, example_model, make_model, model_names

ALGORITHMS = algorithm_names()
# Earlier flat field names kept valid: {flat name: full path of the field it stands for}.
ALIASES = {alias: f"{e.name}.{path}" for e in algorithm_entries() for alias, path in e.aliases.items()}
MAX_INT = 2**31 - 1  # int32: seeds, counts and epochs all end up as device integers
MAX_BATCH = 65536  # batch sizes pad every index list to a multiple of themselves


class ConfigError(ValueError):
    """A config value that is not allowed; the message is one line: field, value, allowed."""

    def __init__(self, field: str, value, allowed: str):
        super().__init__(f"config.{field}={value!r} is not allowed: {allowed}")
        self.field = field


def paper_client_setting(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The paper's client setting (SPEC §6), shared by configs/mnist.py, cifar10.py and
    cinic10.py: 20 clients at SR 4x1, 8x0.75, 4x0.5, 4x0.25, Dirichlet alpha 1 (the paper
    sweeps 0.05, 0.1, 1, 1e4), 100 rounds, 5 local and pre-training epochs, 20 epochs per
    tuning loop. Returns `config`, changed in place."""
    config.num_clients = 20
    config.shrink_ratios = (1.0,) * 4 + (0.75,) * 8 + (0.5,) * 4 + (0.25,) * 4
    config.alpha = 1.0
    config.rounds = 100
    config.local_epochs = 5
    config.pretrain_epochs = 5
    config.compress_epochs = 20
    config.dilate_epochs = 20
    config.aggregate_epochs = 20
    return config


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # --- what to run
    c.algorithm = "fedconv"  # "fedconv" or a baseline: fedavg_small, fedavg_full, heterofl, fedrolex, feddropout, standalone, serveralone, fedmd, lotteryfl, hermes, tailorfl
    c.dataset = "digits"  # "digits" (scikit-learn's bundled 8x8 digits) or "tfds:<name>" (prepared/imported)
    c.data_dir = ""  # TFDS data dir; "" = $FEDCONV_DATA_DIR, else ~/.cache/fedconv_jax/tensorflow_datasets
    c.model = "cnn"  # "cnn" (SPEC §6 MNIST CNN), "cnn_bn" (with BatchNorm), "resnet18" (CIFAR, 32x32x3), "har_wiar", "har_dcd", "har_harbox" (1 channel)
    c.image_size = 0  # zero-pad every image (centred) to image_size x image_size; 0 = as loaded
    c.channels = 0  # repeat a single-channel image this many times (3: MNIST as a 32x32x3 stand-in); 0 = as loaded
    c.global_width = 1.0  # multiplier of every width of the model family, before any SR (e.g. 0.125: resnet18 on a CPU)
    c.seed = 0  # one seed for data split, init and every random draw
    c.data_seed = -1  # seed of the data split and of D's held-out slice alone; -1 = seed (a sweep pins it)
    c.rounds = 100  # communication rounds
    # --- clients and data split (SPEC §6)
    c.num_clients = 20  # number of clients
    c.shrink_ratios = (1.0,) * 4 + (0.75,) * 8 + (0.5,) * 4 + (0.25,) * 4  # SR of every client
    c.partition = "dirichlet"  # client label split: "dirichlet" (alpha), "iid" or "shards"
    c.alpha = 1.0  # Dirichlet concentration of the client label split (> 0; 1e4 ~ IID)
    c.shards_per_client = 2  # classes per client when partition="shards"
    c.split_fractions = (0.05, 0.20, 0.70, 0.05)  # server tuning D, server test, client train, client test
    c.holdout_fraction = 0.25  # share of D held out for model selection (never trained on)
    # --- client training
    c.local_epochs = 5  # local epochs per round
    c.batch_size = 32  # batch size of clients and of server tuning
    c.local_lr = 1e-3  # client Adam learning rate
    # --- server tuning (SPEC §2)
    c.pretrain_epochs = 5  # pre-training epochs of the global model on D (0 = none)
    c.pretrain_lr = 1e-3  # Adam learning rate of pre-training
    c.baseline_pretrain = False  # baselines with a global model also pre-train it on D in round 1 (paper: no)
    c.filter_lr = 1e-3  # Adam lr (lr_max of Eq. 2) of compression and dilation filters
    c.filter_lr_min = 1e-5  # lr_min of Eq. 2
    c.aggregate_lr = 1e-3  # Adam lr of the aggregation weights
    c.select_best = True  # keep each tuning loop's best epoch on the held-out slice of D
    c.kld_weight = 0.2  # lambda of Eq. 5 (KL between previous global and the aggregate)
    # --- execution
    c.conv_impl = "auto"  # model convolution: "auto", "im2col" (fast on CPU) or "lax"
    c.client_parallelism = "auto"  # clients of a tier: "auto" (per backend, core/placement.py), "map" (lax.map in chunks) or "vmap"
    # clients per lax.map chunk with "map": an int, or "auto" (1 on CPU, measured fastest there;
    # on an accelerator the clients that fit in half its memory). Typed object: int or "auto".
    c.client_chunk = ml_collections.FieldReference("auto", field_type=object)
    # XLA backend optimisation level of the round program: "auto" (XLA's default, or XLA_FLAGS)
    # or 0..3. Level 0 compiles big families far faster and in less memory on CPU, and runs
    # rounds slower (benchmarks/README.md): GoogLeNet's FedConv round needs it on a 24 GB CPU.
    c.xla_opt_level = ml_collections.FieldReference("auto", field_type=object)
    c.clients_per_round = 0  # clients drawn per round, in the compiled round (0 or num_clients = all)
    c.devices = 1  # devices the client axis is sharded over (1..jax.device_count(); sharding.py)
    c.eval_chunk = 1024  # examples per evaluation chunk (bounds activation memory)
    c.remat = False  # jax.checkpoint every tuning/local epoch and client: gradients through rounds in less memory
    c.phase_timing = True  # time each phase once in a phase-separated run (extra compile; every algorithm but serveralone)
    c.client_costs = True  # per-client bytes, FLOPs and memory in every row (one compile per model width)
    # --- checkpoints and resume (README, "Checkpoints and resume")
    c.checkpoint_every = 1  # save the ServerState every this many rounds (and after the last); 0 = never
    c.keep_checkpoints = 3  # newest complete checkpoints kept (older ones are deleted)
    c.allow_config_change = False  # --resume may change rounds / phase_timing / checkpoint fields
    # --- faults and attacks (README, "Faulty and poisoned clients")
    c.dropout_rate = 0.0  # fraction of the clients dropped each round, drawn from (seed, round)
    c.poisoned_clients = 0  # the last k clients (config order) upload poisoned models
    c.poison_mode = "sign_flip"  # "sign_flip": received - scale * update; "noise": received + N(0, scale^2)
    c.poison_scale = 1.0  # strength of the poisoning (see poison_mode)
    # --- each algorithm's own settings: config.<algorithm>.<field>, its settings dataclass
    # field for field (FedConv: fedconv_jax/algorithms/fedconv/round.py, FedConvConfig)
    for entry in algorithm_entries():
        if entry.section is not None:
            c[entry.name] = ml_collections.ConfigDict(section_values(entry.section))
            for alias, path in entry.aliases.items():
                *parents, leaf = path.split(".")
                section = c[entry.name]
                for part in parents:
                    section = section[part]
                c[alias] = section.get_ref(leaf)  # one value under two names
    return c


def load_config(path: str | Path) -> ml_collections.ConfigDict:
    """Runs `get_config()` of a config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config", str(path), "a path to an existing configs/<name>.py file")
    spec = importlib.util.spec_from_file_location(f"_fedconv_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError("config", str(path), "a file that defines get_config()")
    return module.get_config()


AUTO_OR_INT = ("client_chunk", "xla_opt_level")  # fields that take "auto" or an integer


def _parse_value(field: str, text: str, default):
    """Parses an override with the type of the field's default."""
    try:
        if field in AUTO_OR_INT:
            return "auto" if text.strip() == "auto" else int(text)
        if isinstance(default, bool):
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0"):
                raise ValueError
            return lowered in ("true", "1")
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, tuple | list):
            value = ast.literal_eval(text)
            return tuple(value) if isinstance(value, tuple | list) else (value,)
        return text
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        kind = '"auto" or an integer' if field in AUTO_OR_INT else f"a value of type {type(default).__name__}"
        raise ConfigError(field, text, kind) from None


def _section_of(config: ml_collections.ConfigDict, field: str):
    """(the section holding a dotted field, its last name), or None if there is no such field."""
    *parents, leaf = field.split(".")
    section = config
    for part in parents:
        section = section.get(part) if isinstance(section, ml_collections.ConfigDict) else None
    if not isinstance(section, ml_collections.ConfigDict) or leaf not in section:
        return None
    return section, leaf


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, str]) -> None:
    """Sets `--config.<field>=<value>` overrides (`<field>` may be a dotted section path);
    unknown fields and whole sections are refused."""
    for field, text in overrides.items():
        found = _section_of(config, field)
        if found is None:
            raise ConfigError(field, text, "not a config field; see README.md, Configs")
        section, leaf = found
        if isinstance(section[leaf], ml_collections.ConfigDict):
            raise ConfigError(field, text, f"a field of the section, e.g. {field}.{next(iter(section[leaf]))}")
        section[leaf] = _parse_value(ALIASES.get(field, field), text, section[leaf])  # errors name the full path


def leaf_fields(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[str]:
    """Every settable field as a dotted path (aliases included)."""
    for name, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from leaf_fields(value, f"{prefix}{name}.")
        else:
            yield prefix + name


def get_field(config: ml_collections.ConfigDict, field: str):
    section, leaf = _section_of(config, field)
    return section[leaf]


def _choice(config, field, allowed):
    if config[field] not in allowed:
        raise ConfigError(field, config[field], "one of " + ", ".join(map(str, allowed)))


def _positive_int(config, field, minimum=1, maximum=MAX_INT, allowed="an integer in [{minimum}, {maximum}]"):
    value = config[field]
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ConfigError(field, value, allowed.format(minimum=minimum, maximum=maximum))


def _number(config, field, low, high, low_open=False, high_open=False):
    value = config[field]
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(field, value, f"a finite number in {interval}")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks every field before anything compiles; raises ConfigError on the first bad one."""
    _choice(config, "algorithm", ALGORITHMS)
    if not isinstance(config.dataset, str) or not is_dataset_name(config.dataset):
        raise ConfigError("dataset", config.dataset, "digits or tfds:<name> (e.g. tfds:mnist)")
    if not isinstance(config.data_dir, str):
        raise ConfigError("data_dir", config.data_dir, "a directory path (\"\" for the default)")
    _choice(config, "partition", PARTITIONS)
    _choice(config, "model", model_names())
    _choice(config, "conv_impl", CONV_IMPLS)
    _choice(config, "client_parallelism", ("auto", *CLIENT_PARALLELISM))
    _choice(config, "poison_mode", POISON_MODES)
    bools = ("select_best", "phase_timing", "client_costs", "baseline_pretrain", "allow_config_change", "remat")
    for field in bools:
        if not isinstance(config[field], bool):
            raise ConfigError(field, config[field], "true or false")
    _positive_int(config, "seed", minimum=0)
    _positive_int(config, "data_seed", minimum=-1)
    for field in ("rounds", "num_clients", "local_epochs", "eval_chunk", "shards_per_client"):
        _positive_int(config, field)
    if config.client_chunk != "auto":
        _positive_int(config, "client_chunk", allowed="\"auto\" or an integer in [1, {maximum}]")
    if config.xla_opt_level != "auto":
        _positive_int(config, "xla_opt_level", minimum=0, maximum=3, allowed="\"auto\" or an integer in [0, 3]")
    _positive_int(config, "batch_size", maximum=MAX_BATCH)
    _positive_int(config, "keep_checkpoints")
    for field in ("pretrain_epochs", "checkpoint_every"):
        _positive_int(config, field, minimum=0)
    for field in ("local_lr", "pretrain_lr", "filter_lr", "aggregate_lr"):
        _number(config, field, 0.0, 10.0, low_open=True)
    _positive_int(config, "devices")
    _positive_int(config, "image_size", minimum=0, maximum=4096)
    _positive_int(config, "channels", minimum=0, maximum=64)
    _positive_int(config, "clients_per_round", minimum=0)
    if config.clients_per_round > config.num_clients:
        raise ConfigError("clients_per_round", config.clients_per_round, f"an integer in [0, num_clients={config.num_clients}]")
    if config.devices > jax.device_count():
        raise ConfigError("devices", config.devices, f"an integer in [1, {jax.device_count()}] (jax.device_count())")
    _number(config, "filter_lr_min", 0.0, config.filter_lr)
    _number(config, "kld_weight", 0.0, 1e6)
    _number(config, "holdout_fraction", 0.0, 1.0, low_open=True, high_open=True)
    _number(config, "alpha", 0.0, math.inf, low_open=True, high_open=True)
    _number(config, "dropout_rate", 0.0, 1.0, high_open=True)
    _number(config, "poison_scale", 0.0, 1e6, low_open=True)
    fractions = tuple(config.split_fractions)
    numbers = all(isinstance(f, int | float) and not isinstance(f, bool) and math.isfinite(f) and f > 0 for f in fractions)
    if len(fractions) != 4 or not numbers or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError("split_fractions", fractions, "4 positive numbers summing to 1")
    _positive_int(config, "poisoned_clients", minimum=0)
    if config.poisoned_clients > config.num_clients:
        raise ConfigError("poisoned_clients", config.poisoned_clients, f"an integer in [0, num_clients={config.num_clients}]")
    ratios = tuple(config.shrink_ratios)
    if len(ratios) != config.num_clients:
        raise ConfigError("shrink_ratios", ratios, f"one SR per client ({config.num_clients} values)")
    _number(config, "global_width", 0.0, 1.0, low_open=True)
    model = example_model(config.model, config.global_width)  # unit widths from the declared width axes
    if not model.fits(1.0):
        raise ConfigError(
            "global_width", config.global_width, f"a multiplier that leaves every unit of {config.model} a channel"
        )
    for ratio in ratios:
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio <= 1:
            raise ConfigError("shrink_ratios", ratio, "every SR in (0, 1]")
        if not model.fits(ratio):
            raise ConfigError(
                "shrink_ratios", ratio,
                f"an SR whose sub-model of {config.model} has no zero-width unit (>= {model.narrowest_ratio():g})",
            )
    for entry in algorithm_entries():  # every algorithm's own settings validate themselves
        try:
            entry.options(config)
        except FieldError as error:
            raise ConfigError(error.field, error.value, error.allowed) from None


def data_seed(config: ml_collections.ConfigDict) -> int:
    """The seed of the data split: `data_seed`, or `seed` when it is -1."""
    return config.seed if config.data_seed < 0 else config.data_seed


def make_hparams(config: ml_collections.ConfigDict) -> HParams:
    """The traced hyper-parameters the config's algorithm reads: {field: float32 scalar}.

    They are an argument of the compiled round, not part of it: another value reuses the
    program (and `jax.grad` can take their gradient).
    """
    return {name: jnp.asarray(config[name], jnp.float32) for name in algorithm_entry(config.algorithm).hparams}


def make_round_spec(
    config: ml_collections.ConfigDict, tier_ratios, tier_capacity, num_classes, input_shape
) -> RoundSpec:
    """The static spec every algorithm shares, from a validated config ("auto" resolved)."""
    model = make_model(config.model, num_classes, input_shape, config.conv_impl, config.global_width)
    parallelism, chunk = resolve_client_parallelism(
        config.client_parallelism, config.client_chunk, jax.default_backend(),
        capacity=-(-max(tier_capacity) // config.devices),
        per_client_bytes=lambda: step_costs_of(model, config.batch_size, max(tier_ratios))["peak_memory_bytes"],
        memory_bytes=device_memory_bytes(),
    )
    return RoundSpec(
        model=model,
        tier_ratios=tuple(tier_ratios),
        tier_capacity=tuple(tier_capacity),
        pretrain=TuningConfig(
            epochs=config.pretrain_epochs, batch_size=config.batch_size, select_best=config.select_best,
            remat=config.remat,
        ),
        local_epochs=config.local_epochs,
        local_batch_size=config.batch_size,
        client_parallelism=parallelism,
        client_chunk=chunk,
        devices=config.devices,
        eval_chunk=config.eval_chunk,
        remat=config.remat,
    )
