"""Client sampling inside the round: K of the present clients, seeded by (key, round), no recompiles."""

import jax
import jax.numpy as jnp
import numpy as np
from test_round import tiny_config

from fedconv_jax.experiment import build_experiment
from fedconv_jax.metrics import CompileCounter
from fedconv_jax.round import make_round_fn
from fedconv_jax.sampling import SAMPLING_STREAM, sample_clients

PRESENT = (jnp.array([True, True, True, False]), jnp.array([True, True]), jnp.array([True, False]))


def _reference(key, round_index, present, k):
    """NumPy: the k present slots with the smallest uniform scores of the same draw."""
    flat = np.concatenate([np.asarray(p) for p in present])
    draw_key = jax.random.fold_in(jax.random.fold_in(key, round_index), SAMPLING_STREAM)
    scores = np.asarray(jax.random.uniform(draw_key, flat.shape))
    order = [i for i in np.argsort(scores, kind="stable") if flat[i]][:k]
    out = np.zeros_like(flat)
    out[order] = True
    return out


def test_draws_k_present_clients_like_the_reference_and_varies_by_round():
    key = jax.random.key(3)
    draws = []
    for r in range(6):
        mask = sample_clients(key, jnp.int32(r), PRESENT, 3)
        flat = np.concatenate([np.asarray(m) for m in mask])
        assert [m.shape for m in mask] == [(4,), (2,), (2,)]
        assert flat.sum() == 3
        assert not flat[[3, 7]].any()  # padding slots are never drawn
        np.testing.assert_array_equal(flat, _reference(key, r, PRESENT, 3))
        draws.append(tuple(flat))
    assert len(set(draws)) > 1
    again = sample_clients(key, jnp.int32(0), PRESENT, 3)
    np.testing.assert_array_equal(np.concatenate(again), np.array(draws[0]))


def test_zero_or_all_keeps_every_present_client():
    key = jax.random.key(0)
    for k in (0, 6, 8):
        mask = sample_clients(key, jnp.int32(1), PRESENT, k)
        for got, want in zip(mask, PRESENT):
            np.testing.assert_array_equal(got, want)


def test_rounds_with_different_tier_counts_compile_once():
    config = tiny_config()
    config.clients_per_round = 2
    config.pretrain_epochs = config.compress_epochs = config.aggregate_epochs = 0  # a cheaper compile
    config.aggregation = "mean"
    exp = build_experiment(config)
    # The draws the round must make (host side), up to the first round whose per-tier
    # counts differ from round 0's.
    expected = []
    for r in range(20):
        mask = sample_clients(exp.state.key, jnp.int32(r), exp.data.client_mask, 2)
        expected.append(np.concatenate([np.asarray(m) for m in mask]))
        if expected[-1][:2].sum() != expected[0][:2].sum():
            break
    assert expected[-1][:2].sum() != expected[0][:2].sum()
    counter = CompileCounter()
    round_fn = jax.jit(make_round_fn(exp.round_config))
    state = exp.state
    with counter.counting():
        for want in expected:
            state, metrics = round_fn(state, exp.data)
            np.testing.assert_array_equal(np.concatenate([np.asarray(x) for x in metrics["participating"]]), want)
    assert counter.count == 1
