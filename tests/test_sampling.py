"""Client sampling inside the round: K of the present clients, seeded by (key, round), no recompiles."""

import jax
import jax.numpy as jnp
import numpy as np

from fedconv_jax.core.sampling import sample_clients
from fedconv_jax.core.streams import stream_key

PRESENT = (jnp.array([True, True, True, False]), jnp.array([True, True]), jnp.array([True, False]))


def _reference(key, round_index, present, k):
    """NumPy: the k present slots with the smallest uniform scores of the same draw."""
    flat = np.concatenate([np.asarray(p) for p in present])
    draw_key = stream_key(key, round_index, "sampling")
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

# The compiled round with sampling (one program, changing tier counts) is tested in
# test_round.py, together with the BatchNorm model, so that both share one compile.
