"""Exact gradients through whole federated rounds.

A round of any registered algorithm is one pure function (state, data, hparams) -> (state,
metrics), so K rounds are a `lax.scan` and `jax.grad` of anything they compute is exact:
with respect to the traced hyper-parameters (`hparams`), the initial global model
(`state.global_vars`) or an algorithm's learned server state (FedConv's compression and
dilation filters and aggregation weights). States hold integer round counters and random
keys: differentiate with `allow_int=True` (their cotangents are `float0`).

    rounds = unroll(exp.algorithm, 2)
    loss = lambda hparams: holdout_loss(exp.algorithm, rounds(exp.state, exp.data, hparams)[0], exp.data)
    jax.grad(loss)(exp.hparams)["local_lr"]

Reverse mode keeps every step's activations unless the spec's `remat` is set (config field
`remat`): then every tuning and local epoch, every client and every round is rematerialised
(`jax.checkpoint`), and memory follows the number of checkpoints.
"""

from collections.abc import Callable

import jax

from fedconv_jax.core.algorithm import FederatedAlgorithm, HParams, State
from fedconv_jax.core.data import RoundData
from fedconv_jax.core.tuning import evaluate
from fedconv_jax.core.types import Metrics


def unroll(algorithm: FederatedAlgorithm, rounds: int) -> Callable[[State, RoundData, HParams], tuple[State, Metrics]]:
    """`rounds` rounds of `algorithm` as one function: (state, data, hparams) -> (state after
    the last round, metrics stacked over rounds). One round's program, scanned."""
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ValueError(f"rounds={rounds!r} is not allowed: an int >= 1")
    one_round = jax.checkpoint(algorithm.round) if algorithm.spec.remat else algorithm.round

    def run(state: State, data: RoundData, hparams: HParams) -> tuple[State, Metrics]:
        return jax.lax.scan(lambda s, _: one_round(s, data, hparams), state, length=rounds)

    return run


def holdout_loss(algorithm: FederatedAlgorithm, state: State, data: RoundData) -> jax.Array:
    """Cross-entropy of the state's global model on the held-out slice of the server set D:
    an objective for learning what the round is built from, which no tuning loop steps on
    and which is not the test set (`metrics["global_loss"]`)."""
    if not hasattr(state, "global_vars"):
        raise ValueError(f"algorithm {algorithm.name!r} keeps no global model to score")
    spec = algorithm.spec
    ratio = algorithm.trained_ratio(1.0) or 1.0  # the global model's width (fedavg_small: the smallest SR)
    _, loss = evaluate(
        lambda x: spec.model.apply(ratio, state.global_vars, x)[0], data.images, data.labels, data.server_holdout,
        spec.eval_chunk,
    )
    return loss


__all__ = ["holdout_loss", "unroll"]
