"""Device format: one upload of the data set, clients as padded index lists per tier."""

import jax
import numpy as np

from fedconv_jax.data import Dataset, split_federated
from fedconv_jax.device_data import group_tiers, make_round_data


def test_mnist_sized_round_data_with_100_clients_stays_under_1_gb():
    labels = np.random.default_rng(0).integers(0, 10, 70_000).astype(np.int32)
    dataset = Dataset("synthetic", np.zeros((70_000, 28, 28, 1), np.float32), labels, 10)
    ratios = (1.0,) * 20 + (0.75,) * 40 + (0.5,) * 20 + (0.25,) * 20
    split = split_federated(labels, 100, 0.1, seed=0)
    tiers, members = group_tiers(ratios)
    data = make_round_data(dataset, split, members, batch_size=32, holdout_fraction=0.25, seed=0)
    nbytes = sum(x.nbytes for x in jax.tree.leaves(data))
    assert nbytes < 1 << 30, nbytes
    assert data.images.shape == (70_000, 28, 28, 1)  # uploaded once, not per client
    for t, ids in enumerate(members):
        idx, mask = data.client_train[t]
        sizes = [len(split.client_train[i]) for i in ids]
        # Each tier is padded to its own largest client, rounded up to whole batches.
        assert idx.shape == (len(ids), -(-max(sizes) // 32) * 32)
        assert np.asarray(mask).sum(1).tolist() == sizes
        for row, i in enumerate(ids):
            np.testing.assert_array_equal(np.asarray(idx[row])[: sizes[row]], split.client_train[i])
        np.testing.assert_array_equal(np.asarray(data.num_samples[t]), sizes)
    # Server sets: D split into tuning and held-out parts, disjoint; test set intact.
    tune = np.asarray(data.server_train.idx)[np.asarray(data.server_train.mask)]
    hold = np.asarray(data.server_holdout.idx)[np.asarray(data.server_holdout.mask)]
    assert not set(tune) & set(hold)
    assert sorted([*tune, *hold]) == sorted(split.server_train)
    assert np.asarray(data.server_test.mask).sum() == len(split.server_test)
