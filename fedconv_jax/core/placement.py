"""How a tier's clients are laid out on a device ("auto"), chosen per backend by measurement.

XLA:CPU: clients one after another (`lax.map`, chunk 1). Vmapped client steps (batched small
matmuls) cost 1.5-3x more CPU time per client-step there (benchmarks/README.md,
round_throughput), and cores are used through `devices` instead.

Accelerators: clients side by side. `lax.map(batch_size=k)` vmaps k clients at a time, so the
chunk is the memory knob: k = the most clients whose training fits in MEMORY_FRACTION of the
device's memory, sized from XLA's memory analysis of one compiled client step at the widest
trained width (`costs.step_costs`); a tier that fits whole is vmapped whole. `client_chunk`
"auto" sizes the chunk the same way under "map" set by hand. Not yet measured
on a GPU (no device was lent so far): the fraction leaves room for the server state, data and
the tuning loops.
"""

from collections.abc import Callable

import jax

MEMORY_FRACTION = 0.5


def device_memory_bytes(device: jax.Device | None = None) -> int | None:
    """The memory limit XLA reports for `device` (default: this process's first), None if it reports none (CPU)."""
    stats = (device or jax.local_devices()[0]).memory_stats()
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def clients_that_fit(per_client_bytes: int, memory_bytes: int, capacity: int, fraction: float = MEMORY_FRACTION) -> int:
    """How many clients to train side by side: as many of `capacity` as fit in `fraction` of
    the memory at `per_client_bytes` each, at least 1."""
    return max(1, min(capacity, int(fraction * memory_bytes) // max(int(per_client_bytes), 1)))


def resolve_client_parallelism(
    parallelism: str,
    chunk: int | str,
    backend: str,
    capacity: int,
    per_client_bytes: Callable[[], int],
    memory_bytes: int | None,
) -> tuple[str, int]:
    """("map" | "vmap", chunk) for a requested `parallelism` and `chunk`; "auto" picks per backend.

    "auto" parallelism: "map" on CPU (or where the memory is unknown); on an accelerator
    "vmap" when the whole tier fits, else "map". "auto" chunk: 1 on CPU, else the clients that
    fit (`clients_that_fit`). Values set by hand are used as given.

    Args:
      capacity: the largest tier's client slots (per device).
      per_client_bytes: () -> peak bytes of one client's training step (compiled only when
        needed: an accelerator with an "auto" choice).
      memory_bytes: the device's memory (`device_memory_bytes`), None if unknown.
    """
    sized = not (backend == "cpu" or memory_bytes is None)
    needed = parallelism == "auto" or (parallelism == "map" and chunk == "auto")  # an explicit vmap ignores the chunk
    fit = clients_that_fit(per_client_bytes(), memory_bytes, capacity) if sized and needed else 1
    if parallelism == "auto":
        parallelism = "vmap" if sized and fit >= capacity else "map"
    if parallelism == "vmap":
        return "vmap", 1  # the chunk is unused
    return "map", fit if chunk == "auto" else int(chunk)


__all__ = ["MEMORY_FRACTION", "clients_that_fit", "device_memory_bytes", "resolve_client_parallelism"]
