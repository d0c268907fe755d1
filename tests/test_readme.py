"""The README's "Adding an algorithm" and "Adding a model" examples run as written."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_round import tiny_config
from test_slicing import sliced_and_zeroed

from fedconv_jax.core import algorithm as algorithm_registry
from fedconv_jax.core.algorithm import make_algorithm
from fedconv_jax.experiment import build_experiment
from fedconv_jax.models import ModelSpec, unregister_model, zoo

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _example(section: str) -> str:
    """The first ```python block after the heading `section`."""
    body = README.split(f"## {section}\n", 1)[1]
    return re.search(r"```python\n(.*?)```", body, re.DOTALL).group(1)


@pytest.fixture
def registered():
    """Runs an example's registrations, and takes them back afterwards (one process runs
    many test modules; the registries are global)."""
    added = []

    def run(section, registry, name):
        exec(compile(_example(section), f"README:{section}", "exec"), {"__name__": "readme_example"})  # noqa: S102
        added.append((registry, name))

    yield run
    for registry, name in added:
        registry.pop(name, None)
    unregister_model("tiny_resnet")


def test_adding_an_algorithm_example_builds_a_full_round(registered):
    registered("Adding an algorithm", algorithm_registry._REGISTRY, "myalg")
    exp = build_experiment(tiny_config())
    alg = make_algorithm("myalg", exp.spec, tiny_config())
    state = alg.init(jax.random.key(0))
    # Traced through the whole skeleton (sampling, clients, screen, server step, evaluation).
    next_state, metrics = jax.eval_shape(alg.round, state, exp.data, exp.hparams)
    assert jax.tree.map(jnp.shape, next_state.global_vars) == jax.tree.map(jnp.shape, state.global_vars)
    assert {"global_accuracy", "client_accuracy", "participating", "dropped_clients"} <= set(metrics)
    assert alg.phased_round is not None and alg.per_client_fields == ()


def test_adding_a_model_example_slices_along_its_declared_units(registered):
    registered("Adding a model", zoo._FAMILIES, "tiny_resnet")
    model = ModelSpec("tiny_resnet", 10, (8, 8, 1))
    assert model.unit_widths(0.5) == {"inner": 8, "stream": 8}
    full = model.init(jax.random.key(0))
    full = {"params": jax.tree.map(lambda x: x + 0.05, full["params"]), "batch_stats": full["batch_stats"]}
    rng = np.random.default_rng(0)
    idx = {u: jnp.asarray(np.sort(rng.choice(16, 8, replace=False))) for u in ("inner", "stream")}
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    sub, sub_logits, full_logits = sliced_and_zeroed(model, 0.5, full, idx, x)
    assert jax.tree.map(jnp.shape, sub) == jax.tree.map(jnp.shape, model.init(jax.random.key(0), 0.5))
    np.testing.assert_allclose(sub_logits, full_logits, rtol=1e-5, atol=1e-5)
