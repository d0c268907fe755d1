"""Local training of ONE client: a plain small model, no knowledge of compression."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from fedconv_jax.core.data import IndexSet
from fedconv_jax.core.tuning import adam, masked_cross_entropy, shuffled_batches
from fedconv_jax.core.types import Params, PRNGKey, Variables

# apply_fn(variables, images, train, *, rng) -> (logits, batch_stats); rng feeds dropout
ApplyFn = Callable[..., tuple[jax.Array, dict]]


def local_train(
    apply_fn: ApplyFn,
    variables: Variables,
    images: jax.Array,
    labels: jax.Array,
    data: IndexSet,
    key: PRNGKey,
    *,
    epochs: int,
    batch_size: int = 32,
    lr: float = 1e-3,
    model_rng: bool = False,
    remat: bool = False,
    keep: Params | None = None,
) -> Variables:
    """`epochs` of Adam over the client's padded index list; returns the trained variables.

    `labels` are class indices (N,) or target distributions (N, classes) (distillation,
    FedMD). `keep`, shaped like the parameters (1 kept, 0 pruned), trains a sparse
    sub-network: the forward pass sees `params * keep` and the result is masked, so pruned
    entries are 0 and stay so (LotteryFL's masks).

    Clients of different sizes share one compiled shape: every client runs
    ceil(capacity / batch_size) steps per epoch, and steps whose batch is all padding leave
    parameters, BatchNorm statistics and Adam's moments untouched. A fresh Adam per round,
    as in the reference code. With `model_rng` (a model with dropout), each step's model rng
    is drawn from the epoch's key apart from its batch order; without, none is drawn (the
    draws cost compile time even when unused). `remat` rematerialises each epoch in
    reverse mode (one carry kept per epoch, not one per step).
    """
    optimizer = adam(lr)

    def train_step(carry, idx, mask, rng):
        params, stats, opt_state = carry

        def loss(p):
            variables = {"params": p if keep is None else _masked(p, keep), "batch_stats": stats}
            if model_rng:
                logits, new_stats = apply_fn(variables, images[idx], True, rng=rng)
            else:
                logits, new_stats = apply_fn(variables, images[idx], True)
            return masked_cross_entropy(logits, labels[idx], mask), new_stats

        grads, new_stats = jax.grad(loss, has_aux=True)(params)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, new_opt_state

    def step(carry, batch):
        (idx, mask), rng = batch
        # A client smaller than its tier's capacity ends every epoch with all-padding
        # batches; `cond` skips their work when clients run one by one (`lax.map`); under
        # `vmap` it becomes a select, computing both branches as before.
        carry = jax.lax.cond(jnp.any(mask), train_step, lambda c, *_: c, carry, idx, mask, rng)
        return carry, None

    def epoch(carry, k):
        batches = shuffled_batches(k, data, batch_size)
        steps = batches.idx.shape[0]
        rngs = jax.random.split(jax.random.fold_in(k, 1), steps) if model_rng else None
        carry, _ = jax.lax.scan(step, carry, (batches, rngs))
        return carry, None

    epoch = jax.checkpoint(epoch) if remat else epoch
    carry = (variables["params"], variables["batch_stats"], optimizer.init(variables["params"]))
    (params, stats, _), _ = jax.lax.scan(epoch, carry, jax.random.split(key, epochs))
    return {"params": params if keep is None else _masked(params, keep), "batch_stats": stats}


def _masked(params: Params, keep: Params) -> Params:
    return jax.tree.map(lambda p, k: p * k.astype(p.dtype), params, keep)


def map_clients(parallelism: str, chunk: int, fn: Callable, *xs, remat: bool = False):
    """Applies a per-client `fn` over the leading client axis of `xs`.

    "vmap" runs a tier's clients side by side; "map" runs them as `lax.map` in chunks of
    `chunk` (less memory). Shared by FedConv's round and the baselines. `remat`
    rematerialises each client's function in reverse mode.
    """
    fn = jax.checkpoint(fn) if remat else fn
    if parallelism == "vmap":
        return jax.vmap(fn)(*xs)
    # batch_size=1 would still vmap every client over an axis of one, which turns the
    # padded-batch `cond` into a select and batches every op; a plain map does neither.
    return jax.lax.map(lambda args: fn(*args), xs, batch_size=chunk if chunk > 1 else None)
