"""The whole round as one compiled program: compiles once, deterministic, carries BN state."""

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedconv_jax.config import default_config, validate
from fedconv_jax.core.sampling import sample_clients
from fedconv_jax.experiment import build_experiment
from fedconv_jax.metrics import CompileCounter, params_digest


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
    round_fn = jax.jit(exp.algorithm.round)  # no donation: the init state is reused

    def run(state, rounds):
        digests, metrics = [], None
        for _ in range(rounds):
            state, metrics = round_fn(state, exp.data, exp.hparams)
            digests.append(params_digest(exp.algorithm.digest(state)))
        return state, digests, metrics

    state, first, metrics = run(exp.state, 1)  # compiles (unless this process already did)
    with counter.counting():
        state, later, metrics = run(state, 2)
        _, second, _ = run(exp.state, 3)
    first += later
    assert counter.count == 0  # nothing compiles after round 1
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
    # Phase metrics (`fedconv-jax report`): each learned step's start and selection; a loop
    # that kept its start (epoch 0) reports the same accuracy before and after.
    for phase in ("compress/0.5/", "dilate/0.5/", "aggregate/"):
        start, chosen, epoch = (np.asarray(metrics[phase + k]) for k in ("holdout_before", "holdout_accuracy", "best_epoch"))
        assert start.shape == chosen.shape == epoch.shape == ((2,) if phase.startswith("dilate") else ())
        np.testing.assert_array_equal(np.where(epoch == 0, start, chosen), chosen)

    state_b = build_experiment(_with_seed(tiny_config(), 1)).state
    _, third, _ = run(state_b, 1)
    assert third[0] != first[0]


def test_new_hyper_parameters_reuse_the_compiled_round():
    """Learning rates, the KLD weight and the poison scale are round inputs, not constants:
    new values run the same program (persistent cache off, so a new program would compile).
    Every loop keeps its last epoch: with held-out selection a loop whose tuning does not
    raise the tiny held-out accuracy keeps its start, whatever its learning rate."""
    config = tiny_config()
    config.select_best = False
    exp = build_experiment(config)
    counter = CompileCounter()
    round_fn = jax.jit(exp.algorithm.round)
    digest = lambda state: params_digest(exp.algorithm.digest(state))  # noqa: E731
    scaled = {name: value * 2.0 for name, value in exp.hparams.items()}
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        base, _ = round_fn(exp.state, exp.data, exp.hparams)  # compiles, unless this process already did
        with counter.counting():
            changed, _ = round_fn(exp.state, exp.data, scaled)
            for name in ("local_lr", "filter_lr", "aggregate_lr"):  # each one moves the model
                alone, _ = round_fn(exp.state, exp.data, {**exp.hparams, name: scaled[name]})
                assert digest(alone) != digest(base), name
    finally:
        jax.config.update("jax_enable_compilation_cache", True)
    assert counter.count == 0
    assert digest(changed) != digest(base)


def _with_seed(config, seed):
    config.seed = seed
    return config


@pytest.fixture(scope="module")
def sampled_batchnorm_rounds():
    """Rounds of the BatchNorm model with 2 of 4 clients drawn per round, up to the first
    round whose per-tier counts differ from round 0's; one program serves both tests below."""
    config = tiny_config("cnn_bn")
    config.clients_per_round = 2
    # Only what touches batch statistics: slicing, client training, dilation, re-estimation.
    config.pretrain_epochs = config.compress_epochs = config.aggregate_epochs = 0
    config.aggregation = "mean"
    exp = build_experiment(config)
    expected = []  # the draws the round must make (host side)
    for r in range(20):
        mask = sample_clients(exp.state.key, jnp.int32(r), exp.data.client_mask, 2)
        expected.append(np.concatenate([np.asarray(m) for m in mask]))
        if expected[-1][:2].sum() != expected[0][:2].sum():
            break
    counter = CompileCounter()
    round_fn = jax.jit(exp.algorithm.round)
    state, participating = exp.state, []
    for r, _ in enumerate(expected):
        with counter.counting() if r > 0 else contextlib.nullcontext():  # round 1 compiles
            state, metrics = round_fn(state, exp.data, exp.hparams)
        participating.append(np.concatenate([np.asarray(x) for x in metrics["participating"]]))
    return exp, state, expected, participating, counter.count


def test_rounds_with_different_tier_counts_compile_once(sampled_batchnorm_rounds):
    """Client sampling (sampling.py) inside the round: per-tier counts change, no recompile."""
    _, _, expected, participating, compiles = sampled_batchnorm_rounds
    assert expected[-1][:2].sum() != expected[0][:2].sum()
    for got, want in zip(participating, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert compiles == 0  # after round 1


def test_batchnorm_state_flows_through_the_round(sampled_batchnorm_rounds):
    exp, state, _, _, _ = sampled_batchnorm_rounds
    before, after = exp.state.global_vars["batch_stats"], state.global_vars["batch_stats"]
    assert jax.tree.map(jnp.shape, before) == jax.tree.map(jnp.shape, after)
    assert not np.allclose(before["bn_1"]["mean"], after["bn_1"]["mean"])  # re-estimated on D
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(after))
    # BatchNorm scale/bias are compressed like conv biases: their filters exist.
    assert "bn_0" in state.compression[1]


@pytest.mark.parametrize("statistics", ["refresh"])  # "slice": compress_batch_stats, test_filters.py
def test_compressed_batch_statistics_are_sliced_or_re_estimated_on_d(statistics):
    from fedconv_jax.algorithms.fedconv.compression import compress_batch_stats
    from fedconv_jax.algorithms.fedconv.round import compress_phase
    from fedconv_jax.core.tuning import refresh_batch_stats

    exp = build_experiment(tiny_config("cnn_bn"))
    cfg = dataclasses.replace(exp.algorithm.spec, compress_statistics=statistics)
    _, subs, _ = jax.jit(functools.partial(compress_phase, cfg))(exp.state, exp.data, exp.hparams)
    sub = subs[1]  # the SR 0.5 tier
    sliced = compress_batch_stats(exp.state.global_vars["batch_stats"], sub["batch_stats"])
    if statistics == "slice":
        jax.tree.map(np.testing.assert_array_equal, sub["batch_stats"], sliced)
        return
    apply_fn = functools.partial(cfg.model.apply, 0.5)
    want = refresh_batch_stats(
        apply_fn, {"params": sub["params"], "batch_stats": sliced}, exp.data.images, exp.data.server_train,
        cfg.local_batch_size,
    )["batch_stats"]
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), sub["batch_stats"], want)
    assert not np.allclose(sub["batch_stats"]["bn_0"]["mean"], sliced["bn_0"]["mean"])


def test_dilating_the_update_keeps_the_global_model_where_the_client_holds_nothing():
    """dilation_target="update" with identity filters (compression slices, dilation zero-pads):
    the client's block replaces the global one, every other element keeps the global value."""
    from fedconv_jax.algorithms.fedconv.compression import leading_block
    from fedconv_jax.algorithms.fedconv.round import aggregate_phase, dilate_phase

    exp = build_experiment(tiny_config())
    cfg = dataclasses.replace(exp.algorithm.spec, dilation_target="update", aggregation_scope="all", dilate_epochs=0)
    trained = tuple(
        jax.vmap(lambda k, r=ratio: cfg.model.init(k, r))(jax.random.split(jax.random.key(7 + t), 2))
        for t, ratio in enumerate(cfg.tier_ratios)
    )
    _, dilated, _ = jax.jit(functools.partial(dilate_phase, cfg))(exp.state, exp.data, exp.hparams, trained)
    jax.tree.map(np.testing.assert_array_equal, dilated[0], trained[0])  # SR 1 uploads are not dilated
    global_params = exp.state.global_vars["params"]
    for slot in range(2):
        def want(g, p, slot=slot):
            out = np.array(g)
            out[leading_block(p.shape[1:])] = p[slot]
            return out

        expected = jax.tree.map(want, global_params, trained[1]["params"])
        got = jax.tree.map(lambda x, slot=slot: x[slot], dilated[1]["params"])
        jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=0, atol=1e-6), got, expected)

    # aggregation_scope="holders" with plain averaging: each element is the sample-weighted
    # average of the uploads that hold it (HeteroFL's rule), else the previous global value.
    cfg = dataclasses.replace(cfg, aggregation="mean", aggregation_scope="holders")
    state, _, _ = jax.jit(functools.partial(aggregate_phase, cfg))(exp.state, exp.data, exp.hparams, dilated)
    n = np.concatenate([np.where(m, k, 0.0) for m, k in zip(exp.data.client_mask, exp.data.num_samples, strict=True)])
    assert np.count_nonzero(n[2:]) and np.count_nonzero(n[:2])  # both tiers upload

    def holders_average(g, full, half):
        total, weight = np.zeros(g.shape), np.zeros(g.shape)
        for j, upload in enumerate([*full, *half]):
            block = leading_block(upload.shape)
            total[block] += n[j] * upload
            weight[block] += n[j]
        return np.where(weight > 0, total / np.maximum(weight, 1e-30), g)

    expected = jax.tree.map(holders_average, global_params, trained[0]["params"], trained[1]["params"])
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), state.global_vars["params"], expected)
