"""Every registered algorithm runs one round of every model family, compiling once (opt-in).

84 round programs (12 algorithms x 7 families): far more compile than the 10-minute suite
holds, so this module runs only when asked (its time is in benchmarks/README.md):

    FEDCONV_FAMILY_MATRIX=1 python -m pytest -q -n 2 -k "not googlenet" tests/test_family_matrix.py

GoogLeNet's cases compile with up to 18 GiB resident each, so on a 24 GB machine run them one
at a time (`-k "googlenet-fedconv]"` etc., without `-n`).

Each case: 2 clients at SR 1 and 0.5, one epoch in every loop, the family at a reduced width
on random data of its example input shape. Round 1 compiles; round 2 must not, must move the
global model (or, for standalone, the clients'), and must give finite losses.
"""

import os

import jax
import numpy as np
import pytest

from fedconv_jax.config import ALGORITHMS, default_config, validate
from fedconv_jax.core.sharding import xla_compiler_options
from fedconv_jax.data import Dataset
from fedconv_jax.experiment import build_experiment
from fedconv_jax.metrics import CompileCounter, params_digest
from fedconv_jax.models import model_names
from fedconv_jax.models.zoo import example_model

pytestmark = pytest.mark.skipif(
    not os.environ.get("FEDCONV_FAMILY_MATRIX"), reason="opt-in: FEDCONV_FAMILY_MATRIX=1 (about 84 compiles)"
)

# Reduced widths at which SR 0.5 still leaves every unit at least one channel. These two
# families' rounds compile at optimisation level 0, as a CPU run of them should (README, "Model
# families"); the suite's conftest sets that level for every program anyway.
GLOBAL_WIDTH = {"resnet18": 0.125, "googlenet": 0.125}
DEFAULT_WIDTH = 0.25
FAMILIES = tuple(model_names())


def _case(family: str, algorithm: str):
    width = GLOBAL_WIDTH.get(family, DEFAULT_WIDTH)
    shape = example_model(family).input_shape
    rng = np.random.default_rng(0)
    dataset = Dataset(
        name=f"random_{family}", images=rng.random((240, *shape), dtype=np.float32),
        labels=rng.integers(0, 10, 240).astype(np.int32), num_classes=10,
    )
    config = default_config()
    config.update(
        algorithm=algorithm, model=family, global_width=width, num_clients=2, shrink_ratios=(1.0, 0.5),
        partition="iid", local_epochs=1, pretrain_epochs=1, compress_epochs=1, dilate_epochs=1,
        aggregate_epochs=1, phase_timing=False, client_costs=False, split_fractions=(0.2, 0.2, 0.5, 0.1),
        xla_opt_level=0 if family in GLOBAL_WIDTH else "auto",
    )
    validate(config)
    return build_experiment(config, dataset=dataset)


def test_every_family_is_in_the_matrix():
    assert set(FAMILIES) >= {"cnn", "resnet18", "googlenet", "har_wiar", "har_dcd", "har_harbox"}
    for family in FAMILIES:
        assert example_model(family, GLOBAL_WIDTH.get(family, DEFAULT_WIDTH)).fits(0.5), family


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("family", FAMILIES)
def test_one_round_of_every_family_compiles_once(family, algorithm):
    exp = _case(family, algorithm)
    round_fn = jax.jit(exp.algorithm.round, compiler_options=xla_compiler_options(exp.config.xla_opt_level))
    digest = lambda state: params_digest(exp.algorithm.digest(state))  # noqa: E731
    state, first = round_fn(exp.state, exp.data, exp.hparams)
    counter = CompileCounter()
    with counter.counting():
        second_state, second = round_fn(state, exp.data, exp.hparams)
        digests = [digest(exp.state), digest(state), digest(second_state)]
    assert counter.count == 0
    assert digests[0] != digests[1] != digests[2]  # every round moves what the algorithm keeps
    for metrics in jax.device_get((first, second)):
        if jax.tree.leaves(exp.state.global_vars["params"]):  # standalone, fedmd: none (NaN by design)
            assert np.isfinite(metrics["global_loss"]), metrics
        if algorithm != "serveralone":  # serveralone has no clients
            accuracy = np.concatenate([np.ravel(a) for a in metrics["client_accuracy"]])
            assert np.all(np.isfinite(accuracy) & (accuracy >= 0)), metrics
