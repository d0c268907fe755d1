"""Host-side metrics: per-round rows, digests, compile counting, metrics.jsonl."""

import contextlib
import hashlib
import json
from pathlib import Path

import jax
import numpy as np

from fedconv_jax.distributed import host_copy

_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """Counts XLA backend compilations while `counting()` is active (jax.monitoring events)."""

    def __init__(self):
        self.count = 0
        self.seconds = 0.0
        self._active = False
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **_):
        if self._active and event == _BACKEND_COMPILE_EVENT:
            self.count += 1
            self.seconds += duration

    @contextlib.contextmanager
    def counting(self):
        self._active = True
        try:
            yield self
        finally:
            self._active = False


def params_digest(params) -> str:
    """sha256 of a parameter tree's bytes, in tree-flatten order: what an algorithm's
    `digest(state)` returns (the global parameters; the clients' own models too where an
    algorithm keeps them: standalone has no global model)."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(host_copy(params)):  # gathered where a leaf spans processes
        digest.update(np.asarray(leaf).tobytes())
    return digest.hexdigest()


def _mean_over_clients(accuracy: np.ndarray, counts: np.ndarray, mask: np.ndarray) -> float | None:
    keep = (counts > 0) & mask
    return float(accuracy[keep].mean()) if keep.any() else None


def round_row(
    *,
    round_index: int,
    algorithm: str,
    device_metrics: dict,
    tier_ratios: tuple[float, ...],
    client_masks: tuple[np.ndarray, ...],
    seconds: float,
    phase_seconds: dict[str, float] | None,
    compiles: int,
    digest: str,
) -> dict:
    """One metrics.jsonl row. client_accuracy averages clients that have test samples."""
    m = jax.device_get(device_metrics)
    per_tier = [np.asarray(a) for a in m.pop("client_accuracy")]
    counts = [np.asarray(c) for c in m.pop("client_test_count")]
    masks = [np.asarray(x) for x in client_masks]
    participating = m.pop("participating", None)  # dropped / excluded clients do not count
    if participating is not None:
        masks = [k & np.asarray(p) for k, p in zip(masks, participating)]
    dropped, excluded = (int(m.pop(k, 0)) for k in ("dropped_clients", "excluded_clients"))
    tier_accuracy = {
        f"{r:g}": _mean_over_clients(a, c, k) for r, a, c, k in zip(tier_ratios, per_tier, counts, masks)
    }
    overall = _mean_over_clients(np.concatenate(per_tier), np.concatenate(counts), np.concatenate(masks))
    details = {}
    for key, value in m.items():
        if key in ("global_accuracy", "global_loss"):
            continue
        value = np.asarray(value)
        details[key] = value.item() if value.ndim == 0 else value.tolist()
    return {
        "round": round_index,
        "algorithm": algorithm,
        "global_accuracy": float(m["global_accuracy"]),
        "global_loss": float(m["global_loss"]),
        "client_accuracy": overall,
        "tier_accuracy": tier_accuracy,
        "client_accuracy_per_client": [float(x) for x in np.concatenate(per_tier)],
        "seconds": seconds,
        "phase_seconds": phase_seconds,
        "compiles": compiles,
        "dropped_clients": dropped,
        "excluded_clients": excluded,
        "participating": [bool(x) for x in np.concatenate(masks)],
        "global_params_digest": digest,
        "details": details,
    }


class MetricsWriter:
    """Appends one JSON object per line and flushes it, so a crash loses at most one row."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = self.path.open("a")

    def write(self, row: dict) -> None:
        self._file.write(json.dumps(row, default=_jsonable) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


__all__ = ["CompileCounter", "MetricsWriter", "params_digest", "round_row"]
