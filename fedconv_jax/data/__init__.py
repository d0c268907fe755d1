"""Data sources and the federated split (host-side NumPy; no JAX here)."""

from fedconv_jax.data.partition import (
    FederatedSplit,
    pad_index_lists,
    partition_summary,
    split_federated,
)
from fedconv_jax.data.sources import Dataset, load_dataset, load_digits

__all__ = [
    "Dataset",
    "FederatedSplit",
    "load_dataset",
    "load_digits",
    "pad_index_lists",
    "partition_summary",
    "split_federated",
]
