"""One run over several processes (hosts) with JAX's own distributed runtime.

Every process runs the same command. `jax.distributed.initialize` makes `jax.devices()` the
devices of all processes; each process builds the same data and initial state from the seed,
and the round program shards the client axis over all of them (core/sharding.py), so no
process holds another's per-client state. Process 0 alone writes metrics.jsonl, config.json
and the progress bar; every process takes part in a checkpoint and process 0 commits it.

A peer that dies fails the survivors' next collective at once (on CPU, gloo's "connection
closed by peer"); outside a collective, the coordination service's heartbeat check stops them
after `heartbeat_timeout` seconds. In the first case the CLI prints one line and exits; in
the second, JAX's runtime aborts the process with its own "another task died" message.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    heartbeat_timeout: int = 60,
    initialization_timeout: int = 300,
) -> None:
    """`jax.distributed.initialize`; arguments left None are detected from the cluster
    environment (Slurm, Open MPI, cloud TPU) as JAX does. Must run before any JAX computation."""
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=initialization_timeout,
        heartbeat_timeout_seconds=heartbeat_timeout,
    )


def is_primary() -> bool:
    """True in the process that writes the run's files (process 0; the only one when alone)."""
    return jax.process_index() == 0


def host_copy(tree):
    """A NumPy copy of every leaf. A leaf spread over several processes (a per-client field
    sharded over all devices) is gathered, a collective: every process must call this at the
    same point of the run with the same tree."""

    def one(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable and not leaf.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return jax.device_get(leaf)

    return jax.tree.map(one, tree)


__all__ = ["host_copy", "initialize", "is_primary"]
