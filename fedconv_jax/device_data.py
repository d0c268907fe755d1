"""Host split -> device-resident `RoundData` (uploaded once; clients become index lists)."""

import math
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from fedconv_jax.core.data import IndexSet, RoundData
from fedconv_jax.core.participation import attack_code
from fedconv_jax.data import Dataset, FederatedSplit, pad_index_lists


def group_tiers(shrink_ratios: Sequence[float]) -> tuple[tuple[float, ...], tuple[tuple[int, ...], ...]]:
    """Distinct SRs in descending order, and the client ids of each tier."""
    ratios = tuple(sorted({float(r) for r in shrink_ratios}, reverse=True))
    members = tuple(tuple(i for i, r in enumerate(shrink_ratios) if float(r) == ratio) for ratio in ratios)
    return ratios, members


def split_holdout(indices: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Splits the server tuning set D into (tuning part, held-out part for model selection)."""
    order = np.random.default_rng([seed, 1]).permutation(indices)
    n_holdout = min(max(1, math.ceil(fraction * len(order))), len(order) - 1)
    return np.sort(order[n_holdout:]), np.sort(order[:n_holdout])


def _index_set(indices: np.ndarray, multiple: int) -> IndexSet:
    idx, mask = pad_index_lists([indices], multiple=multiple)
    return IndexSet(jnp.asarray(idx[0]), jnp.asarray(mask[0]))


def make_round_data(
    dataset: Dataset,
    split: FederatedSplit,
    tier_members: Sequence[Sequence[int]],
    *,
    batch_size: int,
    holdout_fraction: float,
    seed: int,
    poisoned_clients: int = 0,
    poison_mode: str = "sign_flip",
    tier_capacity: Sequence[int] | None = None,
) -> RoundData:
    """Uploads the data set once and turns every party's indices into padded index lists.

    Each tier's lists are padded to that tier's capacity: its largest client, rounded up to
    a whole batch for training. Capacities are fixed for the run, so the round compiles once;
    padded slots are masked out of every loss and count. A tier with a `tier_capacity` above
    its member count gets empty, masked-out slots after its members (e.g. to fill every
    device of a mesh). The last `poisoned_clients` client ids attack with `poison_mode`
    (data: the number of attackers and the mode can change without a recompile).
    """
    tier_capacity = tier_capacity or [len(m) for m in tier_members]
    first_poisoned = len(split.client_train) - poisoned_clients
    code = attack_code(poison_mode)
    tune_idx, holdout_idx = split_holdout(split.server_train, holdout_fraction, seed)
    client_train, client_test, client_mask, num_samples, poisoned = [], [], [], [], []
    for members, capacity in zip(tier_members, tier_capacity):
        if capacity < len(members):
            raise ValueError(f"tier_capacity={capacity} is below the tier's {len(members)} clients")
        empty = [np.zeros(0, np.int64)] * (capacity - len(members))
        train = [split.client_train[i] for i in members] + empty
        test = [split.client_test[i] for i in members] + empty
        idx, mask = pad_index_lists(train, multiple=batch_size)
        client_train.append(IndexSet(jnp.asarray(idx), jnp.asarray(mask)))
        idx, mask = pad_index_lists(test, capacity=max(1, max(map(len, test))))
        client_test.append(IndexSet(jnp.asarray(idx), jnp.asarray(mask)))
        client_mask.append(jnp.asarray(np.arange(capacity) < len(members)))
        num_samples.append(jnp.asarray([len(x) for x in train], jnp.float32))
        poisoned.append(jnp.asarray([code if i >= first_poisoned else 0 for i in members] + [0] * len(empty), jnp.int32))
    return RoundData(
        images=jnp.asarray(dataset.images),
        labels=jnp.asarray(dataset.labels),
        server_train=_index_set(tune_idx, batch_size),
        server_holdout=_index_set(holdout_idx, 1),
        server_test=_index_set(split.server_test, 1),
        client_train=tuple(client_train),
        client_test=tuple(client_test),
        client_mask=tuple(client_mask),
        num_samples=tuple(num_samples),
        poisoned=tuple(poisoned),
    )
