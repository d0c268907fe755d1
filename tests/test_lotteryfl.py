"""LotteryFL's mechanism against NumPy references: magnitude pruning, the per-client masks,
masked training and the average over holders. The protocol checks are in test_algorithms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedconv_jax.algorithms.lotteryfl import (
    average_over_holders,
    prune_client,
    prune_smallest,
    sparse_bytes,
    target_density,
)
from fedconv_jax.core.client import local_train
from fedconv_jax.core.data import IndexSet
from fedconv_jax.data import load_dataset
from fedconv_jax.models import make_model


def test_prune_smallest_keeps_the_largest_kept_magnitudes():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 7)).astype(np.float32)
    keep = rng.random((6, 7)) < 0.7
    for count in (0, 5, int(keep.sum())):
        got = np.asarray(prune_smallest(jnp.asarray(w), jnp.asarray(keep), jnp.asarray(count)))
        order = np.argsort(-np.abs(w[keep]), kind="stable")  # among the kept entries, largest first
        want = np.zeros(keep.sum(), bool)
        want[order[:count]] = True
        expected = np.zeros_like(keep)
        expected[keep] = want
        np.testing.assert_array_equal(got, expected)


def test_prune_client_drops_a_rate_of_each_weight_tensor_down_to_the_target():
    rng = np.random.default_rng(1)
    params = {"kernel": jnp.asarray(rng.normal(size=(10, 10)), jnp.float32), "bias": jnp.ones((10,))}
    keep = {"kernel": jnp.ones((10, 10), bool), "bias": jnp.ones((10,), bool)}
    pruned = prune_client(params, keep, density=0.7, rate=0.2, prune=jnp.asarray(True))
    assert int(pruned["kernel"].sum()) == 80 and bool(pruned["bias"].all())  # biases are never pruned
    kept_min = np.abs(np.asarray(params["kernel"]))[np.asarray(pruned["kernel"])].min()
    dropped_max = np.abs(np.asarray(params["kernel"]))[~np.asarray(pruned["kernel"])].max()
    assert dropped_max <= kept_min  # the smallest magnitudes went
    again = prune_client(params, pruned, density=0.7, rate=0.2, prune=jnp.asarray(True))
    assert int(again["kernel"].sum()) == 70  # 80 * 0.8 = 64 is below the target: stop at 70
    assert int(prune_client(params, again, 0.7, 0.2, jnp.asarray(True))["kernel"].sum()) == 70
    unchanged = prune_client(params, keep, 0.7, 0.2, jnp.asarray(False))
    assert bool(unchanged["kernel"].all())


def test_average_over_holders_matches_a_loop():
    rng = np.random.default_rng(2)
    old = {"w": rng.normal(size=(3, 4)).astype(np.float32)}
    tiers = []
    for capacity in (2, 3):
        params = {"w": rng.normal(size=(capacity, 3, 4)).astype(np.float32)}
        keep = {"w": rng.random((capacity, 3, 4)) < 0.5}
        present = rng.random(capacity) < 0.8
        tiers.append((params, keep, present))
    got = np.asarray(average_over_holders(jax.tree.map(jnp.asarray, old), jax.tree.map(jnp.asarray, tiers))["w"])
    want = old["w"].copy()
    for i in range(3):
        for j in range(4):
            values = [p["w"][c, i, j] for p, k, m in tiers for c in range(len(m)) if m[c] and k["w"][c, i, j]]
            if values:
                want[i, j] = np.mean(values)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_masked_training_holds_pruned_weights_at_zero():
    data = load_dataset("digits")
    model = make_model("cnn", 10, (8, 8, 1), "im2col", 0.25)
    variables = model.init(jax.random.key(0))
    rng = np.random.default_rng(3)
    keep = jax.tree.map(lambda x: jnp.asarray(rng.random(x.shape) < 0.5), variables["params"])
    start = {**variables, "params": jax.tree.map(lambda p, k: p * k, variables["params"], keep)}
    out = local_train(
        lambda v, x, train=False: model.apply(1.0, v, x, train), start, jnp.asarray(data.images[:64]),
        jnp.asarray(data.labels[:64]), IndexSet(jnp.arange(64), jnp.ones(64, bool)), jax.random.key(1),
        epochs=1, batch_size=16, lr=1e-2, keep=keep,
    )
    for new, old, k in zip(*(jax.tree.leaves(t) for t in (out["params"], start["params"], keep))):
        new, old, k = np.asarray(new), np.asarray(old), np.asarray(k)
        assert np.all(new[~k] == 0)
        assert not np.allclose(new[k], old[k])  # the kept weights trained


@pytest.fixture(scope="module")
def mnist_cnn():
    return make_model("cnn", 10, (28, 28, 1), "im2col")


def test_target_density_is_the_narrow_models_share_of_weights(mnist_cnn):
    # SPEC §6 CNN: conv 3x3x1x16, conv 3x3x16x32, dense 1568x10; at SR 0.5: 8 and 16 channels.
    full = 3 * 3 * 16 + 3 * 3 * 16 * 32 + 7 * 7 * 32 * 10
    half = 3 * 3 * 8 + 3 * 3 * 8 * 16 + 7 * 7 * 16 * 10
    assert target_density(mnist_cnn, 1.0) == 1.0
    assert math.isclose(target_density(mnist_cnn, 0.5), half / full)


def test_sparse_bytes_count_kept_values_a_bit_mask_and_dense_biases(mnist_cnn):
    density = target_density(mnist_cnn, 0.5)
    weights = (3 * 3 * 16, 3 * 3 * 16 * 32, 7 * 7 * 32 * 10)
    want = sum(math.ceil(density * n) * 4 + math.ceil(n / 8) for n in weights) + (16 + 32 + 10) * 4
    assert sparse_bytes(mnist_cnn, 0.5) == want
