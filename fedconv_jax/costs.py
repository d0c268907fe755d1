"""Per-client costs of one round (the paper's Tables 2-3): bytes, training FLOPs, memory.

Computed once on the host at set-up, per tier, from the model each tier's clients train:
  - bytes_down / bytes_up: exact bytes of the variables sent to / from one client per round
    (parameters and BatchNorm statistics, at their dtypes); index vectors and the sample
    count are not counted (a few bytes). An algorithm that sends something else says what
    (`FederatedAlgorithm.traffic`: FedMD's class scores, LotteryFL's sparse models);
  - flops_per_step: XLA's cost analysis of one client training step (`local_train` for one
    epoch of one batch: forward, backward, Adam), compiled for the default backend;
  - train_flops: flops_per_step x the steps each client actually runs,
    local_epochs * ceil(n_j / batch_size) (a partial last batch is counted as a full one);
  - peak_memory_bytes: the compiled step's peak memory (its arguments hold one batch, not
    the data set).
"""

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedconv_jax.core.algorithm import FederatedAlgorithm
from fedconv_jax.core.client import local_train
from fedconv_jax.core.data import IndexSet
from fedconv_jax.core.spec import RoundSpec
from fedconv_jax.models import ModelSpec


def server_examples(data) -> int:
    """Examples in the server set D of a `RoundData` (both parts)."""
    return int(np.sum(np.asarray(data.server_train.mask)) + np.sum(np.asarray(data.server_holdout.mask)))


def variables_bytes(variables) -> int:
    """Exact bytes of a pytree of arrays (or ShapeDtypeStructs)."""
    return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(variables)))


def step_costs(cfg: RoundSpec, ratio: float) -> dict[str, float]:
    """FLOPs and peak memory of one compiled client training step at width `ratio`."""
    return step_costs_of(cfg.model, cfg.local_batch_size, ratio)


def step_costs_of(model: ModelSpec, batch: int, ratio: float) -> dict[str, float]:
    """`step_costs` before a spec exists (core/placement.py sizes client chunks with it)."""
    return dict(_step_costs(model, batch, float(ratio)))


@functools.lru_cache(maxsize=64)  # one compile per (model, batch, width) per process
def _step_costs(model: ModelSpec, batch: int, ratio: float) -> tuple[tuple[str, float], ...]:
    apply_fn = functools.partial(model.apply, ratio)
    one_batch = IndexSet(jnp.arange(batch, dtype=jnp.int32), jnp.ones(batch, bool))

    def one_step(variables, images, labels, key):
        return local_train(
            apply_fn, variables, images, labels, one_batch, key, epochs=1, batch_size=batch, model_rng=model.uses_dropout
        )

    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), ratio))
    images = jax.ShapeDtypeStruct((batch, *model.input_shape), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    compiled = jax.jit(one_step).lower(variables, images, labels, jax.random.key(0)).compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):  # older JAX: one dict per computation
        analysis = analysis[0]
    return (
        ("flops_per_step", float(analysis.get("flops", float("nan")))),
        ("peak_memory_bytes", int(compiled.memory_analysis().peak_memory_in_bytes)),
    )


def client_costs(
    algorithm: FederatedAlgorithm, num_samples: Sequence[np.ndarray], server_examples: int = 0
) -> dict[str, dict]:
    """Per tier (keyed by SR as in `tier_accuracy`): the costs of one client per round.

    What a client trains and sends is the algorithm's to say (`trained_ratio`,
    `sends_model`).

    Args:
      algorithm: the run's algorithm (its spec gives tiers, model and local training).
      num_samples: per tier, the training-set sizes of its client slots.
      server_examples: examples in the server set D (`traffic` of algorithms that send
        something computed on it).
    """
    cfg = algorithm.spec
    cache: dict[float, dict] = {}
    out = {}
    for ratio, n in zip(cfg.tier_ratios, num_samples):
        trained = algorithm.trained_ratio(ratio)
        if trained is None:
            out[f"{ratio:g}"] = {
                "trained_ratio": None, "bytes_down": 0, "bytes_up": 0, "flops_per_step": 0.0,
                "train_flops": [0.0] * len(n), "peak_memory_bytes": 0,
            }
            continue
        if trained not in cache:
            cache[trained] = step_costs(cfg, trained)
        step = cache[trained]
        sent = 0 if not algorithm.sends_model else variables_bytes(
            jax.eval_shape(lambda t=trained: cfg.model.init(jax.random.key(0), t))
        )
        down, up = (sent, sent) if algorithm.traffic is None else algorithm.traffic(ratio, server_examples)
        steps = [cfg.local_epochs * math.ceil(int(x) / cfg.local_batch_size) for x in np.asarray(n)]
        out[f"{ratio:g}"] = {
            "trained_ratio": trained,
            "bytes_down": down,
            "bytes_up": up,
            "flops_per_step": step["flops_per_step"],
            "train_flops": [s * step["flops_per_step"] for s in steps],
            "peak_memory_bytes": step["peak_memory_bytes"],
        }
    return out
