"""Offline import: local files -> the TFDS array_record layout, without TensorFlow.

Readers turn a local file into labelled splits (`{"train": (x, y), "test": (x, y)}`);
`write_tfds` stores them with a TF-free TFDS builder, so an imported data set is read exactly
like one prepared by TFDS (`tfds_source.load_tfds`). Formats:

* the classic MNIST pickle (`mnist.pkl.gz`: (train, valid, test), images float in [0, 1) as
  k/256, labels int); train + valid become TFDS's 60,000-image train split;
* the four MNIST IDX files (`train-images-idx3-ubyte[.gz]`, ...) in one directory;
* `.npz` with `x_train, y_train, x_test, y_test` (how users bring WiAR, depth-camera or
  HARBox data, which no library ships);
* CIFAR-10's python version (`cifar-10-python.tar.gz` or its unpacked `cifar-10-batches-py/`);
* NAME cinic10: CINIC-10's unpacked image folders, through the builder in data/cinic10.py.

Every reader validates what it reads: a truncated or corrupt file, labels that are not
integers in [0, num_classes), or examples of mixed shapes raise `ImportFileError` with one line.
"""

from __future__ import annotations

import gzip
import io
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np

from fedconv_jax.data.tfds_source import resolve_data_dir

Splits = dict[str, tuple[np.ndarray, np.ndarray]]
FORMATS = ("mnist_pickle", "idx", "npz", "cifar10_python")
# TFDS's own versions of the sets our readers know, so an import looks like `tfds prepare`.
_TFDS_VERSIONS = {"mnist": "3.0.1", "fashion_mnist": "3.0.1", "cifar10": "3.0.2"}
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class ImportFileError(ValueError):
    """A file that cannot be imported; the message is one line."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Only NumPy arrays and builtins: a data file must not run code."""

    _ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    })

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a data file")


def read_mnist_pickle(path: Path) -> Splits:
    """The classic `mnist.pkl.gz`: train + valid -> "train" (60,000), test -> "test"."""
    try:
        with gzip.open(path, "rb") as f:
            train, valid, test = _RestrictedUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as err:
        raise ImportFileError(f"{path}: not a readable MNIST pickle ({type(err).__name__}: {err})") from None

    def pixels(x):
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[1] != 784:
            raise ImportFileError(f"{path}: images of shape {x.shape}, expected (N, 784)")
        # Stored as k/256 (max 255/256); rounding recovers the original bytes exactly.
        return np.clip(np.rint(x * 256), 0, 255).astype(np.uint8).reshape(-1, 28, 28, 1)

    return {
        "train": (pixels(np.concatenate([train[0], valid[0]])), np.concatenate([train[1], valid[1]])),
        "test": (pixels(test[0]), np.asarray(test[1])),
    }


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise ImportFileError(f"{path}: cannot be read ({err})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ImportFileError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ImportFileError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise ImportFileError(f"{path}: {len(data)} bytes, the header promises {expected} (truncated or corrupt)")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz", directory / stem.replace("-idx", ".idx")):
        if candidate.is_file():
            return candidate
    raise ImportFileError(f"{directory}: missing {stem} (or {stem}.gz)")


def read_idx_dir(directory: Path) -> Splits:
    """The four MNIST IDX files in one directory (plain or .gz)."""
    splits = {}
    for split, (images_stem, labels_stem) in _IDX_FILES.items():
        x = _read_idx(_find_idx(directory, images_stem))
        y = _read_idx(_find_idx(directory, labels_stem))
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ImportFileError(f"{directory}: {split} images {x.shape} and labels {y.shape} do not match")
        splits[split] = (x[..., None], y)
    return splits


def read_npz(path: Path) -> Splits:
    """`.npz` with x_train, y_train, x_test, y_test (any example shape, uint8 or float)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
            if missing:
                raise ImportFileError(f"{path}: missing arrays {sorted(missing)}; needs x_train, y_train, x_test, y_test")
            return {s: (f[f"x_{s}"], f[f"y_{s}"]) for s in ("train", "test")}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        if isinstance(err, ImportFileError):
            raise
        raise ImportFileError(f"{path}: not a readable .npz ({type(err).__name__}: {err})") from None


CIFAR10_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


def read_cifar10_python(path: Path) -> Splits:
    """CIFAR-10's "python version": `cifar-10-python.tar.gz`, or its unpacked `cifar-10-batches-py/`.

    Each batch is a pickled dict of uint8 `data` (N, 3072) in channel-major order and `labels`.
    """
    import tarfile

    def batch(name: str, read) -> tuple[np.ndarray, np.ndarray]:
        try:
            entry = _RestrictedUnpickler(io.BytesIO(read(name)), encoding="bytes").load()
            data, labels = np.asarray(entry[b"data"]), np.asarray(entry[b"labels"])
        except (OSError, EOFError, KeyError, TypeError, pickle.UnpicklingError) as err:
            raise ImportFileError(f"{path}: {name} is not a CIFAR-10 batch ({type(err).__name__}: {err})") from None
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise ImportFileError(f"{path}: {name} holds data {data.dtype}{data.shape}, expected uint8 (N, 3072)")
        return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels

    def read_all(read) -> Splits:
        splits = {}
        for split, names in CIFAR10_BATCHES.items():
            parts = [batch(name, read) for name in names]
            splits[split] = (np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts]))
        return splits

    if path.is_dir():
        folder = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path

        def read_file(name):
            if not (folder / name).is_file():
                raise ImportFileError(f"{folder}: {name} is missing (needs data_batch_1..5 and test_batch)")
            return (folder / name).read_bytes()

        return read_all(read_file)
    try:
        with tarfile.open(path) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}

            def read_member(name):
                if name not in members:
                    raise ImportFileError(f"{path}: {name} is missing (needs data_batch_1..5 and test_batch)")
                return tar.extractfile(members[name]).read()

            return read_all(read_member)
    except (tarfile.TarError, OSError, EOFError) as err:
        reason = " ".join(str(err).split())  # tarfile lists every method it tried, one per line
        raise ImportFileError(f"{path}: not a readable CIFAR-10 tarball ({type(err).__name__}: {reason})") from None


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "cifar-10-batches-py").is_dir() or (path / "data_batch_1").is_file():
            return "cifar10_python"
        return "idx"
    if path.name.endswith((".tar.gz", ".tgz")) and "cifar-10" in path.name:
        return "cifar10_python"
    if path.name.endswith(".npz"):
        return "npz"
    if path.name.endswith((".pkl.gz", ".pkl")):
        return "mnist_pickle"
    raise ImportFileError(
        f"{path}: unknown format; allowed: an MNIST pickle (*.pkl.gz), a directory of IDX files, *.npz, "
        "or cifar-10-python.tar.gz"
    )


_READERS = {
    "mnist_pickle": read_mnist_pickle, "idx": read_idx_dir, "npz": read_npz, "cifar10_python": read_cifar10_python,
}


def check_splits(splits: Splits, num_classes: int | None = None) -> int:
    """Validates shapes and labels; returns the number of classes (max label + 1 by default)."""
    shapes = {x.shape[1:] for x, _ in splits.values()}
    if len(shapes) != 1:
        raise ImportFileError(f"examples of mixed shapes across splits: {sorted(shapes)}")
    (shape,) = shapes
    if len(shape) not in (2, 3):
        raise ImportFileError(f"example shape {shape} is not (H, W) or (H, W, C)")
    top = -1
    for split, (x, y) in splits.items():
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(x):
            raise ImportFileError(f"{split}: {len(x)} examples but labels of shape {y.shape}")
        if len(y) == 0:
            raise ImportFileError(f"{split}: no examples")
        if not np.issubdtype(y.dtype, np.integer) and not np.all(np.mod(y, 1) == 0):
            raise ImportFileError(f"{split}: labels must be integers, got dtype {y.dtype}")
        if y.min() < 0:
            raise ImportFileError(f"{split}: label {int(y.min())} is outside [0, num_classes)")
        if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
            raise ImportFileError(f"{split}: inputs contain NaN or Inf")
        top = max(top, int(y.max()))
    classes = num_classes if num_classes is not None else top + 1
    if top >= classes:
        raise ImportFileError(f"label {top} is outside [0, {classes}) (num_classes={classes})")
    return classes


def write_tfds(
    name: str, splits: Splits, num_classes: int, data_dir: Path, version: str = "1.0.0",
    groups: dict[str, np.ndarray] | None = None,
) -> Path:
    """Stores splits as a TFDS array_record data set with a TF-free builder; returns its dir.

    uint8 examples of shape (H, W, C <= 4) become a PNG `Image` feature (as TFDS's own image
    sets); anything else a `Tensor` feature of the examples' dtype. `groups` (per split, one
    int per example) adds a "user" feature: the natural partition's client of each example.
    """
    import tensorflow_datasets as tfds

    x0 = next(iter(splits.values()))[0]
    shape = x0.shape[1:]
    as_image = x0.dtype == np.uint8 and len(shape) == 3 and shape[-1] in (1, 3, 4)
    if as_image:
        image_feature = tfds.features.Image(shape=shape)
    else:
        image_feature = tfds.features.Tensor(shape=shape, dtype=x0.dtype if x0.dtype == np.uint8 else np.float32)
    feature_dict = {"image": image_feature, "label": tfds.features.ClassLabel(num_classes=num_classes)}
    if groups is not None:
        feature_dict["user"] = tfds.features.Tensor(shape=(), dtype=np.int64)
    features = tfds.features.FeaturesDict(feature_dict)

    def encode(example):
        if not as_image:
            return example.astype(image_feature.np_dtype)
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(example[..., 0] if example.shape[-1] == 1 else example).save(buffer, format="PNG")
        return buffer.getvalue()  # PIL's PNG: TFDS would need TensorFlow to encode arrays

    class _Import(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(version)

        def _info(self):
            # Grouped examples keep their order (time order for windows): the natural
            # partition splits each user's windows by time, which a shuffle would undo.
            return tfds.core.DatasetInfo(
                builder=self, features=features, supervised_keys=("image", "label"), disable_shuffling=groups is not None
            )

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split, x, y) for split, (x, y) in splits.items()}

        def _generate_examples(self, split, x, y):
            for i in range(len(y)):
                example = {"image": encode(x[i]), "label": int(y[i])}
                if groups is not None:
                    example["user"] = int(groups[split][i])
                yield i, example

    _Import.name = name
    builder = _Import(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare()
    return Path(builder.data_dir)


def _hapt_splits(path: Path, transitions: bool) -> tuple[Splits, dict[str, np.ndarray], int]:
    from fedconv_jax.data import hapt

    activities = hapt.ALL_ACTIVITIES if transitions else hapt.BASIC_ACTIVITIES
    x, y, users = hapt.windows(hapt.read_hapt_recordings(path), activities)
    return {"train": (x[..., None], y)}, {"train": users}, len(activities)


def _import_cinic10(source: Path, root: Path, num_classes: int | None, transitions: bool) -> Path:
    from fedconv_jax.data import cinic10

    if transitions or num_classes not in (None, len(cinic10.CLASSES)):
        raise ImportFileError("cinic10 takes only --from (its 10 classes are fixed)")
    try:
        cinic10.find_split_folders(source)
    except ValueError as err:
        raise ImportFileError(str(err)) from None
    target = root / "cinic10" / str(cinic10.Cinic10.VERSION)
    if target.exists():
        shutil.rmtree(target)
    return cinic10.prepare(source, root)


def import_dataset(
    name: str, source: str | Path, data_dir=None, num_classes: int | None = None, transitions: bool = False
) -> Path:
    """Reads `source`, validates it and writes `<data_dir>/<name>/...`.

    The format follows from the file's name, except for NAME "hapt": UCI HAPT recordings
    (data/hapt.py) cut into 2.56 s windows of the six basic activities (with `transitions`,
    the six postural transitions too), each window keeping its user.
    """
    source = Path(source).expanduser()
    if not source.exists():
        raise ImportFileError(f"--from {source}: no such file or directory")
    groups = None
    if name == "cinic10":
        return _import_cinic10(source, resolve_data_dir(data_dir), num_classes, transitions)
    if name == "hapt":
        splits, groups, num_classes = _hapt_splits(source, transitions)
    else:
        if transitions:
            raise ImportFileError(f"--transitions is for NAME hapt, not {name}")
        splits = _READERS[detect_format(source)](source)
    classes = check_splits(splits, num_classes)
    # (H, W) examples get a channel axis, so uint8 ones are stored as images.
    splits = {s: (x[..., None] if x.ndim == 3 else x, np.asarray(y, np.int64)) for s, (x, y) in splits.items()}
    root = resolve_data_dir(data_dir)
    version = _TFDS_VERSIONS.get(name, "1.0.0")
    target = root / name / version
    if target.exists():
        shutil.rmtree(target)  # re-importing replaces the old copy (and its decode cache)
    return write_tfds(name, splits, classes, root, version, groups)
