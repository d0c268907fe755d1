"""Server-side tuning: optax over `lax.scan` of epochs x batches of device-resident data.

One `tune` serves every learned step (pre-training, compression filters, dilation filters,
aggregation weights): it minimises a masked batch loss over `trainable`, evaluates a held-out
slice of the server tuning set after every epoch and returns the best epoch's parameters
(epoch 0, the warm start, included). Repeated tuning on a small server set overfits, so
this selection matters; it never looks at a test set.
"""

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from fedconv_jax.core.data import IndexSet
from fedconv_jax.core.types import Params, PRNGKey
from fedconv_jax.core.validation import check_bool, check_int

# logits_fn(trainable, images) -> logits; regularizer(trainable) -> scalar added to the loss
LogitsFn = Callable[[Params, jax.Array], jax.Array]
Regularizer = Callable[[Params], jax.Array]


@dataclasses.dataclass(frozen=True)
class TuningConfig:
    """Static settings of one tuning loop (the learning rates are traced: `tune`'s `lr`).

    Attributes:
      epochs: passes over the tuning set (0 disables the loop).
      batch_size: examples per step.
      cosine_t_max: T_max of Eq. 2; 0 keeps the learning rate constant (reference code).
      select_best: return the epoch with the lowest held-out loss instead of the last one.
      remat: rematerialise each epoch in reverse mode (`jax.checkpoint`): a gradient through
        the loop keeps one carry per epoch, not one per step; the values are unchanged.
    """

    epochs: int
    batch_size: int = 32
    cosine_t_max: int = 0
    select_best: bool = True
    remat: bool = False

    def __post_init__(self):
        check_int("epochs", self.epochs, minimum=0)
        check_int("batch_size", self.batch_size, maximum=65536)
        check_int("cosine_t_max", self.cosine_t_max, minimum=0)
        check_bool("select_best", self.select_best)
        check_bool("remat", self.remat)


class TuneResult(NamedTuple):
    params: Params
    opt_state: optax.OptState
    holdout_loss: jax.Array
    holdout_accuracy: jax.Array
    best_epoch: jax.Array  # 0 = the starting point was kept
    holdout_curve: jax.Array  # (epochs + 1,) held-out accuracy after 0, 1, ... epochs


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean cross-entropy over the masked examples. `labels` are class indices (B,) or
    target distributions (B, classes): the soft form is KL(target || softmax(logits)) plus
    the target's entropy, a constant (distillation)."""
    if labels.ndim == logits.ndim:
        ce = optax.softmax_cross_entropy(logits, labels)
    else:
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(jnp.where(mask, ce, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


# Adam's sqrt(nu) has an infinite derivative where nu = 0 (a parameter whose gradient is 0:
# padding, a dead unit, an all-padding batch's discarded step), which turns every gradient
# through a round into NaN; inside the root, 1e-16 changes no float32 update whose
# |gradient| is above 1e-8 (optax's eps_root, meant for meta-gradients).
ADAM_EPS_ROOT = 1e-16


def adam(learning_rate) -> optax.GradientTransformation:
    """Adam, differentiable through its own updates (ADAM_EPS_ROOT), on one flat vector.

    Flattened (`optax.flatten`): Adam runs on one vector of every parameter, so its update
    is a few ops whatever the tensor count. Per leaf, ResNet18's filter sets (444 leaves)
    made the optimizer the largest part of the round program.
    """
    return optax.flatten(optax.adam(learning_rate, eps_root=ADAM_EPS_ROOT))


def make_optimizer() -> optax.GradientTransformation:
    """`adam` whose learning rate `tune` sets per epoch (Eq. 2) in the optimizer state."""
    return optax.flatten(optax.inject_hyperparams(optax.adam)(learning_rate=0.0, eps_root=ADAM_EPS_ROOT))


def epoch_learning_rate(
    config: TuningConfig, epoch: jax.Array, lr: ArrayLike, lr_min: ArrayLike = 0.0
) -> jax.Array:
    """Eq. 2: lr_min + (lr - lr_min)(1 + cos(pi e / T_max)) / 2, e the 0-based epoch."""
    lr = jnp.asarray(lr)
    if config.cosine_t_max <= 0:
        return lr
    cos = jnp.cos(jnp.pi * epoch / config.cosine_t_max)
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + cos)


def shuffled_batches(key: PRNGKey, data: IndexSet, batch_size: int) -> IndexSet:
    """A random order with the valid entries first, cut into (n_batches, batch_size)."""
    n = data.idx.shape[0]
    order = jnp.argsort(jnp.where(data.mask, jax.random.uniform(key, (n,)), 2.0))
    n_batches = -(-n // batch_size)
    pad = n_batches * batch_size - n
    idx = jnp.pad(data.idx[order], (0, pad)).reshape(n_batches, batch_size)
    mask = jnp.pad(data.mask[order], (0, pad)).reshape(n_batches, batch_size)
    return IndexSet(idx, mask)


def evaluate(
    logits_fn: Callable[[jax.Array], jax.Array],
    images: jax.Array,
    labels: jax.Array,
    data: IndexSet,
    chunk: int = 1024,
) -> tuple[jax.Array, jax.Array]:
    """(accuracy, mean cross-entropy) of `logits_fn` over the masked examples, in chunks."""
    n = data.idx.shape[0]
    chunk = max(1, min(chunk, n))
    pad = -n % chunk
    idx = jnp.pad(data.idx, (0, pad)).reshape(-1, chunk)
    mask = jnp.pad(data.mask, (0, pad)).reshape(-1, chunk)

    def one_chunk(args):
        i, m = args
        logits = logits_fn(images[i])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels[i])
        hits = jnp.argmax(logits, -1) == labels[i]
        return jnp.sum(jnp.where(m, hits, False)), jnp.sum(jnp.where(m, ce, 0.0))

    hits, ce = jax.lax.map(one_chunk, (idx, mask))
    count = jnp.maximum(jnp.sum(data.mask), 1)
    return jnp.sum(hits) / count, jnp.sum(ce) / count


def tune(
    logits_fn: LogitsFn,
    params: Params,
    opt_state: optax.OptState,
    images: jax.Array,
    labels: jax.Array,
    train: IndexSet,
    holdout: IndexSet,
    key: PRNGKey,
    config: TuningConfig,
    *,
    lr: ArrayLike,
    lr_min: ArrayLike = 0.0,
    regularizer: Regularizer | None = None,
) -> TuneResult:
    """Minimises masked cross-entropy (+ regularizer) over `params` on `train`.

    `lr` (Eq. 2's lr_max) and `lr_min` may be traced, so a new value reuses the compiled
    program and can be differentiated. Selection uses the held-out cross-entropy alone: it
    is the quantity the step exists for.
    """
    optimizer = make_optimizer()

    def holdout_metrics(p):
        return evaluate(lambda x: logits_fn(p, x), images, labels, holdout)

    def loss(p, i, m):
        value = masked_cross_entropy(logits_fn(p, images[i]), labels[i], m)
        return value if regularizer is None else value + regularizer(p)

    def step(carry, batch):
        p, s = carry
        i, m = batch
        grads = jax.grad(loss)(p, i, m)
        updates, new_s = optimizer.update(grads, s, p)
        new_p = optax.apply_updates(p, updates)
        keep = jnp.any(m)  # an all-padding batch must not move Adam's moments or the params
        return jax.tree.map(lambda a, b: jnp.where(keep, a, b), (new_p, new_s), (p, s)), None

    def epoch(carry, e):
        # Iteration e scores the parameters after e epochs, then trains epoch e + 1 (none
        # after the last): one copy of the held-out evaluation in the program, not two.
        p, s, best = carry
        acc, loss = holdout_metrics(p)
        better = (e == 0) | (loss < best[2]) | (not config.select_best)
        best = jax.tree.map(lambda a, b: jnp.where(better, a, b), (p, s, loss, acc, e), best)

        def train_epoch(p, s):
            epoch_lr = epoch_learning_rate(config, e, lr, lr_min).astype(s.hyperparams["learning_rate"].dtype)
            s = s._replace(hyperparams={**s.hyperparams, "learning_rate": epoch_lr})
            batches = shuffled_batches(keys[jnp.minimum(e, config.epochs - 1)], train, config.batch_size)
            (p, s), _ = jax.lax.scan(step, (p, s), batches)
            return p, s

        p, s = jax.lax.cond(e < config.epochs, train_epoch, lambda p, s: (p, s), p, s)
        return (p, s, best), acc

    if config.epochs == 0:
        acc, loss = holdout_metrics(params)
        return TuneResult(params, opt_state, loss, acc, jnp.int32(0), acc[None])
    keys = jax.random.split(key, config.epochs)
    acc0, loss0 = jax.eval_shape(holdout_metrics, params)  # float32, or float64 under jax.enable_x64
    best0 = (params, opt_state, jnp.full((), jnp.inf, loss0.dtype), jnp.zeros((), acc0.dtype), jnp.int32(0))
    epoch = jax.checkpoint(epoch) if config.remat else epoch
    (_, _, best), curve = jax.lax.scan(epoch, (params, opt_state, best0), jnp.arange(config.epochs + 1, dtype=jnp.int32))
    return TuneResult(*best, curve)


def refresh_batch_stats(
    apply_fn: Callable,
    variables: dict,
    images: jax.Array,
    data: IndexSet,
    batch_size: int,
) -> dict:
    """Re-estimates BatchNorm running statistics with one train-mode pass over `data`.

    Used after dilation and aggregation, where averaged or padded statistics no longer
    describe the new parameters (SPEC §3: recompute on D). Parameters are not changed.
    """
    if not variables["batch_stats"]:
        return variables
    batches = IndexSet(*(x.reshape(-1, batch_size) for x in _pad_to(data, batch_size)))

    def step(stats, batch):
        idx, mask = batch
        _, new_stats = apply_fn({"params": variables["params"], "batch_stats": stats}, images[idx], True)
        return jax.tree.map(lambda a, b: jnp.where(jnp.any(mask), a, b), new_stats, stats), None

    stats, _ = jax.lax.scan(step, variables["batch_stats"], batches)
    return {"params": variables["params"], "batch_stats": stats}


def _pad_to(data: IndexSet, multiple: int) -> IndexSet:
    pad = -data.idx.shape[0] % multiple
    return IndexSet(jnp.pad(data.idx, (0, pad)), jnp.pad(data.mask, (0, pad)))
