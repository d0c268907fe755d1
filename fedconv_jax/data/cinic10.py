"""CINIC-10 as a TFDS builder (TFDS's catalogue has none): 270,000 32x32 RGB images, 10 classes.

CINIC-10 (Darlow et al. 2018) is distributed as image folders, `CINIC-10.tar.gz`, unpacked to
`{train,valid,test}/<class>/*.png` with 90,000 images per split. Importing this module
registers the builder under "cinic10", so `tfds.builder("cinic10")` and
`tfds.testing.mock_data` know it; `fedconv-jax data import cinic10 --from DIR` prepares it
(array_record, no TensorFlow) from the unpacked folder.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# TFDS split name -> CINIC-10 folder.
SPLIT_FOLDERS = {"train": "train", "validation": "valid", "test": "test"}
IMAGE_SHAPE = (32, 32, 3)


def find_split_folders(root: Path) -> dict[str, Path]:
    """`{split: folder}` for the CINIC-10 split folders under `root` (or its one subfolder).

    Raises:
        ValueError: naming the folders and classes that were expected.
    """
    if not (root / "train").is_dir():
        subfolders = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
        if len(subfolders) == 1:
            root = subfolders[0]  # e.g. the tarball unpacked into CINIC-10/
    found = {split: root / folder for split, folder in SPLIT_FOLDERS.items() if (root / folder).is_dir()}
    if "train" not in found:
        raise ValueError(
            f"{root}: not an unpacked CINIC-10 (needs train/, and valid/ or test/, each with the class "
            f"folders {', '.join(CLASSES)})"
        )
    for split, folder in found.items():
        missing = [c for c in CLASSES if not (folder / c).is_dir()]
        if missing:
            raise ValueError(f"{folder}: class folders {missing} are missing (split {split})")
    return found


def png_rgb(path: Path) -> bytes:
    """The image as an RGB PNG: CINIC-10 holds some grayscale images among the colour ones."""
    from PIL import Image

    from fedconv_jax.data.importers import ImportFileError

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except OSError as err:
        raise ImportFileError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None
    if rgb.size != IMAGE_SHAPE[:2]:
        raise ImportFileError(f"{path}: a {rgb.size[0]}x{rgb.size[1]} image; CINIC-10 images are 32x32")
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    return buffer.getvalue()


class Cinic10(tfds.core.GeneratorBasedBuilder):
    """CINIC-10 from its unpacked image folders (`manual_dir`)."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download CINIC-10.tar.gz (https://github.com/BayesWatch/cinic-10), unpack it and run "
        "`fedconv-jax data import cinic10 --from <the unpacked folder>`."
    )

    def _info(self):
        features = tfds.features.FeaturesDict(
            {"image": tfds.features.Image(shape=IMAGE_SHAPE), "label": tfds.features.ClassLabel(names=CLASSES)}
        )
        return tfds.core.DatasetInfo(builder=self, features=features, supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        folders = find_split_folders(Path(dl_manager.manual_dir))
        return {split: self._generate_examples(folder) for split, folder in folders.items()}

    def _generate_examples(self, folder: Path):
        for label, name in enumerate(CLASSES):
            for path in sorted((folder / name).glob("*.png")):
                yield f"{name}/{path.name}", {"image": png_rgb(path), "label": np.int64(label)}


def prepare(source: Path, data_dir: Path) -> Path:
    """Writes CINIC-10 from its unpacked folder `source` into `data_dir`; returns the version dir."""
    find_split_folders(source)  # one-line error before TFDS starts
    builder = Cinic10(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(source)))
    return Path(builder.data_dir)
