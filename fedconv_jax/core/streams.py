"""Named random streams (kauldron's `fold_in_str`): every draw in a round comes from
(seed, round, stream name[, tier, slot]), so algorithms that use the same stream draw the
same numbers. FedConv's SR 1 clients and FedAvg's clients of the same slot shuffle their data
identically, so comparisons between algorithms are paired; padding a tier with more slots
(for more devices) changes no real client's key.
"""

import hashlib

import jax
import jax.numpy as jnp

from fedconv_jax.core.types import PRNGKey


def stream_id(name: str) -> int:
    """A stable 31-bit integer for a stream name (the same in every process and version)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little") & 0x7FFFFFFF


def stream_key(key: PRNGKey, round_index: jax.Array, name: str) -> PRNGKey:
    """The key of stream `name` in round `round_index` (0-based) of the run keyed by `key`."""
    return jax.random.fold_in(jax.random.fold_in(key, round_index), stream_id(name))


def slot_keys(key: PRNGKey, tier: int, capacity: int) -> jax.Array:
    """(capacity,) keys, one per client slot of a tier: fold_in(fold_in(key, tier), slot)."""
    tier_key = jax.random.fold_in(key, tier)
    return jax.vmap(lambda slot: jax.random.fold_in(tier_key, slot))(jnp.arange(capacity))


__all__ = ["slot_keys", "stream_id", "stream_key"]
