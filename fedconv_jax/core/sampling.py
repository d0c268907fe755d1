"""Client sampling: which clients take part in a round, drawn inside the compiled round.

The draw is a function of (state key, round) only, so a resumed run repeats it, and it is
a mask over fixed tier capacities, so rounds in which the tiers contribute different numbers
of clients share one compiled program (fedjax's "padding plus masks").
"""

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fedconv_jax.core.data import RoundData
from fedconv_jax.core.streams import stream_key
from fedconv_jax.core.types import PRNGKey


def sample_clients(key: PRNGKey, round_index: jax.Array, present: tuple[jax.Array, ...], clients_per_round: ArrayLike):
    """K clients uniformly without replacement among the present slots of all tiers.

    Args:
      key: the server state's key.
      round_index: int32 scalar, 0-based.
      present: per tier, (capacity,) bool: real clients (padding slots are False).
      clients_per_round: K, may be traced (a round input); 0, or K >= the number of present
        clients, keeps all of them.

    Returns:
      Per tier, (capacity,) bool: present and drawn this round.
    """
    flat = jnp.concatenate(present)
    key = stream_key(key, round_index, "sampling")
    scores = jnp.where(flat, jax.random.uniform(key, flat.shape), jnp.inf)
    rank = jnp.argsort(jnp.argsort(scores))  # 0 = smallest score
    k = jnp.asarray(clients_per_round).astype(jnp.int32)
    drawn = flat & ((rank < k) | (k == 0))
    splits = [int(m.shape[0]) for m in present]
    offsets = [sum(splits[:i]) for i in range(len(splits))]
    return tuple(drawn[o : o + n] for o, n in zip(offsets, splits))


def sample_round_clients(key: PRNGKey, round_index: jax.Array, data: RoundData, hparams) -> RoundData:
    """`data` with `client_mask` set to this round's draw (`hparams["clients_per_round"]`)."""
    mask = sample_clients(key, round_index, data.client_mask, hparams["clients_per_round"])
    return data._replace(client_mask=mask)


__all__ = ["sample_clients", "sample_round_clients"]
