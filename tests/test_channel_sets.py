"""Hermes and TailorFL's channel choice against references written out for the CNN's layout:
which parameters belong to a channel, their norm, their Taylor importance, and that only
the round's participants change their sets. The protocol checks are in test_algorithms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_round import tiny_config

from fedconv_jax.algorithms import slicing
from fedconv_jax.algorithms.channel_sets import (
    channel_steps,
    personal_view,
    top_channels,
)
from fedconv_jax.algorithms.hermes import norm_scores
from fedconv_jax.algorithms.tailorfl import taylor_scores
from fedconv_jax.core.tuning import masked_cross_entropy
from fedconv_jax.experiment import build_experiment


@pytest.fixture(scope="module")
def exp():
    config = tiny_config()
    config.algorithm = "hermes"
    return build_experiment(config)


def _channel_masks(params, unit, c):
    """0/1 trees of the entries of channel c of `unit`, written out for the 2-layer CNN:
    the filter producing it and its bias, and the next layer's weights reading it (the
    dense layer's input is the channel-major flatten: rows c*r .. (c+1)*r - 1)."""
    mask = jax.tree.map(np.zeros_like, jax.tree.map(np.asarray, params))
    mask[unit]["kernel"][..., c] = 1
    mask[unit]["bias"][c] = 1
    if unit == "conv_0":
        mask["conv_1"]["kernel"][:, :, c, :] = 1
    else:
        r = params["head"]["kernel"].shape[0] // params["conv_1"]["kernel"].shape[-1]
        mask["head"]["kernel"][c * r : (c + 1) * r] = 1
    return mask


def _client_round(exp):
    """Tier 1 (SR 0.5): what its 2 clients were sent, and uploads as if training had shrunk it."""
    steps = channel_steps(exp.spec, norm_scores)
    _, sent, _ = steps.send(exp.state, exp.data, exp.hparams)
    noise = jax.tree.map(lambda x: 0.01 * jax.random.normal(jax.random.key(3), x.shape), sent[1])
    uploads = jax.tree.map(lambda x, n: 0.2 * x + n, sent[1], noise)  # shrunk: weaker than channels not held
    return steps, sent, uploads


@pytest.mark.parametrize("kind", ["norm", "taylor"])
def test_scores_sum_each_channels_own_parameters(exp, kind):
    _, _, uploads = _client_round(exp)
    rules = slicing.channel_rules(exp.spec.model)
    channels = jax.tree.map(lambda x: x[1], exp.state.channels[1])
    upload = jax.tree.map(lambda x: x[0], uploads)
    train_set = jax.tree.map(lambda x: x[0], exp.data.client_train[1])
    args = (exp.spec, rules, exp.state.global_vars, upload, channels, exp.data.images, exp.data.labels, train_set)
    scores = (norm_scores if kind == "norm" else taylor_scores)(*args)
    view = jax.tree.map(np.asarray, personal_view(rules, exp.state.global_vars, upload, channels))
    if kind == "norm":
        per_entry = jax.tree.map(np.square, view)
    else:
        idx, mask = train_set.idx[: exp.spec.eval_chunk], train_set.mask[: exp.spec.eval_chunk]

        def loss(p):
            logits, _ = exp.spec.model.apply(1.0, {"params": p, "batch_stats": {}}, exp.data.images[idx])
            return masked_cross_entropy(logits, exp.data.labels[idx], mask)

        grads = jax.tree.map(np.asarray, jax.grad(loss)(jax.tree.map(jnp.asarray, view)))
        per_entry = jax.tree.map(np.multiply, view, grads)
    for unit, width in exp.spec.model.unit_widths(1.0).items():
        want = []
        for c in range(width):
            total = sum(np.sum(x * m) for x, m in zip(jax.tree.leaves(per_entry),
                                                     jax.tree.leaves(_channel_masks(view, unit, c))))
            want.append(total if kind == "norm" else total**2)
        np.testing.assert_allclose(scores[unit], want, rtol=1e-4, atol=1e-10)


def test_the_personal_view_holds_the_clients_channels_and_the_global_rest(exp):
    _, _, uploads = _client_round(exp)
    rules = slicing.channel_rules(exp.spec.model)
    channels = {"conv_0": jnp.array([1, 4, 5, 9, 10, 11, 12, 15]), "conv_1": jnp.arange(0, 32, 2)}
    upload = jax.tree.map(lambda x: x[0], uploads)
    view = personal_view(rules, exp.state.global_vars, upload, channels)
    kernel = np.asarray(view["conv_0"]["kernel"])
    np.testing.assert_array_equal(kernel[..., np.asarray(channels["conv_0"])], upload["params"]["conv_0"]["kernel"])
    others = np.setdiff1d(np.arange(16), channels["conv_0"])
    np.testing.assert_array_equal(kernel[..., others], np.asarray(exp.state.global_vars["params"]["conv_0"]["kernel"])[..., others])


def test_top_channels_keeps_the_best_scored_in_order():
    scores = {"a": jnp.array([0.5, 3.0, 1.0, 3.0, -1.0])}
    np.testing.assert_array_equal(top_channels(scores, {"a": 3})["a"], [1, 2, 3])


def test_only_participants_choose_new_channels(exp):
    steps, _, uploads = _client_round(exp)
    select = dict(steps.server)["select"]
    present = (jnp.array([True, True]), jnp.array([True, False]))
    data = exp.data._replace(client_mask=present)
    tier0 = jax.tree.map(lambda x: x, exp.state.channels[0])
    _, sent, _ = steps.send(exp.state, exp.data, exp.hparams)
    state, _, metrics = jax.jit(select)(exp.state, data, exp.hparams, (exp.state.global_vars, (sent[0], uploads)))
    rules = slicing.channel_rules(exp.spec.model)
    upload = jax.tree.map(lambda x: x[0], uploads)
    mine = jax.tree.map(lambda x: x[0], exp.state.channels[1])
    want = top_channels(
        norm_scores(exp.spec, rules, exp.state.global_vars, upload, mine, exp.data.images, exp.data.labels, None),
        {u: int(x.shape[-1]) for u, x in mine.items()},
    )
    for unit in want:
        np.testing.assert_array_equal(state.channels[1][unit][0], want[unit])  # participant: its best
        np.testing.assert_array_equal(state.channels[1][unit][1], exp.state.channels[1][unit][1])  # absent: as before
        np.testing.assert_array_equal(state.channels[0][unit], tier0[unit])  # SR 1 holds every channel
    assert int(metrics["channel_set_changes"][1]) >= 1  # shrunk channels were swapped out
