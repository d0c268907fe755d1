"""The federated split of one data set (SPEC §6) and its padded device format.

One seed fixes everything: ``split_federated`` carves a server tuning set D, a server
test set and a client pool IID, then spreads the client pool over the clients with a
per-class Dirichlet(alpha). Clients are index arrays into the one ``Dataset``; the
round later keeps the images on the device once and gathers by padded index lists.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

_PART_NAMES = ("server_train", "server_test", "client_train", "client_test")


# eq=False: generated __eq__/__hash__ would break on array fields (see Dataset).
@dataclasses.dataclass(frozen=True, eq=False)
class FederatedSplit:
    """Index sets into one Dataset (SPEC §6).

    All arrays are int64 indices into the data set, sorted ascending (a set, not a
    batch order: callers shuffle per epoch). The four parts are pairwise disjoint and
    together cover every index.

    Attributes:
        server_train: ``(n_D,)`` the server tuning set D, IID (class-stratified).
        server_test: ``(n_T,)`` the server test set, IID (class-stratified), for global
            accuracy.
        client_train: One index array per client, non-empty.
        client_test: One index array per client with the same class proportions as
            its ``client_train`` part, for personalised accuracy. May be empty for a
            client with few samples: the client test pool is small (5%).
    """

    server_train: np.ndarray
    server_test: np.ndarray
    client_train: tuple[np.ndarray, ...]
    client_test: tuple[np.ndarray, ...]

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return len(self.client_train)


def _check_alpha(alpha: float) -> None:
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha={alpha} must be > 0 and finite")


def _check_num_clients(num_clients: int) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients={num_clients} must be >= 1")


def dirichlet_proportions(
    num_classes: int, num_clients: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """Draws the per-class share of each client from a symmetric Dirichlet.

    Args:
        num_classes: Number of classes (rows).
        num_clients: Number of clients (columns).
        alpha: Dirichlet concentration; small values give clients few classes, large
            values (1e4) give near-IID clients.
        rng: NumPy generator, advanced in place.

    Returns:
        ``(num_classes, num_clients)`` float64, each row drawn independently from
        ``Dir(alpha * 1)`` and summing to 1.

    Raises:
        ValueError: If ``alpha`` is not a finite positive number, or a count is < 1.
    """
    _check_alpha(alpha)
    _check_num_clients(num_clients)
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be >= 1")
    return rng.dirichlet(np.full(num_clients, float(alpha)), size=num_classes)


def split_by_proportions(
    indices: np.ndarray, labels: np.ndarray, proportions: np.ndarray
) -> list[np.ndarray]:
    """Splits a pool of samples over clients class by class.

    Class ``c``'s samples in the pool, in pool order, are cut at the cumulative
    boundaries ``round(cumsum(proportions[c]) * n_c)``. Cumulative rounding (rather
    than rounding each share) assigns every sample exactly once and keeps each
    client's count within one sample of ``proportions[c, k] * n_c``.

    Args:
        indices: ``(M,)`` integer indices of the pool into the data set; pass them in
            a random order, since the first samples of a class go to client 0.
        labels: ``(N,)`` the label of every sample in the data set (indexed by
            ``indices``), not only the pool's.
        proportions: ``(num_classes, num_clients)`` non-negative, rows summing to 1.

    Returns:
        ``num_clients`` int64 arrays, each sorted ascending; disjoint, and together
        exactly the pool.

    Raises:
        ValueError: If ``proportions`` is malformed or a pool label is outside
            ``[0, num_classes)``.
    """
    indices = np.asarray(indices, dtype=np.int64)
    labels = np.asarray(labels)
    proportions = np.asarray(proportions, dtype=np.float64)
    if proportions.ndim != 2 or proportions.shape[1] < 1:
        raise ValueError(
            f"proportions.shape={proportions.shape} must be (num_classes, num_clients)"
        )
    if np.any(proportions < 0) or not np.allclose(proportions.sum(1), 1.0, atol=1e-6):
        raise ValueError("proportions must be non-negative with rows summing to 1")
    num_classes, num_clients = proportions.shape
    pool_labels = labels[indices]
    if pool_labels.size and (pool_labels.min() < 0 or pool_labels.max() >= num_classes):
        raise ValueError(
            f"labels in the pool span [{pool_labels.min()}, {pool_labels.max()}]; "
            f"allowed: [0, {num_classes}) from proportions.shape={proportions.shape}"
        )
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in range(num_classes):
        members = indices[pool_labels == c]
        n = members.size
        bounds = np.rint(np.cumsum(proportions[c]) * n).astype(np.int64)
        # Float error can leave the last bound at n - 1 or n + 1; pin it so the whole
        # class is handed out.
        bounds = np.clip(bounds, 0, n)
        bounds[-1] = n
        for k, chunk in enumerate(np.split(members, bounds[:-1])):
            parts[k].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(f) for f in fractions)
    ok = (
        len(values) == 4
        and all(math.isfinite(f) and f > 0 for f in values)
        and abs(sum(values) - 1.0) <= 1e-6
    )
    if not ok:
        raise ValueError(
            f"fractions={tuple(fractions)} must be 4 positive numbers "
            f"({', '.join(_PART_NAMES)}) summing to 1"
        )
    return values


def _part_sizes(n: int, fractions: tuple[float, ...]) -> np.ndarray:
    """Largest-remainder (Hamilton) rounding of ``fractions * n`` to sum to ``n``."""
    exact = np.asarray(fractions) * n
    sizes = np.floor(exact).astype(np.int64)
    short = n - int(sizes.sum())
    # Stable sort: ties go to the earlier part, so the result is deterministic.
    order = np.argsort(-(exact - sizes), kind="stable")
    sizes[order[:short]] += 1
    return sizes


def _stratified_order(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of all indices with every class spread evenly along it.

    Shuffle, then give the r-th sample of class c (of n_c) the key (r + u_c) / n_c
    with one uniform offset u_c per class, and sort by key. This is systematic
    sampling per class: any contiguous window of the result holds each class within
    about two samples of its global share, so cutting the order into consecutive
    parts gives class-stratified parts whose sizes are still exactly the ones asked.
    """
    n = labels.size
    perm = rng.permutation(n)
    shuffled = labels[perm]
    counts = np.bincount(shuffled)
    by_class = np.argsort(shuffled, kind="stable")
    starts = np.cumsum(counts) - counts
    rank = np.empty(n, dtype=np.int64)
    rank[by_class] = np.arange(n) - np.repeat(starts, counts)
    offsets = rng.random(counts.size)
    keys = (rank + offsets[shuffled]) / counts[shuffled]
    return perm[np.argsort(keys, kind="stable")]


PARTITIONS = ("dirichlet", "iid", "shards", "natural")


def iid_proportions(num_classes: int, num_clients: int) -> np.ndarray:
    """Every client gets an equal share of every class (the pool order is already random)."""
    _check_num_clients(num_clients)
    return np.full((num_classes, num_clients), 1.0 / num_clients)


def shard_proportions(
    num_classes: int, num_clients: int, classes_per_client: int, rng: np.random.Generator
) -> np.ndarray:
    """Each client holds exactly `classes_per_client` classes, each class shared equally.

    Client j takes classes perm[(j k + i) mod C], i < k, for one random class permutation:
    every class is then held by floor or ceil of (clients * k / C) clients.

    Raises:
        ValueError: If k is outside [1, num_classes] or clients * k < num_classes (a class
            nobody holds would be dropped from the client pool).
    """
    _check_num_clients(num_clients)
    k = classes_per_client
    if not 1 <= k <= num_classes:
        raise ValueError(f"shards_per_client={k} is not allowed: an integer in [1, {num_classes}] (classes)")
    if num_clients * k < num_classes:
        raise ValueError(
            f"num_clients={num_clients} x shards_per_client={k} < {num_classes} classes: "
            "some class would belong to no client; allowed: num_clients * shards_per_client >= num_classes"
        )
    perm = rng.permutation(num_classes)
    held = np.zeros((num_classes, num_clients))
    for j in range(num_clients):
        held[perm[(j * k + np.arange(k)) % num_classes], j] = 1.0
    return held / held.sum(axis=1, keepdims=True)


def split_federated(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    seed: int,
    fractions: Sequence[float] = (0.05, 0.20, 0.70, 0.05),
    max_redraws: int = 100,
    partition: str = "dirichlet",
    shards_per_client: int = 2,
) -> FederatedSplit:
    """Splits a data set for federated learning as in SPEC §6.

    The server tuning set D, the server test set, the client-train pool and the
    client-test pool are consecutive slices of one class-stratified random order
    (sizes by largest-remainder rounding of ``fractions``). One class-by-client
    proportion matrix ``p[class, client]`` then splits the class-c part of the train
    pool *and* of the test pool, so each client's test split has its train split's
    class mix. The partitioner picks ``p``: per-class Dirichlet(alpha) ("dirichlet"),
    equal shares ("iid"), or ``shards_per_client`` classes per client ("shards").

    The server parts depend only on ``labels``, ``seed`` and ``fractions``: every
    partition and client count with the same seed shares the same D and server test
    set, so global accuracies across settings are measured on the same samples.

    Args:
        labels: ``(N,)`` integer class ids ``>= 0``; the number of classes is taken
            as ``labels.max() + 1``.
        num_clients: Number of clients, ``1 <= num_clients <=`` client-train pool size.
        alpha: Dirichlet concentration, finite and > 0 (used by "dirichlet" only).
        seed: Seeds ``np.random.default_rng``; the split is a pure function of it.
        fractions: Shares of (server_train, server_test, client_train, client_test);
            4 positive numbers summing to 1.
        max_redraws: If a Dirichlet draw leaves a client without training samples, the
            matrix is drawn again (from the same generator, so still deterministic) up
            to this many times.
        partition: "dirichlet", "iid" or "shards".
        shards_per_client: Classes per client for "shards".

    Returns:
        The ``FederatedSplit``.

    Raises:
        ValueError: On an invalid argument, or if a client would get no training sample
            (after every Dirichlet redraw).
    """
    _check_alpha(alpha)
    _check_num_clients(num_clients)
    fracs = _check_fractions(fractions)
    if partition == "natural":
        raise ValueError("partition=natural needs each example's user: use split_natural")
    if partition not in PARTITIONS:
        raise ValueError(f"partition={partition!r} is not known; allowed: {', '.join(PARTITIONS)}")
    if max_redraws < 0:
        raise ValueError(f"max_redraws={max_redraws} must be >= 0")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels (shape={labels.shape}, dtype={labels.dtype}) must be a 1-D "
            "integer array"
        )
    if labels.size == 0 or labels.min() < 0:
        raise ValueError("labels must be non-empty class ids >= 0")

    rng = np.random.default_rng(seed)
    # The carve draws come first and never depend on the partition or num_clients, which
    # is what keeps the server sets fixed across those settings.
    order = _stratified_order(labels, rng)
    sizes = _part_sizes(labels.size, fracs)
    server_train, server_test, train_pool, test_pool = np.split(
        order, np.cumsum(sizes)[:-1]
    )
    if num_clients > train_pool.size:
        raise ValueError(
            f"num_clients={num_clients} exceeds the {train_pool.size} client training "
            f"samples; allowed: 1..{train_pool.size}"
        )

    num_classes = int(labels.max()) + 1
    draws = max_redraws + 1 if partition == "dirichlet" else 1
    for _ in range(draws):
        if partition == "dirichlet":
            p = dirichlet_proportions(num_classes, num_clients, alpha, rng)
        elif partition == "iid":
            p = iid_proportions(num_classes, num_clients)
        else:
            p = shard_proportions(num_classes, num_clients, shards_per_client, rng)
        client_train = split_by_proportions(train_pool, labels, p)
        if all(part.size > 0 for part in client_train):
            break
    else:
        empty = sum(part.size == 0 for part in client_train)
        what = f"alpha={alpha}" if partition == "dirichlet" else f"partition={partition}"
        raise ValueError(
            f"num_clients={num_clients}, {what}: {empty} client(s) got no training sample"
            + (f" in {draws} Dirichlet draws; raise alpha" if partition == "dirichlet" else "")
            + " or use fewer clients"
        )
    client_test = split_by_proportions(test_pool, labels, p)
    return FederatedSplit(
        server_train=np.sort(server_train),
        server_test=np.sort(server_test),
        client_train=tuple(client_train),
        client_test=tuple(client_test),
    )


def split_natural(
    labels: np.ndarray, groups: np.ndarray, num_clients: int, seed: int,
    fractions: Sequence[float] = (0.05, 0.20, 0.70, 0.05),
) -> FederatedSplit:
    """One client per group (a HAR data set's user): the data's own non-IID split.

    ``num_clients`` groups, drawn by ``seed``, become the clients (in ascending group id);
    every other group is held out for the server, whose D and test set are a
    class-stratified split of the held-out groups' examples in the ratio of
    ``fractions[0] : fractions[1]``. The server thus tunes and tests on people no client
    is, as a deployed server would. Each client's examples are split into train and test
    in the ratio ``fractions[2] : fractions[3]`` per class, in index order (time order for
    windowed recordings), so overlapping windows meet only at one boundary per class.

    Raises:
        ValueError: if fewer than ``num_clients + 1`` groups exist, or a client's group
            has no example.
    """
    fracs = _check_fractions(fractions)
    labels, groups = np.asarray(labels), np.asarray(groups)
    if groups.shape != labels.shape:
        raise ValueError(f"groups.shape={groups.shape} must equal labels.shape={labels.shape}")
    ids = np.unique(groups)
    if not 1 <= num_clients < ids.size:
        raise ValueError(
            f"num_clients={num_clients} is not allowed with partition=natural: 1..{ids.size - 1} "
            f"(the data has {ids.size} users; at least one is held out for the server)"
        )
    rng = np.random.default_rng(seed)
    clients = np.sort(rng.choice(ids, num_clients, replace=False))
    held_out = np.flatnonzero(~np.isin(groups, clients))
    order = held_out[_stratified_order(labels[held_out], rng)]
    n_server_train = round(order.size * fracs[0] / (fracs[0] + fracs[1]))
    test_share = fracs[3] / (fracs[2] + fracs[3])
    client_train, client_test = [], []
    for client in clients:
        train, test = [], []
        for c in np.unique(labels[groups == client]):
            members = np.flatnonzero((groups == client) & (labels == c))
            cut = members.size - round(members.size * test_share)
            train.append(members[:cut])
            test.append(members[cut:])
        client_train.append(np.sort(np.concatenate(train)))
        client_test.append(np.sort(np.concatenate(test)))
    return FederatedSplit(
        server_train=np.sort(order[:n_server_train]),
        server_test=np.sort(order[n_server_train:]),
        client_train=tuple(client_train),
        client_test=tuple(client_test),
    )


def pad_index_lists(
    index_lists: Sequence[np.ndarray],
    capacity: int | None = None,
    multiple: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Packs ragged client index lists into one padded array plus a mask.

    Fixed shapes let every round reuse one compiled program; the mask keeps padded
    slots out of losses and counts.

    Args:
        index_lists: ``K`` 1-D integer arrays (e.g. ``split.client_train``).
        capacity: Padded length; by default the longest list rounded up to a
            multiple of ``multiple``. Passing it keeps shapes fixed across calls.
        multiple: Granularity of the default capacity (e.g. the batch size, so
            every client has a whole number of batches). Ignored if ``capacity``
            is given.

    Returns:
        ``(indices, mask)``: ``(K, cap)`` int32 indices, padded slots holding index 0
        (a valid row to gather, masked out), and ``(K, cap)`` bool, True on real
        entries.

    Raises:
        ValueError: If ``multiple < 1``, ``capacity < 0``, a list is longer than
            ``capacity``, or an index does not fit in int32.
    """
    if multiple < 1:
        raise ValueError(f"multiple={multiple} must be >= 1")
    lists = [np.asarray(x, dtype=np.int64).reshape(-1) for x in index_lists]
    longest = max((x.size for x in lists), default=0)
    if capacity is None:
        cap = -(-longest // multiple) * multiple
    else:
        if capacity < 0:
            raise ValueError(f"capacity={capacity} must be >= 0")
        if longest > capacity:
            raise ValueError(
                f"capacity={capacity} is smaller than the longest index list "
                f"({longest}); allowed: capacity >= {longest} or None"
            )
        cap = int(capacity)
    if any(x.size and (x.min() < 0 or x.max() > np.iinfo(np.int32).max) for x in lists):
        raise ValueError("index_lists must hold indices in [0, 2**31 - 1] (int32)")
    indices = np.zeros((len(lists), cap), dtype=np.int32)
    mask = np.zeros((len(lists), cap), dtype=bool)
    for k, x in enumerate(lists):
        indices[k, : x.size] = x
        mask[k, : x.size] = True
    return indices, mask


def partition_summary(
    split: FederatedSplit, labels: np.ndarray, num_classes: int
) -> np.ndarray:
    """Counts each client's training samples per class.

    Args:
        split: The federated split.
        labels: ``(N,)`` labels of the data set the split indexes.
        num_classes: Number of columns.

    Returns:
        ``(num_clients, num_classes)`` int64 counts; row k sums to
        ``len(split.client_train[k])``.

    Raises:
        ValueError: If a client's label is outside ``[0, num_classes)``.
    """
    labels = np.asarray(labels)
    per_client = [labels[idx] for idx in split.client_train]
    # Checked first: bincount would silently widen a row for a label >= num_classes.
    if any(x.size and (x.min() < 0 or x.max() >= num_classes) for x in per_client):
        raise ValueError(f"client labels fall outside [0, num_classes={num_classes})")
    counts = [np.bincount(x, minlength=num_classes) for x in per_client]
    return np.stack(counts).astype(np.int64)
