"""Execution choices: client_parallelism / client_chunk "auto" (per backend, the chunk sized from memory on accelerators) and xla_opt_level."""

import jax
import jax.numpy as jnp
import pytest

from fedconv_jax.config import (
    ConfigError,
    apply_overrides,
    default_config,
    make_round_spec,
    validate,
)
from fedconv_jax.core import sharding
from fedconv_jax.core.placement import (
    clients_that_fit,
    device_memory_bytes,
    resolve_client_parallelism,
)
from fedconv_jax.experiment import build_experiment, round_program


def _never():
    raise AssertionError("no step should be compiled to size CPU clients")


def test_cpu_runs_clients_one_after_another_without_compiling():
    assert resolve_client_parallelism("auto", "auto", "cpu", 20, _never, None) == ("map", 1)
    assert resolve_client_parallelism("map", "auto", "cpu", 20, _never, None) == ("map", 1)
    assert resolve_client_parallelism("auto", 7, "cpu", 20, _never, None) == ("map", 7)  # a chunk by hand wins
    assert resolve_client_parallelism("vmap", 7, "gpu", 20, _never, 10**9) == ("vmap", 1)  # chunk unused
    assert resolve_client_parallelism("vmap", "auto", "gpu", 20, _never, 10**9) == ("vmap", 1)  # nothing sized
    assert resolve_client_parallelism("map", 3, "gpu", 20, _never, 10**9) == ("map", 3)


@pytest.mark.parametrize(
    ("per_client", "memory", "want"),
    [(10, 1000, ("vmap", 1)), (100, 1000, ("map", 5)), (5000, 1000, ("map", 1))],
)
def test_accelerators_vmap_as_many_clients_as_half_the_memory_holds(per_client, memory, want):
    assert resolve_client_parallelism("auto", "auto", "gpu", 20, lambda: per_client, memory) == want
    # "map" set by hand with an "auto" chunk: the same chunk, never the whole tier vmapped
    chunk = min(20, max(1, memory // 2 // per_client))
    assert resolve_client_parallelism("map", "auto", "gpu", 20, lambda: per_client, memory) == ("map", chunk)


def test_clients_that_fit():
    assert clients_that_fit(100, 1000, 20, fraction=0.5) == 5
    assert clients_that_fit(100, 1000, 3, fraction=0.5) == 3
    assert clients_that_fit(10**6, 1000, 3) == 1


def test_the_default_config_resolves_to_the_measured_cpu_choice():
    config = default_config()
    validate(config)
    assert config.client_parallelism == "auto"
    assert device_memory_bytes() is None  # XLA:CPU reports no limit
    spec = make_round_spec(config, (1.0, 0.5), (2, 2), 10, (8, 8, 1))
    assert (spec.client_parallelism, spec.client_chunk) == ("map", 1)


def test_client_chunk_takes_auto_or_a_positive_integer_from_the_command_line():
    config = default_config()
    assert config.client_chunk == "auto"
    apply_overrides(config, {"client_chunk": "4"})
    validate(config)
    assert config.client_chunk == 4
    apply_overrides(config, {"client_chunk": "auto"})
    assert config.client_chunk == "auto"
    for text, field_value in (("0", 0), ("-2", -2)):
        apply_overrides(config, {"client_chunk": text})
        with pytest.raises(ConfigError, match=f"client_chunk={field_value}.*\"auto\" or an integer in \\[1,"):
            validate(config)
    with pytest.raises(ConfigError, match="client_chunk='fast' is not allowed: \"auto\" or an integer$"):
        apply_overrides(config, {"client_chunk": "fast"})


def test_xla_opt_level_reaches_the_round_program_and_xla_accepts_it(monkeypatch):
    assert default_config().xla_opt_level == "auto"
    assert sharding.xla_compiler_options("auto") is None
    options = sharding.xla_compiler_options(0)
    assert options == {"xla_backend_optimization_level": 0}
    # XLA refuses options it does not know: a compile with this one shows its name is right here
    assert float(jax.jit(lambda x: x.sum(), compiler_options=options)(jnp.ones(3))) == 3.0
    with pytest.raises(Exception, match="no_such_option"):
        jax.jit(lambda x: x.sum(), compiler_options={"no_such_option": 0})(jnp.ones(3))

    seen = []
    real_jit = jax.jit
    monkeypatch.setattr(sharding.jax, "jit", lambda *a, **k: seen.append(k.get("compiler_options")) or real_jit(*a, **k))
    for level, want in ((0, options), ("auto", None)):
        config = default_config()
        config.update(algorithm="fedavg_small", num_clients=2, shrink_ratios=(1.0, 0.5), xla_opt_level=level)
        validate(config)
        seen.clear()
        round_program(build_experiment(config))
        assert seen[-1] == want  # the last jit: the round (the first builds the initial state)
