"""TFDS sources, offline import (TF-free array_record), bad files, the not-prepared error."""

from __future__ import annotations

import gzip
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from fedconv_jax.cli import main
from fedconv_jax.data import load_dataset
from fedconv_jax.data.importers import ImportFileError, import_dataset
from fedconv_jax.data.tfds_source import (
    DatasetNotPrepared,
    dataset_from_builder,
    resolve_data_dir,
)

ROOT = Path(__file__).resolve().parents[1]
MNIST_PKL = ROOT.parent / "shared" / "data" / "mnist.pkl.gz"
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # official
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _sorted_rows(x: np.ndarray) -> np.ndarray:
    """Rows in a canonical order: TFDS shuffles examples when it writes them."""
    flat = x.reshape(len(x), -1)
    return flat[np.lexsort(flat.T[::-1])]


# --- tfds.data_source through mock_data (no TensorFlow, no files, no network) ---------


@pytest.mark.parametrize("name, shape, classes", [("mnist", (28, 28, 1), 10), ("cifar10", (32, 32, 3), 10)])
def test_keys_shapes_and_classes_come_from_info(name, shape, classes):
    with tfds.testing.mock_data(num_examples=24):
        dataset = dataset_from_builder(tfds.builder(name), name, ("train", "test"))
    assert dataset.images.shape == (48, *shape)
    assert dataset.images.dtype == np.float32
    assert 0.0 <= dataset.images.min() and dataset.images.max() <= 1.0
    assert dataset.num_classes == classes
    assert dataset.labels.min() >= 0 and dataset.labels.max() < classes


# --- import -> array_record -> data_source, for each format ---------------------------


def _write_idx(path: Path, array: np.ndarray, truncate: int = 0) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data[: len(data) - truncate]))


def _idx_dir(tmp_path: Path, truncate: int = 0) -> tuple[Path, dict]:
    rng = np.random.default_rng(0)
    arrays = {
        "train": (rng.integers(0, 256, (30, 6, 5), np.uint8), rng.integers(0, 10, 30).astype(np.uint8)),
        "test": (rng.integers(0, 256, (12, 6, 5), np.uint8), rng.integers(0, 10, 12).astype(np.uint8)),
    }
    folder = tmp_path / "idx"
    folder.mkdir()
    names = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    for split, (x, y) in arrays.items():
        _write_idx(folder / f"{names[split][0]}.gz", x, truncate if split == "test" else 0)
        _write_idx(folder / f"{names[split][1]}.gz", y)
    return folder, arrays


def test_idx_import_round_trips_exactly(tmp_path):
    folder, arrays = _idx_dir(tmp_path)
    path = import_dataset("tiny_idx", folder, tmp_path / "data", num_classes=10)
    assert (path / "dataset_info.json").is_file()
    assert list(path.glob("*.array_record*"))
    dataset = load_dataset("tfds:tiny_idx", str(tmp_path / "data"))
    x = np.concatenate([arrays["test"][0], arrays["train"][0]])  # splits load in name order
    y = np.concatenate([arrays["test"][1], arrays["train"][1]])
    assert dataset.images.shape == (42, 6, 5, 1) and dataset.num_classes == 10
    got = np.concatenate([np.rint(dataset.images * 255).reshape(42, -1), dataset.labels[:, None]], 1)
    want = np.concatenate([x.reshape(42, -1), y[:, None]], 1).astype(got.dtype)
    np.testing.assert_array_equal(_sorted_rows(got), _sorted_rows(want))


def test_npz_float_import_keeps_values_and_uses_the_decode_cache(tmp_path):
    rng = np.random.default_rng(1)
    x_train, x_test = rng.normal(size=(20, 4, 7)).astype(np.float32), rng.normal(size=(6, 4, 7)).astype(np.float32)
    y_train, y_test = rng.integers(0, 3, 20), rng.integers(0, 3, 6)
    np.savez(tmp_path / "har.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    import_dataset("har", tmp_path / "har.npz", tmp_path / "data")
    first = load_dataset("tfds:har", str(tmp_path / "data"))
    assert first.num_classes == 3 and first.images.shape == (26, 4, 7, 1)
    got = np.concatenate([first.images.reshape(26, -1), first.labels[:, None]], 1)
    want = np.concatenate([np.concatenate([x_test, x_train]).reshape(26, -1),
                           np.concatenate([y_test, y_train])[:, None]], 1).astype(np.float32)
    np.testing.assert_array_equal(_sorted_rows(got), _sorted_rows(want))
    assert list((tmp_path / "data" / "har").glob("*/fedconv_cache.npz"))
    second = load_dataset("tfds:har", str(tmp_path / "data"))
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, second.labels)


@pytest.mark.skipif(not MNIST_PKL.is_file(), reason=f"real MNIST not present at {MNIST_PKL}")
def test_mnist_pickle_import_has_the_official_class_counts(tmp_path):
    code = main(["data", "import", "mnist", "--from", str(MNIST_PKL), "--data-dir", str(tmp_path)])
    assert code == 0
    builder = tfds.builder_from_directory(str(tmp_path / "mnist" / "3.0.1"))
    assert builder.info.splits["train"].num_examples == 60000
    assert builder.info.splits["test"].num_examples == 10000
    for split, want in (("train", MNIST_TRAIN_COUNTS), ("test", MNIST_TEST_COUNTS)):
        source = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        labels = np.array([source[i]["label"] for i in range(len(source))])  # no PNG decoding: 3x faster
        assert np.bincount(labels, minlength=10).tolist() == want
    first = builder.as_data_source(split="test")[0]["image"]
    assert first.shape == (28, 28, 1) and first.dtype == np.uint8 and first.max() > 200


# --- bad files and bad names ------------------------------------------------------------


def test_truncated_idx_is_refused(tmp_path):
    folder, _ = _idx_dir(tmp_path, truncate=7)
    with pytest.raises(ImportFileError, match="truncated or corrupt"):
        import_dataset("bad", folder, tmp_path / "data")
    assert not (tmp_path / "data" / "bad").exists()


def test_corrupt_pickle_is_refused(tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(b"not a pickle at all"))
    with pytest.raises(ImportFileError, match="not a readable MNIST pickle"):
        import_dataset("mnist", path, tmp_path / "data")
    path.write_bytes(b"\x1f\x8b truncated gzip")
    with pytest.raises(ImportFileError, match="not a readable MNIST pickle"):
        import_dataset("mnist", path, tmp_path / "data")


def test_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(Path("/"))))  # any non-array global
    with pytest.raises(ImportFileError, match="not allowed"):
        import_dataset("evil", path, tmp_path / "data")


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(x_train=np.zeros((4, 3, 3)), y_train=[0, 1, 0, 1], x_test=np.zeros((2, 3, 4)), y_test=[0, 1]), "mixed shapes"),
        (dict(x_train=np.zeros((4, 3, 3)), y_train=[0, -1, 0, 1], x_test=np.zeros((2, 3, 3)), y_test=[0, 1]), "outside"),
        (dict(x_train=np.zeros((4, 3, 3)), y_train=[0, 1, 0, 5], x_test=np.zeros((2, 3, 3)), y_test=[0, 1]), "outside"),
        (dict(x_train=np.zeros((4, 3, 3)), y_train=[0, 1, 0], x_test=np.zeros((2, 3, 3)), y_test=[0, 1]), "labels of shape"),
        (dict(x_train=np.zeros((4, 3, 3)), y_train=[0, 1, 0, 1]), "missing arrays"),
        (dict(x_train=np.full((4, 3, 3), np.nan), y_train=[0, 1, 0, 1], x_test=np.zeros((2, 3, 3)), y_test=[0, 1]), "NaN"),
    ],
)
def test_bad_npz_contents_are_refused(tmp_path, arrays, message):
    np.savez(tmp_path / "x.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    with pytest.raises(ImportFileError, match=message):
        import_dataset("x", tmp_path / "x.npz", tmp_path / "data", num_classes=2)


def test_import_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "import", "m", "--from", str(tmp_path / "missing.npz")]) == 2
    assert main(["data", "import", "m", "--from", str(tmp_path)]) == 2  # a directory without IDX files
    assert main(["data", "import", "../up", "--from", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("fedconv-jax: error: ") for line in lines)


def test_prepare_without_tensorflow_says_what_to_install(tmp_path, capsys):
    pytest.importorskip("tensorflow_datasets")
    try:
        import tensorflow  # noqa: F401

        pytest.skip("TensorFlow is installed: prepare would try to download")
    except ImportError:
        pass
    assert main(["data", "prepare", "mnist", "--data-dir", str(tmp_path)]) == 2
    assert "tfds-prepare" in capsys.readouterr().err


def test_unprepared_dataset_fails_fast_with_the_command(tmp_path, capsys):
    with pytest.raises(DatasetNotPrepared, match=r"fedconv-jax data import cifar10 --from PATH"):
        load_dataset("tfds:cifar10", str(tmp_path))
    start = time.perf_counter()
    code = main([
        "run", "--config", str(ROOT / "configs" / "smoke.py"), "--workdir", str(tmp_path / "out"),
        "--config.dataset=tfds:cifar10", f"--config.data_dir={tmp_path}",
    ])
    assert time.perf_counter() - start < 10
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "not prepared" in err and "fedconv-jax data prepare cifar10" in err
    assert not (tmp_path / "out").exists()


def test_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDCONV_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("FEDCONV_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve_data_dir(None) == tmp_path / "cache" / "fedconv_jax" / "tensorflow_datasets"


def test_describe_prints_every_client_and_saves_a_heat_map(tmp_path, capsys):
    out = tmp_path / "partition.png"
    code = main(["data", "describe", "--config", str(ROOT / "configs" / "smoke.py"), "--out", str(out),
                 "--config.partition=shards", "--config.shards_per_client=2"])
    text = capsys.readouterr().out
    assert code == 0
    rows = [line for line in text.splitlines() if line.strip()[:1].isdigit() and "|" in line]
    assert len(rows) == 10
    for row in rows:  # shards: exactly two classes with samples per client
        assert sum(int(c) > 0 for c in row.split("|")[1].split()) == 2
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- CIFAR10 and CINIC10: imports and the paper configs (tfds.testing.mock_data) --------


@pytest.mark.parametrize("config_name, model", [("cifar10", "resnet18"), ("cinic10", "googlenet")])
def test_paper_image_configs_read_their_data_through_tfds(tmp_path, config_name, model):
    from fedconv_jax.config import load_config, validate
    from fedconv_jax.experiment import build_experiment

    config = load_config(ROOT / "configs" / f"{config_name}.py")
    config.data_dir = str(tmp_path / "empty")  # nothing prepared: the registered builder is read
    validate(config)
    assert config.model == model and config.num_clients == 20
    assert sorted(config.shrink_ratios) == [0.25] * 4 + [0.5] * 4 + [0.75] * 8 + [1.0] * 4
    with pytest.raises(DatasetNotPrepared, match=f"data import {config_name}"):
        load_dataset(config.dataset, config.data_dir)
    with tfds.testing.mock_data(num_examples=300):
        exp = build_experiment(config, abstract_state=True)  # data, partition, input check, shapes
    assert exp.data.images.shape[1:] == (32, 32, 3)
    assert sum(len(m) for m in exp.tier_members) == 20
    samples = np.concatenate([np.asarray(n) for n in exp.data.num_samples])
    assert samples.sum() > 0 and int(exp.data.server_train.mask.sum()) > 0


def _cifar_batch(rng, n: int) -> bytes:
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return pickle.dumps({b"batch_label": b"x", b"labels": rng.integers(0, 10, n).tolist(), b"data": data}), data


def test_cifar10_python_tarball_import_keeps_pixels_in_hwc_order(tmp_path):
    import io
    import tarfile

    rng = np.random.default_rng(2)
    path = tmp_path / "cifar-10-python.tar.gz"
    pixels = {}
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            payload, pixels[name] = _cifar_batch(rng, 3)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    assert main(["data", "import", "cifar10", "--from", str(path), "--data-dir", str(tmp_path / "data")]) == 0
    assert (tmp_path / "data" / "cifar10" / "3.0.2" / "dataset_info.json").is_file()
    dataset = load_dataset("tfds:cifar10", str(tmp_path / "data"))
    assert dataset.images.shape == (18, 32, 32, 3) and dataset.num_classes == 10
    # Channel-major rows: red plane, then green, then blue.
    want = np.concatenate([pixels[n] for n in pixels]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(_sorted_rows(np.rint(dataset.images * 255)), _sorted_rows(want.astype(np.float32)))


def test_cifar10_tarball_without_a_batch_is_refused(tmp_path):
    import tarfile

    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz"):
        pass
    with pytest.raises(ImportFileError, match="data_batch_1 is missing"):
        import_dataset("cifar10", path, tmp_path / "data")


def _cinic_folder(tmp_path: Path) -> Path:
    from PIL import Image

    from fedconv_jax.data.cinic10 import CLASSES

    rng = np.random.default_rng(3)
    root = tmp_path / "CINIC-10"
    for split in ("train", "valid", "test"):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / split / name / "a.png")
    gray = rng.integers(0, 256, (32, 32), dtype=np.uint8)  # CINIC-10 has some grayscale images
    Image.fromarray(gray).save(root / "train" / "cat" / "gray.png")
    return root, gray


def test_cinic10_import_reads_every_split_and_makes_grayscale_rgb(tmp_path):
    root, gray = _cinic_folder(tmp_path)
    assert main(["data", "import", "cinic10", "--from", str(root), "--data-dir", str(tmp_path / "data")]) == 0
    dataset = load_dataset("tfds:cinic10", str(tmp_path / "data"))
    assert dataset.images.shape == (31, 32, 32, 3) and dataset.num_classes == 10
    assert np.bincount(dataset.labels, minlength=10).tolist() == [3, 3, 3, 4, 3, 3, 3, 3, 3, 3]
    rgb_gray = np.repeat(gray[..., None].astype(np.float32) / 255, 3, axis=-1)
    assert any(np.allclose(image, rgb_gray) for image in dataset.images)


def test_cinic10_import_names_the_missing_class_folder(tmp_path):
    root, _ = _cinic_folder(tmp_path)
    (root / "test" / "ship" / "a.png").unlink()
    (root / "test" / "ship").rmdir()
    with pytest.raises(ImportFileError, match="ship"):
        import_dataset("cinic10", root, tmp_path / "data")
