"""A FedConv round on synthetic MNIST-shaped data (or a local MNIST pickle), for benchmarks.

Builds what experiment.build_experiment builds, but from an in-memory data set, so the
benchmarks need no download: uniform [0, 1) 28x28x1 images, uniform labels in 0..9.
"""

import gzip
import pickle

import numpy as np

from fedconv_jax.config import default_config, validate
from fedconv_jax.data import Dataset
from fedconv_jax.experiment import Experiment, build_experiment

PAPER_SR_MIX = ((1.0, 0.2), (0.75, 0.4), (0.5, 0.2), (0.25, 0.2))  # (SR, share of clients)


def paper_ratios(num_clients: int) -> tuple[float, ...]:
    """The paper's 20/40/20/20 % SR mix for any client count (rounded, every tier >= 1)."""
    counts = [max(1, round(share * num_clients)) for _, share in PAPER_SR_MIX]
    counts[1] += num_clients - sum(counts)
    return tuple(r for (r, _), n in zip(PAPER_SR_MIX, counts) for _ in range(n))


def synthetic_mnist(n: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    images = rng.random((n, 28, 28, 1), dtype=np.float32)
    labels = rng.integers(0, 10, n).astype(np.int32)
    return Dataset(name="synthetic_mnist", images=images, labels=labels, num_classes=10)


def mnist_pickle(path: str) -> Dataset:
    """The classic mnist.pkl.gz ((train, valid, test) of (x (n, 784), y)), all 70,000 images."""
    with gzip.open(path, "rb") as f:
        parts = pickle.load(f, encoding="latin1")
    images = np.concatenate([p[0] for p in parts]).reshape(-1, 28, 28, 1).astype(np.float32)
    labels = np.concatenate([p[1] for p in parts]).astype(np.int32)
    return Dataset(name="mnist", images=images, labels=labels, num_classes=10)


def _config(**overrides):
    config = default_config()
    for field, value in overrides.items():
        config[field] = value
    validate(config)
    return config


def build_synthetic_experiment(dataset: Dataset, **overrides) -> Experiment:
    """The CLI's `Experiment` for `dataset` and config overrides."""
    return build_experiment(_config(**overrides), dataset=dataset)
