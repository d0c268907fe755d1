"""What every algorithm's round reads: the data set once on the device, every party an index list."""

from typing import NamedTuple

import jax


class IndexSet(NamedTuple):
    """A padded list of example indices into the device-resident data set."""

    idx: jax.Array  # (n_pad,) int32
    mask: jax.Array  # (n_pad,) bool


class RoundData(NamedTuple):
    """Device-resident data: the whole data set once, every party as padded index lists.

    Per-tier fields are tuples over tiers whose arrays lead with the tier's client axis.
    """

    images: jax.Array  # (N, H, W, C)
    labels: jax.Array  # (N,)
    server_train: IndexSet  # D minus the held-out slice: what tuning steps on
    server_holdout: IndexSet  # held-out slice of D: model selection only
    server_test: IndexSet  # global accuracy (reporting only)
    client_train: tuple[IndexSet, ...]  # (capacity, n_train_pad) per tier
    client_test: tuple[IndexSet, ...]  # (capacity, n_test_pad) per tier
    client_mask: tuple[jax.Array, ...]  # (capacity,) bool: which slots take part
    num_samples: tuple[jax.Array, ...]  # (capacity,) float32 training-set sizes n_j
    poisoned: tuple[jax.Array, ...] = ()  # (capacity,) int32 attack codes (participation.py); ()=none


__all__ = ["IndexSet", "RoundData"]
