"""TFDS data sets read through `tfds.data_source` (array_record, NumPy out, no TensorFlow).

Every data set, whether prepared by TFDS itself (`fedconv-jax data prepare`) or converted
from local files (`fedconv-jax data import`), lives in one layout:
``<data_dir>/<name>/<version>/{dataset_info.json, features.json, *.array_record-*}``.
Reading never downloads: a missing data set fails at once with the command that makes it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from fedconv_jax.data.sources import Dataset

DATA_DIR_ENV = "FEDCONV_DATA_DIR"
# Builders fedconv_jax registers with TFDS (module imported on first use of the name).
_OWN_BUILDERS = {"cinic10": "fedconv_jax.data.cinic10"}


class DatasetNotPrepared(ValueError):
    """The data set is not in the data dir; the message names the command that puts it there."""


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """`data_dir` if given, else $FEDCONV_DATA_DIR, else a per-user cache directory."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "fedconv_jax" / "tensorflow_datasets"


def _version_key(path: Path) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in path.name.split("."))
    except ValueError:
        return (-1,)


def find_prepared(name: str, data_dir: Path) -> Path | None:
    """The newest `<data_dir>/<name>/<version>` holding a complete `dataset_info.json`."""
    root = data_dir / name
    if not root.is_dir():
        return None
    versions = [p for p in root.iterdir() if p.is_dir() and (p / "dataset_info.json").is_file()]
    return max(versions, key=_version_key) if versions else None


def not_prepared_message(name: str, data_dir: Path) -> str:
    message = (
        f"dataset tfds:{name} is not prepared in {data_dir}; import local files with "
        f"`fedconv-jax data import {name} --from PATH --data-dir {data_dir}`"
    )
    if name in _OWN_BUILDERS:  # no download URL: local files only
        return message
    return message + f" or, with TensorFlow and internet, `fedconv-jax data prepare {name} --data-dir {data_dir}`"


GROUP_KEY = "user"  # an optional int feature: each example's natural client


def _image_and_label_keys(info) -> tuple[str, str]:
    """The (input, label) feature keys: `supervised_keys` if set, else found by type."""
    import tensorflow_datasets as tfds

    if info.supervised_keys and len(info.supervised_keys) == 2:
        image_key, label_key = info.supervised_keys
        if isinstance(image_key, str) and isinstance(label_key, str):
            return image_key, label_key
    features = info.features
    labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
    inputs = [
        k
        for k, f in features.items()
        if isinstance(f, tfds.features.Image | tfds.features.Tensor) and len(f.shape) >= 2
    ]
    if len(labels) != 1 or not inputs:
        raise ValueError(
            f"dataset {info.name}: cannot tell the input and the label among features "
            f"{sorted(features)}; allowed: one ClassLabel and an Image or >= 2-D Tensor feature"
        )
    return inputs[0], labels[0]


def _to_float_images(x: np.ndarray) -> np.ndarray:
    """(N, H, W[, C]) -> float32 (N, H, W, C); integer pixels are scaled to [0, 1]."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"inputs of shape {x.shape[1:]} are not images (H, W) or (H, W, C)")
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.float32) / np.float32(np.iinfo(x.dtype).max)
    return x.astype(np.float32)


def dataset_from_builder(builder, name: str, splits: tuple[str, ...] | None = None) -> Dataset:
    """Reads every split of a TFDS builder through `as_data_source` into one `Dataset`.

    Keys, shapes and the class count come from `builder.info`. The splits (default: all in
    `info.splits`) are concatenated: the federated split carves its own server and client
    parts (SPEC §6).
    """
    info = builder.info
    image_key, label_key = _image_and_label_keys(info)
    num_classes = int(info.features[label_key].num_classes)
    has_groups = GROUP_KEY in info.features  # e.g. the user of a HAR window (the natural partition)
    images, labels, groups = [], [], []
    # A builder that lists no splits (from code, under tfds.testing.mock_data): train + test.
    for split in splits or tuple(sorted(info.splits)) or ("test", "train"):
        source = builder.as_data_source(split=split)
        records = [source[i] for i in range(len(source))]
        images.append(np.stack([np.asarray(r[image_key]) for r in records]))
        labels.append(np.asarray([r[label_key] for r in records], dtype=np.int64))
        if has_groups:
            groups.append(np.asarray([r[GROUP_KEY] for r in records], dtype=np.int64))
    x = _to_float_images(np.concatenate(images))
    y = np.concatenate(labels)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"dataset {name}: labels span [{y.min()}, {y.max()}], allowed [0, {num_classes})")
    return Dataset(
        name=f"tfds:{name}", images=x, labels=y.astype(np.int32), num_classes=num_classes,
        groups=np.concatenate(groups) if has_groups else None,
    )


# What TFDS raises when nothing is prepared (measured: NotImplementedError, "random access ... not
# supported"); a bad prepared set's own errors (labels out of range) must not read as "not prepared".
_NOT_READABLE = (NotImplementedError, FileNotFoundError)


def _load_registered(name: str, root: Path) -> Dataset:
    """A data set not in `root`'s layout, read through the TFDS builder registered under `name`.

    That builder's `as_data_source` fails at once when nothing is prepared (no download is
    ever started), which becomes `DatasetNotPrepared`; under `tfds.testing.mock_data` it
    serves random examples of the builder's features, which is how the CIFAR10 and CINIC10
    configs are tested without their data.
    """
    import importlib

    import tensorflow_datasets as tfds

    if name in _OWN_BUILDERS:
        importlib.import_module(_OWN_BUILDERS[name])
    if name not in tfds.list_builders(with_community_datasets=False):
        raise DatasetNotPrepared(not_prepared_message(name, root))
    try:
        return dataset_from_builder(tfds.builder(name, data_dir=str(root)), name)
    except _NOT_READABLE:
        raise DatasetNotPrepared(not_prepared_message(name, root)) from None


def load_tfds(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Loads a prepared TFDS data set from the data dir; never downloads.

    Decoded arrays are cached beside the array_record files (`fedconv_cache.npz`), so only the
    first load pays for decoding every image.

    Raises:
      DatasetNotPrepared: the data set is not in the data dir.
    """
    root = resolve_data_dir(data_dir)
    version_dir = find_prepared(name, root)
    if version_dir is None:
        return _load_registered(name, root)
    cache = version_dir / "fedconv_cache.npz"
    if cache.is_file() and cache.stat().st_mtime >= (version_dir / "dataset_info.json").stat().st_mtime:
        with np.load(cache) as f:
            groups = f.get("groups")
            return Dataset(f"tfds:{name}", f["images"], f["labels"], int(f["num_classes"]), groups)
    import tensorflow_datasets as tfds

    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # TFDS warns once per load that OpenCV is missing (PIL decodes)
    try:
        dataset = dataset_from_builder(tfds.builder_from_directory(str(version_dir)), name)
    finally:
        absl_logger.setLevel(level)
    try:
        tmp = cache.with_suffix(".tmp.npz")
        groups = {} if dataset.groups is None else {"groups": dataset.groups}
        np.savez(tmp, images=dataset.images, labels=dataset.labels, num_classes=dataset.num_classes, **groups)
        tmp.replace(cache)  # atomic: a killed run never leaves a half-written cache
    except OSError:
        pass  # a read-only data dir only costs the decode next time
    return dataset
