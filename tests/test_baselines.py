"""Every baseline as one compiled round: compiles once over rounds, reports FedConv's metrics."""

import jax
import numpy as np
import pytest
from test_round import tiny_config

from fedconv_jax.baselines import BASELINES, init_baseline_state, make_baseline_round_fn
from fedconv_jax.baselines.common import pretrain_on_server
from fedconv_jax.experiment import build_experiment
from fedconv_jax.metrics import CompileCounter, params_digest
from fedconv_jax.tuning import evaluate


def _run(algorithm, rounds=2):
    config = tiny_config()
    config.algorithm = algorithm
    exp = build_experiment(config)
    counter = CompileCounter()
    round_fn = jax.jit(make_baseline_round_fn(algorithm, exp.round_config))
    state, digests, metrics = exp.state, [], []
    with counter.counting():
        for _ in range(rounds):
            state, m = round_fn(state, exp.data, exp.hparams)
            digests.append(params_digest(state))
            metrics.append(jax.device_get(m))
    return exp, state, digests, metrics, counter.count, round_fn


@pytest.fixture(scope="module")
def runs():
    return {algorithm: _run(algorithm) for algorithm in BASELINES}


@pytest.mark.parametrize("algorithm", BASELINES)
def test_baseline_compiles_once_and_reports_fedconvs_metrics(runs, algorithm):
    exp, state, digests, metrics, compiles, _ = runs[algorithm]
    assert compiles == 1  # rolling / random slices are traced inputs: no recompile in round 2
    assert int(state.round) == 2
    last = metrics[-1]
    assert [a.shape for a in last["client_accuracy"]] == [(2,), (2,)]
    assert [c.shape for c in last["client_test_count"]] == [(2,), (2,)]
    assert all(np.all((a >= 0) & (a <= 1)) for a in last["client_accuracy"])
    if algorithm == "standalone":
        assert np.isnan(last["global_accuracy"])  # no global model
        before = jax.tree.leaves(exp.state.client_vars)
        assert all(not np.allclose(a, b) for a, b in zip(before, jax.tree.leaves(state.client_vars)))
        assert digests[0] != digests[1]  # the digest covers the clients' own models
    else:
        assert 0.0 <= float(last["global_accuracy"]) <= 1.0 and np.isfinite(last["global_loss"])
        assert digests[0] != digests[1]  # the global model moves every round
        full = exp.round_config.model.init(jax.random.key(0), 0.5 if algorithm == "fedavg_small" else 1.0)
        assert jax.tree.map(np.shape, state.global_vars) == jax.tree.map(np.shape, full)


def test_fedrolex_equals_heterofl_in_round_one_then_rolls(runs):
    """Round 0 rolls by 0 channels: the same slices as HeteroFL; round 1 differs."""
    hetero, rolex, dropout = (runs[a][2] for a in ("heterofl", "fedrolex", "feddropout"))
    assert hetero[0] == rolex[0]
    assert hetero[1] != rolex[1]
    assert dropout[0] != hetero[0]


@pytest.mark.parametrize("algorithm", ["feddropout", "fedrolex"])
def test_rerun_from_the_same_state_is_identical(runs, algorithm):
    exp, _, digests, _, _, round_fn = runs[algorithm]
    state, _ = round_fn(exp.state, exp.data, exp.hparams)
    assert params_digest(state) == digests[0]


def test_optional_pretraining_on_d_runs_in_round_one_only():
    exp = build_experiment(tiny_config())  # pretrain_epochs = 1
    cfg = exp.round_config
    state = init_baseline_state("heterofl", cfg, jax.random.key(0))

    @jax.jit
    def pretrained(state):
        new = pretrain_on_server(cfg, 1.0, state, exp.data, exp.hparams, True)
        loss = lambda v: evaluate(lambda x: cfg.model.apply(1.0, v, x)[0], exp.data.images, exp.data.labels, exp.data.server_holdout)[1]
        return new, loss(state.global_vars), loss(new)

    new, before, after = pretrained(state)
    assert params_digest(state.replace(global_vars=new)) != params_digest(state)
    assert float(after) <= float(before)  # held-out selection keeps the better of start and epoch 1
    later, _, _ = pretrained(state.replace(round=state.round + 1))
    assert params_digest(state.replace(global_vars=later)) == params_digest(state)
    assert pretrain_on_server(cfg, 1.0, state, exp.data, exp.hparams, False) is state.global_vars
