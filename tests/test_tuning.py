import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedconv_jax.core.client import local_train
from fedconv_jax.core.tuning import (
    IndexSet,
    TuningConfig,
    adam,
    epoch_learning_rate,
    evaluate,
    make_optimizer,
    tune,
)
from fedconv_jax.data import load_digits
from fedconv_jax.models import make_model


@pytest.fixture(scope="module")
def digits():
    ds = load_digits()
    return jnp.asarray(ds.images), jnp.asarray(ds.labels)


def index_set(idx, cap=None):
    cap = cap or len(idx)
    out = np.zeros(cap, np.int32)
    out[: len(idx)] = idx
    return IndexSet(jnp.asarray(out), jnp.asarray(np.arange(cap) < len(idx)))


def test_cosine_schedule_matches_eq2():
    cfg = TuningConfig(epochs=8, cosine_t_max=4)
    for e in range(8):
        want = 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + np.cos(np.pi * e / 4))
        assert float(epoch_learning_rate(cfg, jnp.asarray(e), 1e-3, 1e-5)) == pytest.approx(want, rel=1e-5)
    assert float(epoch_learning_rate(TuningConfig(epochs=1), jnp.asarray(5), 3e-4, 1e-5)) == pytest.approx(3e-4)


def test_adam_is_differentiable_where_a_gradient_is_zero_and_unchanged_elsewhere():
    """An exactly-zero gradient (padding, a dead unit) made every meta-gradient NaN."""
    import optax

    params = {"w": jnp.array([0.5, -1.0, 2.0])}
    grads = {"w": jnp.array([0.0, 1e-3, -0.2])}

    def updated(g, optimizer):
        updates, _ = optimizer.update({"w": g}, optimizer.init(params), params)
        return updates["w"]

    reference = optax.flatten(optax.adam(1e-3))  # eps_root = 0
    np.testing.assert_array_equal(updated(grads["w"], adam(1e-3)), updated(grads["w"], reference))
    jacobian = jax.jacobian(lambda g: updated(g, adam(1e-3)))(grads["w"])
    assert np.all(np.isfinite(jacobian))
    assert not np.all(np.isfinite(jax.jacobian(lambda g: updated(g, reference))(grads["w"])))


def linear_logits(p, x):
    return x.reshape(x.shape[0], -1) @ p["w"] + p["b"]


def test_tune_learns_and_selection_uses_the_holdout(digits):
    images, labels = digits
    params = {"w": jnp.zeros((64, 10)), "b": jnp.zeros(10)}
    opt = make_optimizer().init(params)
    train, holdout, test = index_set(np.arange(0, 600)), index_set(np.arange(600, 800)), index_set(np.arange(800, 1797))
    result = jax.jit(lambda p, o: tune(linear_logits, p, o, images, labels, train, holdout, jax.random.key(0), TuningConfig(epochs=3), lr=1e-2))(params, opt)
    acc, _ = evaluate(lambda x: linear_logits(result.params, x), images, labels, test)
    assert float(acc) > 0.85
    assert int(result.best_epoch) >= 1
    # The curve: held-out accuracy after 0..3 epochs; its first point is the untouched start
    # (linear logits of zeros: every class ties, argmax says class 0), the selected one is reported.
    assert result.holdout_curve.shape == (4,)
    start_acc, _ = evaluate(lambda x: linear_logits(params, x), images, labels, holdout)
    assert float(result.holdout_curve[0]) == pytest.approx(float(start_acc), abs=1e-6)  # jit vs eager sums
    assert float(result.holdout_curve[int(result.best_epoch)]) == float(result.holdout_accuracy)
    # With a destructive learning rate the starting point (epoch 0) must be kept.
    trained = result.params
    bad = tune(linear_logits, trained, opt, images, labels, train, holdout, jax.random.key(0), TuningConfig(epochs=2), lr=50.0)
    assert int(bad.best_epoch) == 0
    np.testing.assert_array_equal(bad.params["w"], trained["w"])


def test_local_train_ignores_padding_steps(digits):
    """Full-batch training of 40 samples padded to 64 or to 256: extra all-padding batches
    must not move parameters or Adam's moments."""
    images, labels = digits
    model = make_model("cnn", 10, (8, 8, 1), "im2col")
    variables = model.init(jax.random.key(0), 0.5)
    apply = functools.partial(model.apply, 0.5)
    outs = []
    for cap in (64, 256):
        data = index_set(np.arange(40), cap)
        outs.append(local_train(apply, variables, images, labels, data, jax.random.key(1), epochs=2, batch_size=64))
    for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_local_train_vmap_equals_loop_and_learns(digits):
    images, labels = digits
    model = make_model("cnn", 10, (8, 8, 1), "im2col")
    variables = model.init(jax.random.key(0), 1.0)
    apply = functools.partial(model.apply, 1.0)
    sets = [index_set(np.arange(0, 300), 320), index_set(np.arange(300, 500), 320)]
    keys = jax.random.split(jax.random.key(2), 2)
    train = jax.jit(lambda d, k: local_train(apply, variables, images, labels, d, k, epochs=10, batch_size=32))
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *sets)
    batched = jax.jit(jax.vmap(lambda d, k: local_train(apply, variables, images, labels, d, k, epochs=10, batch_size=32)))(stacked, keys)
    for i in range(2):
        single = train(sets[i], keys[i])
        for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(batched)):
            np.testing.assert_allclose(a, b[i], atol=2e-5)
    acc, _ = evaluate(lambda x: model.apply(1.0, train(sets[0], keys[0]), x)[0], images, labels, index_set(np.arange(1000, 1797)))
    assert float(acc) > 0.8
