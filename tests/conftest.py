"""Shared fixtures. Tests run on CPU with tiny models; every compile costs seconds here."""

import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache per test run, shared by the xdist workers and the CLI
# subprocesses they start (which inherit the environment): a round program that several
# tests or processes build compiles once. Fresh per run, so every run still compiles its own.
_RUN_ID = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"fedconv_jax_tests_{_RUN_ID}"))
# The suite compiles far more than it runs: XLA:CPU's backend optimisation level 0 compiled the
# smoke round in 29 s instead of 42 s and ran it 3x slower, with bit-identical results
# (benchmarks/README.md, session 8). Workers and CLI subprocesses inherit it; the smoke test
# of test_cli.py removes it, so the default (optimised) path is still run end to end.
OPT_LEVEL_FLAG = "--xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {OPT_LEVEL_FLAG}".strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])  # if a plugin imported JAX first

from fedconv_jax.models import make_model  # noqa: E402


@pytest.fixture(scope="session")
def mnist_model():
    return make_model("cnn", 10, (28, 28, 1), "im2col")


@pytest.fixture
def temporary_models():
    """Model families a test registers are unregistered after it (workers run many modules)."""
    from fedconv_jax.models import model_names, unregister_model

    before = set(model_names())
    yield
    for name in set(model_names()) - before:
        unregister_model(name)


@pytest.fixture(scope="session")
def global_params(mnist_model):
    return mnist_model.init(jax.random.key(0))["params"]


# Longest modules first (measured CPU time). With `--dist loadscope --no-loadscope-reorder`
# xdist hands modules to the workers in this collection order, so the long ones start at once
# and the short ones fill the end; its default reorder (most tests first) ran the two
# longest, single-test modules last, side by side.
HEAVY_FIRST = (
    "test_sharding", "test_resume", "test_cli", "test_participation", "test_round",
    "test_algorithms", "test_filters", "test_compare", "test_data_sources",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable within a module


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):  # the controller, after every worker is done
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
