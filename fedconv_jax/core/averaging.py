"""Sample-weighted averaging over a leading client axis (FedAvg's rule), shared by algorithms."""

import jax
import jax.numpy as jnp

from fedconv_jax.core.types import Params


def sample_factors(num_samples: jax.Array, mask: jax.Array) -> jax.Array:
    """n_j / sum_j n_j over the present clients; absent clients get 0."""
    n = jnp.where(mask, num_samples, 0.0)
    return n / jnp.maximum(jnp.sum(n), 1e-12)


def weighted_average(stacked: Params, num_samples: jax.Array, mask: jax.Array) -> Params:
    """Plain sample-weighted averaging (FedAvg's rule; also used for BatchNorm statistics)."""
    factors = sample_factors(num_samples, mask)
    return jax.tree.map(lambda x: jnp.tensordot(factors, x, axes=1), stacked)


__all__ = ["sample_factors", "weighted_average"]
