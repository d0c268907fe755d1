"""Type aliases shared across fedconv_jax."""

from typing import Any

import jax

Params = Any  # a pytree of jax.Array
Variables = dict[str, Any]  # {"params": Params, "batch_stats": ...} as Flax Linen uses them
PRNGKey = jax.Array
Metrics = dict[str, jax.Array]
