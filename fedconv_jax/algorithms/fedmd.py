"""FedMD (Li & Wang, 2019): heterogeneous clients that share class scores, never weights.

Every client keeps its own model (its tier's width, carried across rounds as standalone's
are). A round:
  1. communicate: each sampled client scores the public set (the server set D, both parts)
     with its model;
  2. aggregate: the server averages the sampled clients' scores (logits) into a consensus;
  3. digest: each client trains `digest_epochs` epochs on the public set towards the
     consensus (cross-entropy to softmax(consensus), i.e. the KL to it up to a constant);
  4. revisit: each client trains `local_epochs` on its own data (the shared skeleton), and
     is evaluated on its own test split.
Before round 1, each client trains `transfer_epochs` epochs on the public set's labels (the
paper's transfer-learning start; D is labelled here). There is no global model:
global_accuracy is NaN. A client sends and receives |D| x classes float32 scores per round
(`client_costs`); its `train_flops` count the revisit only: the digest adds
digest_epochs x ceil(|D| / batch) steps of the same cost, and scoring D one forward pass.

Choices of ours (the paper leaves them open or uses another): the digest loss (the paper
regresses scores with L1; cross-entropy to the consensus distribution is its common form),
temperature 1, the digest at `local_lr` with a fresh Adam, and the public set = D.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from fedconv_jax.algorithms.alone import (
    init_standalone_state,
    keep_own_models,
    no_global_model,
)
from fedconv_jax.algorithms.common import BaselineState, baseline, server_set
from fedconv_jax.core.algorithm import FederatedAlgorithm, HParams, register
from fedconv_jax.core.client import local_train
from fedconv_jax.core.data import RoundData
from fedconv_jax.core.sharding import map_clients_over_devices
from fedconv_jax.core.skeleton import RoundSteps, round_key, tier_value
from fedconv_jax.core.spec import RoundSpec
from fedconv_jax.core.streams import slot_keys
from fedconv_jax.core.validation import check_int

SCORE_BYTES = 4  # float32 class scores


@dataclasses.dataclass(frozen=True)
class FedMDConfig:
    """FedMD's own static settings: the `config.fedmd` section.

    Attributes:
      digest_epochs: epochs of distillation on the public set per round.
      transfer_epochs: epochs on the public set's labels before round 1 (0: none).
    """

    digest_epochs: int = 1
    transfer_epochs: int = 1

    def __post_init__(self):
        check_int("digest_epochs", self.digest_epochs, minimum=1)
        check_int("transfer_epochs", self.transfer_epochs, minimum=0)


def _each_client(spec: RoundSpec, fn, shared, *per_client):
    """fn(shared, *one_client) over a tier's slots, laid out as client training is."""
    return map_clients_over_devices(spec.devices, spec.client_parallelism, spec.client_chunk, fn, shared, *per_client)


def _train_on_public(spec, ratio, models, targets, data, key, tier, epochs, lr):
    """Each slot's model trained `epochs` on the public set towards `targets` (per example
    of the data set: class indices or distributions)."""
    apply_fn = functools.partial(spec.model.apply, ratio)
    public = server_set(data)

    def one(shared, variables, k):
        images, targets, lr = shared
        return local_train(
            apply_fn, variables, images, targets, public, k, epochs=epochs, batch_size=spec.local_batch_size,
            lr=lr, model_rng=spec.model.uses_dropout, remat=spec.remat,
        )

    keys = slot_keys(key, tier, spec.tier_capacity[tier])
    return _each_client(spec, one, (data.images, targets, lr), models, keys)


def public_scores(spec: RoundSpec, state: BaselineState, data: RoundData) -> tuple[jax.Array, ...]:
    """Per tier, (capacity, |D|, classes): each client's logits on the public set, computed
    `eval_chunk` examples at a time."""
    idx = server_set(data).idx
    n, chunk = idx.shape[0], max(1, min(spec.eval_chunk, idx.shape[0]))
    chunks = jnp.pad(idx, (0, -n % chunk)).reshape(-1, chunk)
    scores = []
    for t, ratio in enumerate(spec.tier_ratios):
        apply_fn = functools.partial(spec.model.apply, ratio)

        def one(shared, variables, apply_fn=apply_fn):
            images, chunks = shared
            logits = jax.lax.map(lambda i: apply_fn(variables, images[i])[0], chunks)
            return logits.reshape(-1, logits.shape[-1])[:n]

        scores.append(_each_client(spec, one, (data.images, chunks), state.client_vars[t]))
    return tuple(scores)


def consensus(scores: tuple[jax.Array, ...], client_mask: tuple[jax.Array, ...]) -> jax.Array:
    """(|D|, classes): the mean of the sampled clients' scores (zeros if none is sampled)."""
    total = sum(jnp.tensordot(m.astype(s.dtype), s, axes=1) for s, m in zip(scores, client_mask))
    count = sum(jnp.sum(m) for m in client_mask)
    return total / jnp.maximum(count, 1).astype(total.dtype)


def fedmd_steps(spec: RoundSpec, settings: FedMDConfig) -> RoundSteps:
    def transfer(state: BaselineState, data: RoundData, hparams: HParams) -> BaselineState:
        """Round 1 only: every client trains on the public set's labels."""

        def run(_):
            key = round_key(state, "transfer")
            return tuple(
                _train_on_public(spec, ratio, state.client_vars[t], data.labels, data, key, t,
                                 settings.transfer_epochs, tier_value(hparams["local_lr"], t))
                for t, ratio in enumerate(spec.tier_ratios)
            )

        models = jax.lax.cond(state.round == 0, run, lambda _: state.client_vars, None)
        return state.replace(client_vars=models)

    def communicate_and_digest(state: BaselineState, data: RoundData, hparams: HParams):
        """The consensus of the sampled clients' scores; every slot digests it (absent clients'
        results are dropped by `keep_own_models`)."""
        agreed = consensus(public_scores(spec, state, data), data.client_mask)
        public = server_set(data)
        targets = jnp.zeros((data.labels.shape[0], agreed.shape[-1]), agreed.dtype)
        targets = targets.at[public.idx].set(jax.nn.softmax(agreed, axis=-1))  # padding rows: never read
        key = round_key(state, "digest")
        digested = tuple(
            _train_on_public(spec, ratio, state.client_vars[t], targets, data, key, t, settings.digest_epochs,
                             tier_value(hparams["local_lr"], t))
            for t, ratio in enumerate(spec.tier_ratios)
        )
        return state, digested, {}

    return RoundSteps(
        send=communicate_and_digest,
        server=(("keep", keep_own_models),),
        evaluate=no_global_model,
        trained_ratio=lambda s: s,
        prepare=transfer if settings.transfer_epochs else None,
        send_name="digest",
        per_client_start=True,
    )


DEFAULTS = FedMDConfig()


@register("fedmd", section=DEFAULTS)
def fedmd(spec: RoundSpec, settings: FedMDConfig = DEFAULTS) -> FederatedAlgorithm:
    """FedMD over `spec` with its own `settings` (the config's `fedmd` section)."""
    return baseline(
        "fedmd", spec, functools.partial(init_standalone_state, spec), fedmd_steps(spec, settings),
        per_client_fields=("client_vars",), sends_model=False,
        # scores of the public set travel both ways; no parameters do
        traffic=lambda ratio, public: (public * spec.model.num_classes * SCORE_BYTES,) * 2,
    )
