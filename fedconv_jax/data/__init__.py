"""Data sources and the federated split (host-side NumPy; no JAX here)."""

from fedconv_jax.data.partition import (
    PARTITIONS,
    FederatedSplit,
    pad_index_lists,
    partition_summary,
    split_federated,
    split_natural,
)
from fedconv_jax.data.sources import (
    Dataset,
    fit_images,
    is_dataset_name,
    load_dataset,
    load_digits,
)

__all__ = [
    "PARTITIONS",
    "Dataset",
    "FederatedSplit",
    "fit_images",
    "is_dataset_name",
    "load_dataset",
    "load_digits",
    "pad_index_lists",
    "partition_summary",
    "split_federated",
    "split_natural",
]
