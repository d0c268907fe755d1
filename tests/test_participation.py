"""Dropout, non-finite uploads and poisoned uploads: the mask functions and the compiled round."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedconv_jax.algorithms.fedconv.round import PHASES, compress_phase, fedconv_steps
from fedconv_jax.config import default_config, validate
from fedconv_jax.core.participation import (
    attack_code,
    finite_mask,
    participation_mask,
    poison_uploads,
    select_clients,
)
from fedconv_jax.core.sharding import jit_round, make_client_mesh
from fedconv_jax.core.skeleton import clients_step
from fedconv_jax.experiment import build_experiment, time_phases
from fedconv_jax.metrics import CompileCounter


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_participation_mask_drops_floor_of_the_present_clients(rate):
    base = np.array([True] * 7 + [False] * 3)
    seen = set()
    for r in range(20):
        mask = np.asarray(participation_mask(jax.random.key(r), jnp.asarray(base), rate))
        assert not (mask & ~base).any()  # absent slots never come back
        assert mask.sum() == 7 - int(np.floor(rate * 7 + 1e-9)) >= 1
        seen.add(tuple(mask))
    assert len(seen) == (1 if rate * 7 < 1 else len(seen)) and (rate * 7 < 1 or len(seen) > 1)  # key-dependent
    again = participation_mask(jax.random.key(3), jnp.asarray(base), rate)
    np.testing.assert_array_equal(again, participation_mask(jax.random.key(3), jnp.asarray(base), rate))


def test_participation_mask_is_uniform_over_present_clients():
    base = jnp.asarray([True] * 5 + [False])
    keys = jax.random.split(jax.random.key(0), 2000)
    masks = np.asarray(jax.vmap(lambda k: participation_mask(k, base, 0.4))(keys))
    assert (masks.sum(1) == 3).all()
    np.testing.assert_allclose(masks[:, :5].mean(0), 0.6, atol=0.05)  # each kept with p = 3/5
    assert not masks[:, 5].any()
    np.testing.assert_array_equal(participation_mask(keys[0], base, 0.0), base)


def test_finite_mask_and_select_clients():
    stacked = {"w": jnp.ones((3, 2, 2)), "b": jnp.zeros((3, 4)), "step": jnp.zeros((3,), jnp.int32)}
    stacked["w"] = stacked["w"].at[1, 0, 1].set(jnp.nan)
    stacked["b"] = stacked["b"].at[2, 3].set(-jnp.inf)
    ok = finite_mask(stacked)
    np.testing.assert_array_equal(ok, [True, False, False])
    fallback = {"w": jnp.full((2, 2), 5.0), "b": jnp.full((4,), 6.0), "step": jnp.int32(7)}
    out = select_clients(ok, stacked, fallback)
    np.testing.assert_array_equal(out["w"][1], 5.0)
    np.testing.assert_array_equal(out["b"][2], 6.0)
    np.testing.assert_array_equal(out["w"][0], 1.0)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(out))


@pytest.mark.parametrize("mode", ["sign_flip", "noise"])
def test_poison_uploads_against_numpy(mode):
    rng = np.random.default_rng(0)
    received = {"w": rng.normal(size=(3, 2)).astype(np.float32)}
    trained = {"w": rng.normal(size=(4, 3, 2)).astype(np.float32)}
    poisoned = np.array([False, True, False, True])
    attack = jnp.asarray(np.where(poisoned, attack_code(mode), 0))
    out = np.asarray(poison_uploads(jax.random.key(1), received, trained, attack, 2.5)["w"])
    np.testing.assert_array_equal(out[~poisoned], trained["w"][~poisoned])
    if mode == "sign_flip":
        expected = received["w"] - 2.5 * (trained["w"][poisoned] - received["w"])
        np.testing.assert_allclose(out[poisoned], expected, rtol=1e-6)
    else:
        noise = (out[poisoned] - received["w"]) / 2.5
        assert abs(noise.std() - 1.0) < 0.6 and not np.allclose(out[poisoned], trained["w"][poisoned])
        assert not np.allclose(noise[0], noise[1])  # every attacker draws its own noise


def test_poison_noise_is_drawn_per_leaf_and_honest_rounds_pass_through():
    rng = np.random.default_rng(0)
    received = {"w": np.zeros((30, 20), np.float32), "b": np.zeros((40,), np.float32)}
    trained = {k: rng.normal(size=(2, *v.shape)).astype(np.float32) for k, v in received.items()}
    noisy = poison_uploads(jax.random.key(1), received, trained, jnp.asarray([attack_code("noise")] * 2), 1.0)
    for leaf in ("w", "b"):
        assert noisy[leaf].shape == trained[leaf].shape
        assert abs(float(np.std(noisy[leaf])) - 1.0) < 0.15 and abs(float(np.mean(noisy[leaf]))) < 0.15
    assert not np.allclose(np.asarray(noisy["w"]).ravel()[:40], np.asarray(noisy["b"][0]))  # leaves differ
    honest = poison_uploads(jax.random.key(1), received, trained, jnp.zeros(2, jnp.int32), 1.0)
    jax.tree.map(np.testing.assert_array_equal, honest, trained)


def _fault_config():
    """Cheap to compile (no pretraining, no compression tuning, plain mean aggregation);
    SR 1 clients last, so the last client (the poisoned one) uploads undilated params."""
    c = default_config()
    c.num_clients = 4
    c.shrink_ratios = (0.5, 0.5, 1.0, 1.0)
    c.local_epochs = 1
    c.pretrain_epochs = c.compress_epochs = c.aggregate_epochs = 0
    c.dilate_epochs = 1
    c.aggregation = "mean"
    c.fedconv.aggregation_scope = "all"  # the sample-weighted mean over every client: the linear reference's rule
    c.phase_timing = False
    validate(c)
    return c


@pytest.fixture(scope="module")
def fault_round():
    exp = build_experiment(_fault_config())
    # As the CLI jits it: pinned input layouts, so the tests' edited copies of the data
    # (NaN images, other masks) are laid out like the original and reuse one program.
    round_fn = jit_round(exp.algorithm, make_client_mesh(1), exp.state, exp.data, exp.hparams, donate=False)
    return exp, round_fn


def _edit(data, **fields):
    """`data` with `fields` replaced, laid out like the fields they replace: JAX's array
    types carry their sharding, so an unplaced copy would retrace and recompile the round."""
    layout = {k: jax.tree.map(lambda x: x.sharding, getattr(data, k)) for k in fields}
    return data._replace(**{k: jax.device_put(v, layout[k]) for k, v in fields.items()})


def _flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def test_plain_averaging_keeps_the_aggregation_weights(fault_round):
    exp, round_fn = fault_round
    state, metrics = round_fn(exp.state, exp.data, exp.hparams)
    assert "aggregate/best_epoch" not in metrics
    for new, old in zip(jax.tree.leaves((state.agg_weights, state.agg_opt)), jax.tree.leaves((exp.state.agg_weights, exp.state.agg_opt))):
        np.testing.assert_array_equal(new, old)
    assert not np.allclose(_flat(state.global_vars), _flat(exp.state.global_vars))


def test_phase_separated_run_times_every_phase_and_equals_the_fused_round(fault_round):
    exp, round_fn = fault_round
    seconds, phased = time_phases(exp.algorithm, exp.state, exp.data, exp.hparams)
    assert list(seconds) == list(PHASES) and all(s >= 0 for s in seconds.values())
    fused, _ = round_fn(exp.state, exp.data, exp.hparams)
    np.testing.assert_allclose(_flat(phased.global_vars), _flat(fused.global_vars), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_flat(phased.dilation), _flat(fused.dilation), rtol=1e-6, atol=1e-6)
    assert int(phased.round) == int(fused.round) == 1


def test_nan_client_is_excluded_and_equals_the_round_without_it(fault_round):
    exp, round_fn = fault_round
    counter = CompileCounter()
    data = exp.data
    assert exp.spec.tier_ratios == (1.0, 0.5)
    # Client slot 0 of the SR 0.5 tier gets NaN training images: its upload is NaN.
    train = data.client_train[1]
    bad_idx = np.asarray(train.idx[0])[np.asarray(train.mask[0])]
    nan_data = _edit(data, images=data.images.at[bad_idx].set(jnp.nan))
    with counter.counting():
        state, metrics = round_fn(exp.state, nan_data, exp.hparams)
    assert int(metrics["excluded_clients"]) == 1 and int(metrics["dropped_clients"]) == 0
    np.testing.assert_array_equal(metrics["participating"][1], [False, True])
    assert np.isfinite(_flat(state.global_vars)).all()
    assert np.isfinite(float(metrics["global_accuracy"]))
    # Reference: the same round with that client absent from the start.
    without = _edit(data, client_mask=(data.client_mask[0], jnp.asarray([False, True])))
    with counter.counting():
        ref_state, ref_metrics = round_fn(exp.state, without, exp.hparams)
    assert counter.count <= 1  # edited inputs reuse the round's program (compiled here if first)

    assert int(ref_metrics["excluded_clients"]) == 0
    np.testing.assert_allclose(_flat(state.global_vars), _flat(ref_state.global_vars), rtol=0, atol=1e-6)
    # Its dilation filters and their optimizer state kept their old values; the other client's moved.
    for new, old in zip(jax.tree.leaves(state.dilation[1]), jax.tree.leaves(exp.state.dilation[1])):
        np.testing.assert_array_equal(new[0], old[0])
    moved = [not np.array_equal(n[1], o[1]) for n, o in zip(jax.tree.leaves(state.dilation[1]), jax.tree.leaves(exp.state.dilation[1]))]
    assert any(moved)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves((state.dilation, state.dilation_opt)))

    # Every upload non-finite: the global model stays as it was.
    all_nan = _edit(data, images=jnp.full_like(data.images, jnp.nan))
    state, metrics = round_fn(exp.state, all_nan, exp.hparams)
    assert int(metrics["excluded_clients"]) == 4
    np.testing.assert_array_equal(_flat(state.global_vars), _flat(exp.state.global_vars))


def test_sign_flipped_client_matches_the_linear_reference(fault_round):
    exp, round_fn = fault_round
    data = exp.data
    flip = attack_code("sign_flip")
    poisoned = (jnp.asarray([0, flip]), jnp.asarray([0, 0]))  # config client 3 (the last)
    np.testing.assert_array_equal(np.concatenate(data.poisoned), [0] * 4)  # poisoned_clients=0
    clean, _ = round_fn(exp.state, data, exp.hparams)
    attacked, metrics = round_fn(exp.state, _edit(data, poisoned=poisoned), exp.hparams)
    assert int(metrics["excluded_clients"]) == 0  # a finite attack is not caught by the screen
    without = _edit(data, client_mask=(jnp.asarray([True, False]), data.client_mask[1]))
    ex, _ = round_fn(exp.state, without, exp.hparams)
    # Plain mean: g = sum_j f_j u_j. Recover client 3's trained params from the two honest
    # rounds, then predict the attacked aggregate: g_clean - f_3 * (1 + scale) * (t_3 - received).
    n = np.concatenate([np.asarray(x) for x in data.num_samples])
    f3 = n[1] / n.sum()  # tier-major slots: (client 2, client 3, client 0, client 1)
    g_clean, g_ex = _flat(clean.global_vars["params"]), _flat(ex.global_vars["params"])
    t3 = (g_clean - (1 - f3) * g_ex) / f3
    received = _flat(exp.state.global_vars["params"])
    expected = g_clean - f3 * 2.0 * (t3 - received)
    np.testing.assert_allclose(_flat(attacked.global_vars["params"]), expected, atol=2e-4)
    assert not np.allclose(_flat(attacked.global_vars["params"]), g_clean, atol=1e-3)


def test_dropout_inside_the_round_is_seeded_by_round():
    config = _fault_config()
    config.num_clients = 6
    config.shrink_ratios = (1.0,) * 4 + (0.5,) * 2
    config.dropout_rate = 0.5
    exp = build_experiment(config)
    cfg, hparams = exp.spec, exp.hparams

    @jax.jit
    def clients(state, data):
        subs = compress_phase(cfg, state, data, hparams)[1]
        return clients_step(cfg, fedconv_steps(cfg), state, data, hparams, subs)[1]

    seen = []
    for r in range(6):
        m = clients(exp.state.replace(round=jnp.int32(r)), exp.data)
        mask = np.concatenate([np.asarray(x) for x in m["participating"]])
        assert mask.sum() == 3 and int(m["dropped_clients"]) == 3
        seen.append(tuple(mask))
    assert len(set(seen)) > 1
    again = clients(exp.state.replace(round=jnp.int32(2)), exp.data)
    assert tuple(np.concatenate([np.asarray(x) for x in again["participating"]])) == seen[2]


def test_poisoned_clients_are_the_last_in_config_order():
    config = _fault_config()
    config.poisoned_clients, config.poison_mode = 3, "noise"
    exp = build_experiment(config, abstract_state=True)
    # Tiers (1.0: clients 2, 3), (0.5: clients 0, 1): the last three are 1, 2, 3.
    noise = attack_code("noise")
    np.testing.assert_array_equal(exp.data.poisoned[0], [noise, noise])
    np.testing.assert_array_equal(exp.data.poisoned[1], [0, noise])
