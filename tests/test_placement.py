"""client_parallelism="auto": per backend, and the chunk sized from memory on accelerators."""

import pytest

from fedconv_jax.config import default_config, make_round_spec, validate
from fedconv_jax.core.placement import (
    clients_that_fit,
    device_memory_bytes,
    resolve_client_parallelism,
)


def _never():
    raise AssertionError("no step should be compiled to size CPU clients")


def test_cpu_runs_clients_one_after_another_without_compiling():
    assert resolve_client_parallelism("auto", 7, "cpu", 20, _never, None) == ("map", 1)
    assert resolve_client_parallelism("vmap", 7, "gpu", 20, _never, 10**9) == ("vmap", 7)  # explicit wins


@pytest.mark.parametrize(
    ("per_client", "memory", "want"),
    [(10, 1000, ("vmap", 1)), (100, 1000, ("map", 5)), (5000, 1000, ("map", 1))],
)
def test_accelerators_vmap_as_many_clients_as_half_the_memory_holds(per_client, memory, want):
    assert resolve_client_parallelism("auto", 1, "gpu", 20, lambda: per_client, memory) == want


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
