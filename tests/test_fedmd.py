"""FedMD's mechanism against NumPy references: the consensus of the sampled clients' scores,
distillation towards it, and what a client sends. The protocol checks are in test_algorithms."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedconv_jax.algorithms.fedmd import consensus
from fedconv_jax.config import default_config
from fedconv_jax.core.algorithm import make_algorithm
from fedconv_jax.core.client import local_train
from fedconv_jax.core.data import IndexSet
from fedconv_jax.core.spec import RoundSpec
from fedconv_jax.core.tuning import masked_cross_entropy
from fedconv_jax.data import load_dataset
from fedconv_jax.models import make_model


def test_consensus_is_the_mean_over_sampled_clients_of_every_tier():
    rng = np.random.default_rng(0)
    scores = (rng.normal(size=(2, 5, 3)), rng.normal(size=(3, 5, 3)))
    mask = (np.array([True, False]), np.array([True, True, False]))
    got = consensus(tuple(map(jnp.asarray, scores)), tuple(map(jnp.asarray, mask)))
    want = np.mean([scores[0][0], scores[1][0], scores[1][1]], axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_soft_cross_entropy_is_the_kl_plus_the_targets_entropy():
    rng = np.random.default_rng(1)
    logits, target_logits = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    target = np.exp(target_logits) / np.exp(target_logits).sum(-1, keepdims=True)
    log_q = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    kl = np.sum(target * (np.log(target) - log_q), -1)
    entropy = -np.sum(target * np.log(target), -1)
    mask = np.array([True, True, False, True])
    got = masked_cross_entropy(jnp.asarray(logits), jnp.asarray(target), jnp.asarray(mask))
    np.testing.assert_allclose(got, np.mean((kl + entropy)[mask]), rtol=1e-5)


def test_digest_moves_a_client_towards_the_consensus():
    """Training on soft targets (FedMD's digest) lowers the KL from the consensus to the
    client's predictions on the public set."""
    data = load_dataset("digits")
    model = make_model("cnn", 10, (8, 8, 1), "im2col", 0.25)
    apply_fn = lambda v, x, train=False: model.apply(1.0, v, x, train)  # noqa: E731
    images = jnp.asarray(data.images[:128])
    teacher = model.init(jax.random.key(5))  # a consensus the family can express
    targets = jax.nn.softmax(3.0 * apply_fn(teacher, images)[0])
    client = model.init(jax.random.key(0))

    def kl(variables):
        log_q = jax.nn.log_softmax(apply_fn(variables, images)[0])
        return float(jnp.mean(jnp.sum(targets * (jnp.log(targets) - log_q), -1)))

    digested = local_train(
        apply_fn, client, images, targets, IndexSet(jnp.arange(128), jnp.ones(128, bool)), jax.random.key(1),
        epochs=3, batch_size=32, lr=1e-2,
    )
    assert kl(digested) < 0.8 * kl(client)
    # the integer-label path is the one clients' own training takes: unchanged
    labels = jnp.asarray(data.labels[:4])
    np.testing.assert_allclose(
        masked_cross_entropy(targets[:4], labels, jnp.ones(4, bool)),
        optax.softmax_cross_entropy_with_integer_labels(targets[:4], labels).mean(), rtol=1e-6,
    )


def test_a_client_sends_and_receives_scores_of_the_public_set_not_parameters():
    model = make_model("cnn", 10, (28, 28, 1), "im2col")
    spec = RoundSpec(model=model, tier_ratios=(1.0, 0.5), tier_capacity=(1, 1))
    algorithm = make_algorithm("fedmd", spec, default_config())
    assert algorithm.traffic(0.5, 3500) == (3500 * 10 * 4, 3500 * 10 * 4)
    assert not algorithm.sends_model
