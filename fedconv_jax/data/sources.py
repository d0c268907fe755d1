"""Labelled image data sets held in host memory, and a registry of loaders.

Everything here is host-side NumPy: a loader runs once before any compile, and the
federated round later moves the whole image array to the device in one copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np


# eq=False: a generated __eq__ would compare arrays element-wise and raise on `bool`,
# and a generated __hash__ would fail on unhashable arrays; identity is what we want.
@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image-classification data set held in host memory.

    Attributes:
        name: The registry name the data set was loaded under, e.g. ``"digits"``.
        images: ``(N, H, W, C)`` float32 pixel values in ``[0, 1]`` (channels last,
            the layout Flax convolutions expect).
        labels: ``(N,)`` int32 class ids in ``[0, num_classes)``.
        num_classes: Number of classes, fixed by the data set rather than by the labels
            present, so a subset with a missing class keeps the same output width.
        groups: ``(N,)`` int64 natural client ids (a HAR recording's user), or None; the
            "natural" partition makes one client per group.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        # Shape and dtype checks are O(1); catching a loader bug here is cheaper than a
        # confusing shape error deep inside a compiled round.
        if self.images.ndim != 4:
            raise ValueError(
                f"images.shape={self.images.shape} must be (N, H, W, C) (4 dimensions)"
            )
        if self.images.dtype != np.float32:
            raise ValueError(f"images.dtype={self.images.dtype} must be float32")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels.shape={self.labels.shape} must be ({self.images.shape[0]},), "
                "one label per image"
            )
        if self.labels.dtype != np.int32:
            raise ValueError(f"labels.dtype={self.labels.dtype} must be int32")
        if self.num_classes < 1:
            raise ValueError(f"num_classes={self.num_classes} must be >= 1")
        if self.groups is not None and self.groups.shape != self.labels.shape:
            raise ValueError(f"groups.shape={self.groups.shape} must be {self.labels.shape}, one group per image")


def load_digits() -> Dataset:
    """Loads scikit-learn's bundled 8x8 handwritten digits (no download needed).

    Returns:
        A ``Dataset`` named ``"digits"`` with images ``(1797, 8, 8, 1)`` float32 in
        ``[0, 1]`` (the raw 0..16 intensities divided by 16) and 10 classes.
    """
    # Imported lazily so that importing the package does not pay for scikit-learn when
    # another source is used.
    from sklearn import datasets

    bunch = datasets.load_digits()
    images = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[..., None]
    labels = np.asarray(bunch.target, dtype=np.int32)
    return Dataset(name="digits", images=images, labels=labels, num_classes=10)


def fit_images(dataset: Dataset, image_size: int = 0, channels: int = 0) -> Dataset:
    """The data set with its images zero-padded (centred) to image_size x image_size and its
    single channel repeated `channels` times; 0 leaves that part as it is.

    A CPU stand-in for the paper's 32x32x3 models (real MNIST padded to 32x32x3 for
    ResNet18), not a substitute for CIFAR: padding adds no information. Never resizes.

    Raises:
        ValueError: naming `image_size` or `channels` when the images are larger, or have
            several channels that are not `channels`.
    """
    images = dataset.images
    height, width, have = images.shape[1:]
    if image_size:
        if image_size < max(height, width):
            raise ValueError(
                f"config.image_size={image_size} is not allowed: at least the data's {height}x{width} "
                "(images are zero-padded, never cropped or resized)"
            )
        top, left = (image_size - height) // 2, (image_size - width) // 2
        pads = ((0, 0), (top, image_size - height - top), (left, image_size - width - left), (0, 0))
        images = np.pad(images, pads)
    if channels and channels != have:
        if have != 1:
            raise ValueError(
                f"config.channels={channels} is not allowed: the data has {have} channels; only a single "
                f"channel is repeated (0 or {have} keeps them)"
            )
        images = np.repeat(images, channels, axis=-1)
    if images is dataset.images:
        return dataset
    return dataclasses.replace(dataset, images=np.ascontiguousarray(images, dtype=np.float32))


BUNDLED: dict[str, Callable[[], Dataset]] = {"digits": load_digits}
TFDS_PREFIX = "tfds:"


def is_dataset_name(name: str) -> bool:
    """A bundled name, or `tfds:<name>` with a TFDS-style name (checked before anything loads)."""
    if name in BUNDLED:
        return True
    rest = name[len(TFDS_PREFIX) :] if name.startswith(TFDS_PREFIX) else ""
    return bool(rest) and all(part and part.replace("_", "").isalnum() for part in rest.split("/"))


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """Loads a data set: a bundled one ("digits") or a prepared TFDS one ("tfds:mnist").

    Args:
        name: "digits" or "tfds:<name>" (prepared or imported into the data dir).
        data_dir: TFDS data dir; default $FEDCONV_DATA_DIR, then a per-user cache dir.

    Raises:
        ValueError: If ``name`` is not known; `DatasetNotPrepared` (a ValueError) if a TFDS
            data set is not in the data dir.
    """
    if name in BUNDLED:
        return BUNDLED[name]()
    if not is_dataset_name(name):
        allowed = ", ".join(sorted(BUNDLED)) + ", tfds:<name>"
        raise ValueError(f"dataset={name!r} is not known; allowed: {allowed}")
    from fedconv_jax.data.tfds_source import (
        load_tfds,  # TFDS is imported only when used
    )

    return load_tfds(name[len(TFDS_PREFIX) :], data_dir)
