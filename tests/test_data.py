"""Tests for fedconv_jax.data: the digits source and the SPEC §6 federated split."""

from __future__ import annotations

import numpy as np
import pytest

from fedconv_jax.data import (
    FederatedSplit,
    load_dataset,
    load_digits,
    pad_index_lists,
    partition_summary,
    split_federated,
)
from fedconv_jax.data.partition import dirichlet_proportions, split_by_proportions

NUM_DIGITS = 1797


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def _all_parts(split: FederatedSplit) -> list[np.ndarray]:
    return [
        split.server_train,
        split.server_test,
        *split.client_train,
        *split.client_test,
    ]


def _splits_equal(a: FederatedSplit, b: FederatedSplit) -> bool:
    pa, pb = _all_parts(a), _all_parts(b)
    return len(pa) == len(pb) and all(np.array_equal(x, y) for x, y in zip(pa, pb))


def _class_hist(labels: np.ndarray, idx: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels[idx], minlength=num_classes) / max(idx.size, 1)


def _tv(p: np.ndarray, q: np.ndarray) -> float:
    """Total-variation distance between two class histograms."""
    return 0.5 * float(np.abs(p - q).sum())


# --- sources -------------------------------------------------------------------------


def test_load_digits_shape_dtype_range_labels(digits):
    assert digits.name == "digits"
    assert digits.images.shape == (NUM_DIGITS, 8, 8, 1)
    assert digits.images.dtype == np.float32
    # Raw intensities are 0..16: dividing by 16 reaches exactly 1, by 255 would not.
    assert digits.images.min() == 0.0 and digits.images.max() == 1.0
    assert digits.labels.shape == (NUM_DIGITS,)
    assert digits.labels.dtype == np.int32
    assert digits.num_classes == 10
    np.testing.assert_array_equal(np.unique(digits.labels), np.arange(10))
    # Every class is well represented (the set is roughly balanced, ~180 per class).
    assert np.bincount(digits.labels).min() > 170


def test_load_dataset_digits_matches_load_digits(digits):
    ds = load_dataset("digits")
    np.testing.assert_array_equal(ds.images, digits.images)
    np.testing.assert_array_equal(ds.labels, digits.labels)


def test_load_dataset_unknown_name_lists_allowed():
    with pytest.raises(
        ValueError, match=r"^dataset='xyz' is not known; allowed: digits, tfds:<name>$"
    ):
        load_dataset("xyz")
    with pytest.raises(ValueError, match="not known"):
        load_dataset("tfds:../etc")


# --- split_federated: structure ------------------------------------------------------


@pytest.mark.parametrize(("num_clients", "alpha"), [(1, 1.0), (10, 0.1), (20, 1e4)])
def test_split_parts_disjoint_and_cover_everything(digits, num_clients, alpha):
    split = split_federated(digits.labels, num_clients, alpha, seed=0)
    assert len(split.client_train) == len(split.client_test) == num_clients
    parts = _all_parts(split)
    assert all(p.dtype == np.int64 and p.ndim == 1 for p in parts)
    everything = np.concatenate(parts)
    # Sorted concatenation equal to arange means: disjoint, and nothing left out.
    np.testing.assert_array_equal(np.sort(everything), np.arange(NUM_DIGITS))
    assert all(p.size > 0 for p in split.client_train)


def test_split_fractions_respected(digits):
    split = split_federated(digits.labels, 10, 1.0, seed=0)
    sizes = [
        split.server_train.size,
        split.server_test.size,
        sum(p.size for p in split.client_train),
        sum(p.size for p in split.client_test),
    ]
    # 5/20/70/5 % of 1797 = 89.85 / 359.4 / 1257.9 / 89.85.
    for size, expected in zip(sizes, [89.85, 359.4, 1257.9, 89.85]):
        assert abs(size - expected) <= 2
    assert sum(sizes) == NUM_DIGITS


def test_split_custom_fractions(digits):
    split = split_federated(
        digits.labels, 5, 1.0, seed=0, fractions=(0.1, 0.1, 0.4, 0.4)
    )
    assert abs(split.server_train.size - 179.7) <= 2
    assert abs(split.server_test.size - 179.7) <= 2
    assert abs(sum(p.size for p in split.client_train) - 718.8) <= 2
    assert abs(sum(p.size for p in split.client_test) - 718.8) <= 2


def test_server_sets_are_class_stratified(digits):
    labels = digits.labels
    global_share = np.bincount(labels) / labels.size
    for seed in range(5):
        split = split_federated(labels, 10, 0.1, seed=seed)
        for part in (split.server_train, split.server_test):
            counts = np.bincount(labels[part], minlength=10)
            # Systematic per-class sampling keeps every class within ~2 samples of its
            # share; a plain random 89-sample draw is off by ~3 (one s.d.) per class.
            assert np.abs(counts - global_share * part.size).max() <= 2.1


def test_server_sets_do_not_depend_on_alpha_or_num_clients(digits):
    a = split_federated(digits.labels, 10, 0.05, seed=3)
    b = split_federated(digits.labels, 4, 1e4, seed=3)
    np.testing.assert_array_equal(a.server_train, b.server_train)
    np.testing.assert_array_equal(a.server_test, b.server_test)


def test_same_seed_same_split_different_seed_different(digits):
    a = split_federated(digits.labels, 10, 0.5, seed=7)
    b = split_federated(digits.labels, 10, 0.5, seed=7)
    c = split_federated(digits.labels, 10, 0.5, seed=8)
    assert _splits_equal(a, b)
    assert not np.array_equal(a.server_train, c.server_train)
    assert not _splits_equal(a, c)


# --- split_federated: Dirichlet statistics -------------------------------------------


def test_large_alpha_gives_near_iid_clients(digits):
    labels = digits.labels
    split = split_federated(labels, 10, 1e4, seed=0)
    global_hist = _class_hist(labels, np.arange(labels.size), 10)
    tvs = [_tv(_class_hist(labels, p, 10), global_hist) for p in split.client_train]
    assert max(tvs) < 0.1
    sizes = [p.size for p in split.client_train]
    # Near-equal shares too: 1258 / 10 clients, each within ~10% of 125.8.
    assert min(sizes) > 110 and max(sizes) < 140


def test_small_alpha_gives_one_or_two_class_clients(digits):
    labels = digits.labels
    split = split_federated(labels, 10, 0.05, seed=0)
    counts = partition_summary(split, labels, 10)
    top2 = np.sort(counts, axis=1)[:, -2:].sum(1) / counts.sum(1)
    assert np.median(top2) > 0.8
    # Contrast: at alpha=1e4 the top two classes hold only ~20%.
    iid = partition_summary(split_federated(labels, 10, 1e4, seed=0), labels, 10)
    assert np.median(np.sort(iid, axis=1)[:, -2:].sum(1) / iid.sum(1)) < 0.3


def test_client_test_follows_client_train_proportions(digits):
    labels = digits.labels
    split = split_federated(labels, 10, 0.3, seed=1)
    train = np.stack([np.bincount(labels[p], minlength=10) for p in split.client_train])
    test = np.stack([np.bincount(labels[p], minlength=10) for p in split.client_test])
    n_train, n_test = train.sum(0), test.sum(0)
    # Both pools are cut with the same p[c, k] by cumulative rounding, so each count is
    # within 1 of p * n_c; hence test ~= train * n_test_c / n_train_c within 1 + ratio.
    # An independent Dirichlet draw for the test pool would break this by many samples.
    expected = train * (n_test / n_train)[None, :]
    assert np.all(np.abs(test - expected) <= 1 + (n_test / n_train)[None, :])


def test_client_test_histogram_tracks_train_on_large_pool():
    # Digits' test pool is tiny (~90); a synthetic 40k-label set shows the class mix of
    # a big client's test split matching its train split closely.
    labels = np.random.default_rng(0).integers(0, 10, size=40_000)
    split = split_federated(labels, 8, 0.5, seed=2)
    k = int(np.argmax([p.size for p in split.client_train]))
    h_train = _class_hist(labels, split.client_train[k], 10)
    h_test = _class_hist(labels, split.client_test[k], 10)
    assert split.client_test[k].size > 200
    assert _tv(h_train, h_test) < 0.05


# --- split_federated: empty clients and validation -----------------------------------


def test_empty_client_is_redrawn_deterministically(digits):
    # Seed 0 at alpha=0.01 leaves a client empty on the first draw: without redraws it
    # fails, with the default budget a later draw from the same generator succeeds.
    with pytest.raises(ValueError, match=r"num_clients=10, alpha=0\.01"):
        split_federated(digits.labels, 10, 0.01, seed=0, max_redraws=0)
    split = split_federated(digits.labels, 10, 0.01, seed=0)
    assert all(p.size > 0 for p in split.client_train)
    assert _splits_equal(split, split_federated(digits.labels, 10, 0.01, seed=0))


def test_impossible_dirichlet_raises_after_redraws(digits):
    # 20 clients but only 10 classes, each almost wholly given to one client at
    # alpha=0.01: no draw leaves every client non-empty.
    with pytest.raises(ValueError, match=r"num_clients=20, alpha=0\.01.*101 Dirichlet"):
        split_federated(digits.labels, 20, 0.01, seed=0)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_alpha_raises(digits, alpha):
    with pytest.raises(ValueError, match=rf"^alpha={alpha} must be > 0"):
        split_federated(digits.labels, 10, alpha, seed=0)


def test_bad_num_clients_raises(digits):
    with pytest.raises(ValueError, match=r"^num_clients=0 must be >= 1"):
        split_federated(digits.labels, 0, 1.0, seed=0)
    # The default 70% client-train pool of digits holds 1258 samples: one more client
    # than samples is refused up front, before any Dirichlet draw.
    with pytest.raises(
        ValueError,
        match=r"^num_clients=1259 exceeds the 1258 client training samples; "
        r"allowed: 1\.\.1258$",
    ):
        split_federated(digits.labels, 1259, 1.0, seed=0)


@pytest.mark.parametrize(
    "fractions",
    [
        (0.1, 0.2, 0.7),
        (0.05, 0.2, 0.7, 0.1),
        (0.0, 0.25, 0.7, 0.05),
        (-0.05, 0.3, 0.7, 0.05),
    ],
)
def test_bad_fractions_raise(digits, fractions):
    pattern = r"^fractions=\(" + r".*must be 4 positive numbers.*summing to 1$"
    with pytest.raises(ValueError, match=pattern):
        split_federated(digits.labels, 10, 1.0, seed=0, fractions=fractions)


# --- building blocks -----------------------------------------------------------------


def test_dirichlet_proportions_shape_rows_and_concentration():
    p = dirichlet_proportions(10, 7, 1.0, np.random.default_rng(0))
    assert p.shape == (10, 7)
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)
    q = dirichlet_proportions(10, 7, 1.0, np.random.default_rng(0))
    np.testing.assert_array_equal(p, q)
    flat = dirichlet_proportions(50, 4, 1e4, np.random.default_rng(0))
    assert np.abs(flat - 0.25).max() < 0.03
    with pytest.raises(ValueError, match=r"^alpha=0\.0 must be > 0"):
        dirichlet_proportions(10, 7, 0.0, np.random.default_rng(0))


def test_split_by_proportions_matches_hand_reference():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    pool = np.array([9, 3, 0, 5, 2, 8, 1, 7, 4, 6])  # pool order decides who gets what
    p = np.array([[0.5, 0.5], [1 / 3, 2 / 3]])
    a, b = split_by_proportions(pool, labels, p)
    # Class 0 in pool order: 3, 0, 2, 1 -> 2 / 2.  Class 1: 9, 5, 8, 7, 4, 6 -> 2 / 4.
    np.testing.assert_array_equal(a, [0, 3, 5, 9])
    np.testing.assert_array_equal(b, [1, 2, 4, 6, 7, 8])


def test_split_by_proportions_assigns_each_sample_once():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=1000)
    pool = rng.permutation(1000)[:700]
    p = dirichlet_proportions(5, 9, 0.2, rng)
    parts = split_by_proportions(pool, labels, p)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.sort(pool))
    counts = np.stack([np.bincount(labels[x], minlength=5) for x in parts], axis=1)
    n_c = np.bincount(labels[pool], minlength=5)
    assert np.all(np.abs(counts - p * n_c[:, None]) <= 1.0 + 1e-9)


def test_pad_index_lists_shapes_masks_and_values():
    lists = [
        np.array([5, 6, 7]),
        np.array([1, 2, 3, 4, 9]),
        np.array([], dtype=np.int64),
    ]
    idx, mask = pad_index_lists(lists)
    assert idx.shape == mask.shape == (3, 5)
    assert idx.dtype == np.int32 and mask.dtype == np.bool_
    np.testing.assert_array_equal(mask.sum(1), [3, 5, 0])
    np.testing.assert_array_equal(idx[0], [5, 6, 7, 0, 0])
    np.testing.assert_array_equal(idx[1][mask[1]], [1, 2, 3, 4, 9])
    assert np.all(idx[~mask] == 0)


def test_pad_index_lists_rounds_up_to_multiple_and_honours_capacity():
    lists = [np.arange(3), np.arange(5)]
    idx, mask = pad_index_lists(lists, multiple=4)
    assert idx.shape == (2, 8)
    np.testing.assert_array_equal(mask.sum(1), [3, 5])
    idx, _ = pad_index_lists(lists, multiple=5)
    assert idx.shape == (2, 5)  # already a multiple: no extra padding
    idx, mask = pad_index_lists(lists, capacity=11)
    assert idx.shape == mask.shape == (2, 11)
    with pytest.raises(ValueError, match=r"^capacity=4 is smaller than .*\(5\)"):
        pad_index_lists(lists, capacity=4)


def test_pad_index_lists_on_a_real_split(digits):
    split = split_federated(digits.labels, 10, 0.1, seed=0)
    idx, mask = pad_index_lists(split.client_train, multiple=32)
    assert idx.shape[1] % 32 == 0
    assert idx.shape[1] - 32 < max(p.size for p in split.client_train) <= idx.shape[1]
    for k, p in enumerate(split.client_train):
        np.testing.assert_array_equal(idx[k][mask[k]], p)


def test_partition_summary_rows_are_client_class_counts(digits):
    labels = digits.labels
    split = split_federated(labels, 10, 0.1, seed=0)
    summary = partition_summary(split, labels, 10)
    assert summary.shape == (10, 10)
    np.testing.assert_array_equal(summary.sum(1), [p.size for p in split.client_train])
    for k, p in enumerate(split.client_train):
        for c in range(10):
            assert summary[k, c] == int(np.sum(labels[p] == c))


# --- split_federated: IID and shards partitions --------------------------------------


@pytest.mark.parametrize("partition", ["iid", "shards"])
def test_other_partitions_are_disjoint_seeded_and_cover_the_pool(digits, partition):
    a = split_federated(digits.labels, 10, 1.0, seed=3, partition=partition, shards_per_client=3)
    b = split_federated(digits.labels, 10, 1.0, seed=3, partition=partition, shards_per_client=3)
    assert _splits_equal(a, b)
    parts = _all_parts(a)
    joined = np.concatenate(parts)
    assert joined.size == np.unique(joined).size == digits.labels.size
    # Server sets do not depend on the partition (same seed, same D and test set).
    dirichlet = split_federated(digits.labels, 10, 1.0, seed=3)
    np.testing.assert_array_equal(a.server_train, dirichlet.server_train)
    np.testing.assert_array_equal(a.server_test, dirichlet.server_test)


def test_iid_partition_gives_every_client_an_equal_share_of_every_class(digits):
    split = split_federated(digits.labels, 10, 1.0, seed=0, partition="iid")
    counts = partition_summary(split, digits.labels, 10)
    pool = counts.sum(0)
    # Each class is cut into 10 equal runs: every count within 1 of n_c / 10.
    assert np.all(np.abs(counts - pool[None, :] / 10) <= 1)


def test_shards_give_each_client_exactly_k_classes(digits):
    for k in (1, 2, 5):
        split = split_federated(digits.labels, 10, 1.0, seed=0, partition="shards", shards_per_client=k)
        counts = partition_summary(split, digits.labels, 10)
        assert ((counts > 0).sum(1) == k).all(), k
        assert ((counts > 0).sum(0) >= 1).all()  # every class is held by someone
        test_counts = np.stack([np.bincount(digits.labels[p], minlength=10) for p in split.client_test])
        assert np.all(test_counts[counts == 0] == 0)  # test splits follow the train classes


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(partition="shards", shards_per_client=11), r"shards_per_client=11 .* \[1, 10\]"),
        (dict(partition="shards", shards_per_client=0), "shards_per_client=0"),
        (dict(partition="shards", shards_per_client=1, num_clients=5), "belong to no client"),
        (dict(partition="rows"), "partition='rows' is not known"),
    ],
)
def test_bad_partition_arguments_are_refused(digits, kwargs, message):
    kwargs = {"num_clients": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        split_federated(digits.labels, kwargs.pop("num_clients"), 1.0, seed=0, **kwargs)


def test_fit_images_pads_centred_and_repeats_one_channel():
    from fedconv_jax.data import fit_images

    digits = load_digits()
    fitted = fit_images(digits, 12, 3)
    assert fitted.images.shape == (digits.images.shape[0], 12, 12, 3)
    np.testing.assert_array_equal(fitted.images[:, 2:10, 2:10, 1], digits.images[..., 0])
    assert fitted.images[:, :2].max() == 0 and fitted.images[:, :, 10:].max() == 0
    assert fit_images(digits) is digits  # 0, 0: as loaded
    odd = fit_images(digits, 11)  # the odd pixel goes after
    np.testing.assert_array_equal(odd.images[:, 1:9, 1:9], digits.images)
    with pytest.raises(ValueError, match="config.image_size=6 is not allowed"):
        fit_images(digits, 6)
    with pytest.raises(ValueError, match="config.channels=2 is not allowed: the data has 3 channels"):
        fit_images(fitted, 0, 2)
