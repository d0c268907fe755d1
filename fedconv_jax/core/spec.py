"""The static part of a round that every algorithm shares (hashable: a change is a new program)."""

import dataclasses

from fedconv_jax.core.tuning import TuningConfig
from fedconv_jax.models import ModelSpec

CLIENT_PARALLELISM = ("vmap", "map")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RoundSpec:
    """What changes shapes or control flow of any algorithm's round.

    Numeric hyper-parameters (learning rates, weights, scales) and the participation
    settings (`clients_per_round`, `dropout_rate`) are not here: they are the round's traced
    `hparams` argument, so a new value reuses the compiled program.
    Algorithms with settings of their own extend this class (FedConv's `FedConvSpec`).

    Attributes:
      model: the model family; tier models are `model.init(key, ratio)`.
      tier_ratios: the SR of each tier, e.g. (1.0, 0.75, 0.5).
      tier_capacity: client slots per tier.
      pretrain: the loop that pre-trains the global model on the server set D.
      local_epochs, local_batch_size: client training (Adam).
      client_parallelism: "vmap" or "map" (`lax.map` in chunks of `client_chunk`).
      devices: devices the client axis is sharded over (sharding.py); every tier capacity
        must be a multiple of it.
      eval_chunk: examples per evaluation chunk (bounds activation memory).
      remat: rematerialise in reverse mode (`jax.checkpoint`) every tuning and local epoch
        and every client's function: a gradient through rounds keeps one carry per
        checkpoint instead of every step's activations. Values are unchanged.
    """

    model: ModelSpec
    tier_ratios: tuple[float, ...]
    tier_capacity: tuple[int, ...]
    pretrain: TuningConfig = TuningConfig(epochs=5)
    local_epochs: int = 5
    local_batch_size: int = 32
    client_parallelism: str = "map"
    client_chunk: int = 1
    devices: int = 1
    eval_chunk: int = 1024
    remat: bool = False

    @property
    def num_clients(self) -> int:
        return sum(self.tier_capacity)


def spec_fields(spec: RoundSpec) -> dict:
    """The spec's fields as keyword arguments (shallow: nested dataclasses stay themselves)."""
    return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}


__all__ = ["CLIENT_PARALLELISM", "RoundSpec", "spec_fields"]
