"""The whole round as one compiled program: compiles once, deterministic, carries BN state."""

import jax
import jax.numpy as jnp
import numpy as np

from fedconv_jax.config import default_config, validate
from fedconv_jax.experiment import build_experiment
from fedconv_jax.metrics import CompileCounter, params_digest
from fedconv_jax.round import make_round_fn


def tiny_config(model="cnn"):
    c = default_config()
    c.model = model
    c.num_clients = 4
    c.shrink_ratios = (1.0, 1.0, 0.5, 0.5)
    c.local_epochs = 1
    c.pretrain_epochs = 1
    c.compress_epochs = c.dilate_epochs = c.aggregate_epochs = 1
    c.phase_timing = False
    validate(c)
    return c


def test_round_compiles_once_and_is_deterministic():
    exp = build_experiment(tiny_config())
    counter = CompileCounter()
    round_fn = jax.jit(make_round_fn(exp.round_config))  # no donation: the init state is reused

    def run(state, rounds):
        digests, metrics = [], None
        for _ in range(rounds):
            state, metrics = round_fn(state, exp.data)
            digests.append(params_digest(state))
        return state, digests, metrics

    with counter.counting():
        state, first, metrics = run(exp.state, 3)
        _, second, _ = run(exp.state, 3)
    assert counter.count == 1
    assert first == second
    assert len(set(first)) == 3  # the model changes every round
    assert int(state.round) == 3
    assert np.isfinite(float(metrics["global_accuracy"]))
    assert [a.shape for a in metrics["client_accuracy"]] == [(2,), (2,)]
    # The tier's dilation filters changed; the SR 1 tier has none.
    assert state.dilation[0] == {}
    before = jax.tree.leaves(exp.state.dilation[1])
    after = jax.tree.leaves(state.dilation[1])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))

    state_b = build_experiment(_with_seed(tiny_config(), 1)).state
    _, third, _ = run(state_b, 1)
    assert third[0] != first[0]


def _with_seed(config, seed):
    config.seed = seed
    return config


def test_batchnorm_state_flows_through_the_round():
    config = tiny_config("cnn_bn")
    # Only what touches batch statistics: slicing, client training, dilation, re-estimation.
    config.pretrain_epochs = config.compress_epochs = config.aggregate_epochs = 0
    config.aggregation = "mean"
    exp = build_experiment(config)
    state, _ = jax.jit(make_round_fn(exp.round_config))(exp.state, exp.data)
    before, after = exp.state.global_vars["batch_stats"], state.global_vars["batch_stats"]
    assert jax.tree.map(jnp.shape, before) == jax.tree.map(jnp.shape, after)
    assert not np.allclose(before["bn_1"]["mean"], after["bn_1"]["mean"])  # re-estimated on D
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(after))
    # BatchNorm scale/bias are compressed like conv biases: their filters exist.
    assert "bn_0" in state.compression[1]
