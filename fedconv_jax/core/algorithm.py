"""The algorithm protocol and its registry (fedjax's `FederatedAlgorithm`, optax's
`GradientTransformation`, big_vision's registries).

An algorithm is one object of pure functions built over a static `RoundSpec`. The run loop,
sharding, costs, digests and checkpoints ask this object what they need and never match on
algorithm names. Each algorithm module registers a factory under its name:

    @register("heterofl", options=lambda config: {"pretrain": config["baseline_pretrain"]})
    def heterofl(spec: RoundSpec, *, pretrain: bool = False) -> FederatedAlgorithm: ...

and `fedconv_jax/algorithms/__init__.py` imports the module (the one registration line).
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax

from fedconv_jax.core.data import RoundData
from fedconv_jax.core.spec import RoundSpec
from fedconv_jax.core.types import Metrics, PRNGKey
from fedconv_jax.core.validation import within

State = Any  # a flax.struct dataclass of arrays
HParams = dict[str, jax.Array]  # the round's traced hyper-parameters, by config field name
RoundFn = Callable[[State, RoundData, HParams], tuple[State, Metrics]]
# call(name, fn, *args) -> fn(*args): how a phased round runs each phase (timing hooks here).
PhaseCall = Callable[..., Any]
# Round inputs every algorithm reads: client training, pre-training on D, attacks, and who
# takes part (participation inputs are data, not program structure: a new value reuses it).
SHARED_HPARAMS = ("local_lr", "pretrain_lr", "poison_scale", "dropout_rate", "clients_per_round")


class FederatedAlgorithm(NamedTuple):
    """One algorithm over one static spec, as pure functions and facts about its state.

    Attributes:
      name: the registry name.
      spec: the static spec the functions close over (an algorithm's own subclass of
        `RoundSpec` where it has settings of its own).
      init: key -> the initial state (pure; jit it).
      round: (state, data, hparams) -> (next state, metrics); one compiled program per run.
      per_client_fields: state fields whose leaves lead with the client-slot axis (laid out
        along the device mesh's client axis); every other field is replicated.
      trained_ratio: SR of a client -> the model width it trains, None if it trains nothing.
      sends_model: clients download and upload the model they train (costs.py counts its
        bytes); False: nothing is sent.
      digest: state -> the parameters `metrics.params_digest` fingerprints every round.
      phased_round: call -> the round with each phase run through `call(name, fn, *args)`
        (phase-separated timing); None for algorithms without phases.
      traffic: (SR, examples in the server set D) -> (bytes down, bytes up) of one client
        per round, for algorithms whose clients send something other than the model they
        train (FedMD: class scores of D; LotteryFL: sparse models); None: the model.
    """

    name: str
    spec: RoundSpec
    init: Callable[[PRNGKey], State]
    round: RoundFn
    per_client_fields: tuple[str, ...]
    trained_ratio: Callable[[float], float | None]
    digest: Callable[[State], Any]
    sends_model: bool = True
    phased_round: Callable[[PhaseCall], RoundFn] | None = None
    traffic: Callable[[float, int], tuple[int, int]] | None = None


@dataclasses.dataclass(frozen=True)
class AlgorithmEntry:
    """A registered factory: `make(spec, **options(config))` builds the algorithm.

    `options` is the only place an algorithm meets the run config; its factory and round
    never see it. An algorithm with settings of its own declares them as a dataclass
    instance of defaults (`section`): the config then has a section under the algorithm's
    name that maps onto it field for field (nested dataclasses are nested sections), and
    `options` builds it from there (`settings_from_section`). `aliases` keeps older flat
    field names valid: {flat name: path inside the section}.
    """

    name: str
    make: Callable[..., FederatedAlgorithm]
    options: Callable[[Mapping[str, Any]], dict]
    hparams: tuple[str, ...]
    section: Any = None
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)


_REGISTRY: dict[str, AlgorithmEntry] = {}


def register(
    name: str,
    *,
    options: Callable[[Mapping[str, Any]], dict] | None = None,
    hparams: tuple[str, ...] = SHARED_HPARAMS,
    section: Any = None,
    aliases: Mapping[str, str] | None = None,
):
    """Decorator: registers `make(spec, **options) -> FederatedAlgorithm` under `name`.

    Args:
      options: config -> the factory's keyword arguments. Default: none, or with a
        `section`, {"settings": the section's dataclass built from `config[name]`}.
      hparams: names (config fields) of the traced hyper-parameters the round reads.
      section: the algorithm's settings dataclass with its defaults (AlgorithmEntry).
      aliases: flat config names kept for fields of the section.
    """
    if options is None:
        if section is None:
            options = lambda config: {}
        else:
            options = lambda config: {"settings": settings_from_section(section, config[name], name)}

    def add(make):
        if name in _REGISTRY:
            raise ValueError(f"algorithm {name!r} is registered twice")
        _REGISTRY[name] = AlgorithmEntry(name, make, options, tuple(hparams), section, dict(aliases or {}))
        return make

    return add


def section_values(settings) -> dict:
    """A settings dataclass as a nested dict of its field values (the config section)."""
    return {
        f.name: section_values(value) if dataclasses.is_dataclass(value := getattr(settings, f.name)) else value
        for f in dataclasses.fields(settings)
    }


def settings_from_section(defaults, values: Mapping[str, Any], path: str):
    """The settings dataclass of `defaults`' type built from a config section, nested
    dataclasses from nested sections; a bad value raises FieldError naming `path.field`."""
    kwargs = {}
    with within(path):
        for f in dataclasses.fields(defaults):
            value = values.get(f.name, getattr(defaults, f.name))
            default = getattr(defaults, f.name)
            if dataclasses.is_dataclass(default):
                value = settings_from_section(default, value, f.name)
            kwargs[f.name] = value
        return type(defaults)(**kwargs)


def algorithm_entries() -> tuple[AlgorithmEntry, ...]:
    return tuple(_REGISTRY.values())


def algorithm_names() -> tuple[str, ...]:
    """Every registered algorithm, in registration order."""
    return tuple(_REGISTRY)


def algorithm_entry(name: str) -> AlgorithmEntry:
    if name not in _REGISTRY:
        raise ValueError(f"algorithm={name!r} is not known; allowed: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def make_algorithm(name: str, spec: RoundSpec, config: Mapping[str, Any]) -> FederatedAlgorithm:
    """The registered algorithm `name` over `spec`, with its options read from `config`.

    Equal (name, spec, options) give the same object, so its jitted functions share
    compiled programs within a process.
    """
    entry = algorithm_entry(name)
    return _make(name, spec, tuple(sorted(entry.options(config).items())))


@functools.lru_cache(maxsize=64)
def _make(name: str, spec: RoundSpec, options: tuple) -> FederatedAlgorithm:
    return algorithm_entry(name).make(spec, **dict(options))


__all__ = [
    "SHARED_HPARAMS",
    "AlgorithmEntry",
    "FederatedAlgorithm",
    "HParams",
    "PhaseCall",
    "RoundFn",
    "algorithm_entries",
    "algorithm_entry",
    "algorithm_names",
    "make_algorithm",
    "register",
    "section_values",
    "settings_from_section",
]
