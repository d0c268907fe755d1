import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedconv_jax.algorithms.fedconv.aggregation import (
    aggregate,
    init_aggregation_weights,
    kld_term,
    over_holders,
)
from fedconv_jax.core.averaging import weighted_average

N = jnp.array([10.0, 30.0, 60.0, 5.0])
MASK = jnp.array([True, True, True, False])


def stacked(key=0):
    k1, k2 = jax.random.split(jax.random.key(key))
    return {"w": jax.random.normal(k1, (4, 3, 5)), "b": jax.random.normal(k2, (4, 5))}


def np_weighted(x, n, mask):
    f = np.where(mask, n, 0) / np.where(mask, n, 0).sum()
    return np.tensordot(f, np.asarray(x), axes=1)


@pytest.mark.parametrize("granularity", ["layer", "element"])
@pytest.mark.parametrize("normalize", [True, False])
def test_init_equals_sample_weighted_average(granularity, normalize):
    params = stacked()
    v = init_aggregation_weights(jax.tree.map(lambda x: x[0], params), 4, granularity, normalize)
    got = aggregate(params, v, N, MASK, normalize)
    for key in params:
        np.testing.assert_allclose(got[key], np_weighted(params[key], N, MASK), atol=1e-6)
    plain = weighted_average(params, N, MASK)
    np.testing.assert_allclose(plain["w"], np_weighted(params["w"], N, MASK), atol=1e-6)


def test_raw_eq4_matches_numpy_reference():
    params = stacked()
    rng = np.random.default_rng(0)
    v = {"w": jnp.asarray(rng.normal(size=(4, 3, 5)), jnp.float32), "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32)}
    got = aggregate(params, v, N, MASK, normalize=False)
    n = np.where(MASK, N, 0)
    want_w = sum(np.asarray(v["w"][j]) * n[j] * np.asarray(params["w"][j]) for j in range(4)) / n.sum()
    want_b = sum(float(v["b"][j]) * n[j] * np.asarray(params["b"][j]) for j in range(4)) / n.sum()
    np.testing.assert_allclose(got["w"], want_w, atol=1e-5)
    np.testing.assert_allclose(got["b"], want_b, atol=1e-5)


def test_normalized_is_softmax_of_log_samples_plus_weights():
    params = stacked()
    u = {"w": jnp.array([0.5, -1.0, 0.2, 9.0]), "b": jnp.zeros(4)}
    got = aggregate(params, u, N, MASK, normalize=True)
    n = np.where(MASK, N, 0)
    logits = np.log(n[:3]) + np.asarray(u["w"][:3])
    coeff = np.exp(logits) / np.exp(logits).sum()
    want = np.tensordot(coeff, np.asarray(params["w"][:3]), axes=1)
    np.testing.assert_allclose(got["w"], want, atol=1e-5)  # client 3 is masked out despite u = 9


def test_kld_is_zero_at_equality_and_its_gradient_reaches_the_weights():
    params = stacked()
    prev = jax.tree.map(lambda x: x[0] * 2.0, params)
    assert float(kld_term(prev, prev)) == pytest.approx(0.0, abs=1e-6)
    for normalize in (True, False):
        v = init_aggregation_weights(prev, 4, "layer", normalize)
        grads = jax.grad(lambda v: kld_term(prev, aggregate(params, v, N, MASK, normalize)))(v)
        for g in jax.tree.leaves(grads):
            assert float(jnp.abs(g[:3]).sum()) > 0
            assert float(jnp.abs(g[3])) == 0.0  # the absent client gets no gradient


def test_unknown_granularity():
    with pytest.raises(ValueError, match="aggregation_granularity='tensor'"):
        init_aggregation_weights({"w": jnp.zeros(2)}, 2, "tensor")


def _coverage():
    """Client 0 holds everything, 1 the leading (2, 3) block of "w", 2 the leading (1, 2), 3 (absent) all."""
    w = np.zeros((4, 3, 5))
    w[0], w[3] = 1, 1
    w[1, :2, :3] = 1
    w[2, :1, :2] = 1
    b = np.ones((4, 5))
    b[1, 3:], b[2, 2:] = 0, 0
    return {"w": w, "b": b}


@pytest.mark.parametrize("weights", ["mean", "learned"])
def test_over_holders_averages_each_element_update_over_the_clients_holding_it(weights):
    """A loop over elements: previous + sum_(j holds e) c_j (x_j - previous) / sum_(j holds e) c_j,
    with uploads equal to the previous model outside their block (dilated updates, identity filters)."""
    previous, coverage = jax.tree.map(lambda x: x[0] * 0.5, stacked(2)), _coverage()
    params = jax.tree.map(lambda x, g, h: np.where(h, x, g), stacked(1), previous, coverage)
    if weights == "mean":
        coeff = np.where(MASK, N, 0) / np.where(MASK, N, 0).sum()
        combine = lambda x: weighted_average(x, N, MASK)  # noqa: E731
    else:
        u = jax.random.normal(jax.random.key(3), (4,))
        v = {"w": u, "b": u}
        coeff = np.asarray(jax.nn.softmax(jnp.where(MASK, jnp.log(N) + u, -jnp.inf)))
        combine = lambda x: aggregate(x, v, N, MASK)  # noqa: E731
    got = over_holders(combine, jax.tree.map(lambda x, g: x - g, params, previous), previous, coverage)
    for key in params:
        x, g, h = np.asarray(params[key], np.float64), np.asarray(previous[key], np.float64), coverage[key]
        want = g.copy()
        for e in np.ndindex(g.shape):
            held = [j for j in range(4) if h[(j, *e)] and coeff[j] > 0]
            if held:
                want[e] += sum(coeff[j] * (x[(j, *e)] - g[e]) for j in held) / sum(coeff[j] for j in held)
        np.testing.assert_allclose(got[key], want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got["w"], combine(params)["w"])  # not the plain weighted mean
