"""A federated split in words and pictures: per-client sample and class counts, a heat map."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedconv_jax.data.partition import FederatedSplit, partition_summary
from fedconv_jax.data.sources import Dataset


def summary_table(dataset: Dataset, split: FederatedSplit, shrink_ratios=None) -> str:
    """Plain-text table: one row per client (SR, train/test samples, class counts)."""
    counts = partition_summary(split, dataset.labels, dataset.num_classes)
    classes = " ".join(f"{c:>5d}" for c in range(dataset.num_classes))
    lines = [
        f"dataset {dataset.name}: {len(dataset.labels)} examples, {dataset.num_classes} classes, "
        f"input {dataset.images.shape[1:]}",
        f"server tuning set D: {len(split.server_train)}   server test set: {len(split.server_test)}   "
        f"client train: {sum(map(len, split.client_train))}   client test: {sum(map(len, split.client_test))}",
        "per client: shrink ratio, training and test samples | training samples per class",
        f"{'client':>6} {'SR':>5} {'train':>6} {'test':>5} | {classes}",
    ]
    for j, row in enumerate(counts):
        sr = f"{shrink_ratios[j]:g}" if shrink_ratios is not None else "-"
        cells = " ".join(f"{c:>5d}" for c in row)
        lines.append(
            f"{j:>6d} {sr:>5} {len(split.client_train[j]):>6d} {len(split.client_test[j]):>5d} | {cells}"
        )
    return "\n".join(lines)


def save_heatmap(counts: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Clients x classes heat map of training-sample counts, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients, classes = counts.shape
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * classes, 1.0 + 0.3 * clients))
    image = ax.imshow(counts, aspect="auto", cmap="viridis")
    ax.set_xlabel("class")
    ax.set_ylabel("client")
    ax.set_xticks(range(classes))
    ax.set_yticks(range(clients))
    if clients * classes <= 400:  # numbers stay readable on small grids only
        for (j, c), value in np.ndenumerate(counts):
            ax.text(c, j, str(value), ha="center", va="center", fontsize=7,
                    color="white" if value < counts.max() / 2 else "black")
    fig.colorbar(image, ax=ax, label="training samples")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
