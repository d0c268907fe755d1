"""Learned weighted aggregation (SPEC §4, Eq. 4/5) and plain sample-weighted averaging.

Dilated client models come stacked along a leading client axis. With learnable weights v,
    W_l = sum_j v_(j,l) * n_j * w_(j,l) / sum_j n_j                          (Eq. 4)
over the clients present in the round (mask). v = 1 everywhere is exactly sample-weighted
averaging, which is how the weights are initialised (the reference code's N(0, 1) init
starts from a random model).

Eq. 4 as written lets sum_j v_j n_j / sum_j n_j drift away from 1; since v is carried over
between rounds, that factor compounds and the global weights grow or shrink every round
(measured on digits: accuracy peaks, then falls steadily). `normalize=True` uses
    W_l = sum_j softmax_j(log n_j + u_(j,l)) w_(j,l),  v = exp(u),
a convex combination that also equals sample-weighted averaging at u = 0.

Scope "holders": each element's update (dilation_target="update"; the dilated model itself
for "model") is averaged over
the clients whose sub-model holds it, W = W_G + sum_j c_j (D_j - W_G) / sum_j c_j h_j, with
h_j the 0/1 coverage of client j's leading block and c_j the coefficients above. With
identity filters and equal weights this is HeteroFL's average over holders; over all clients
(scope "all") an element only SR-1 clients hold moves by their sample share of the update.
"""

import jax
import jax.numpy as jnp

from fedconv_jax.core.averaging import sample_factors
from fedconv_jax.core.types import Params
from fedconv_jax.core.validation import check_choice

GRANULARITIES = ("layer", "element")
SCOPES = ("all", "holders")


def init_aggregation_weights(
    params: Params, num_clients: int, granularity: str, normalize: bool = True
) -> Params:
    """v = 1 (u = 0 when normalized): one scalar per (client, tensor) for "layer", one per
    element for "element"."""
    check_choice("aggregation_granularity", granularity, GRANULARITIES)
    shape = (lambda x: (num_clients,)) if granularity == "layer" else (lambda x: (num_clients, *x.shape))
    fill = 0.0 if normalize else 1.0
    return jax.tree.map(lambda x: jnp.full(shape(x), fill, jnp.float32), params)


def aggregate(
    stacked: Params,
    weights: Params,
    num_samples: jax.Array,
    mask: jax.Array,
    normalize: bool = True,
) -> Params:
    """Eq. 4. stacked, weights: leading client axis; num_samples, mask: (clients,)."""
    factors = sample_factors(num_samples, mask)

    def one_tensor(x, v):
        f = factors.reshape((-1,) + (1,) * (v.ndim - 1))
        if normalize:
            logits = jnp.where(f > 0, jnp.log(jnp.maximum(f, 1e-30)) + v, -jnp.inf)
            coeff = jax.nn.softmax(logits, axis=0)
        else:
            coeff = v * f
        coeff = coeff.reshape(coeff.shape + (1,) * (x.ndim - coeff.ndim))
        return jnp.sum(coeff * x, axis=0)

    return jax.tree.map(one_tensor, stacked, weights)


def over_holders(combine, updates: Params, previous: Params, coverage: Params) -> Params:
    """Scope "holders": previous + combine(updates) / combine(coverage), per element.

    combine: a linear map from a client-stacked tree to one tree with fixed coefficients
    (`aggregate` at given weights, or `weighted_average`); updates: the stacked uploads minus
    `previous` (computed once by the caller: the tuning loop calls this every step);
    coverage: per tensor, (clients, *shape) 0/1, where each client's upload holds the
    element. Elements no client holds keep combine(updates) as it is (0 with identity
    filters): the previous value plus any spill.
    """
    moved, share = combine(updates), combine(coverage)
    return jax.tree.map(lambda g, m, h: g + m / jnp.where(h > 0, h, 1.0), previous, moved, share)


def kld_term(previous_global: Params, aggregated: Params) -> jax.Array:
    """sum_l KL(softmax(W_G,l) || softmax(W_l(v))) over flattened tensors.

    The paper's KLD_j compares the previous global model with each dilated model, which does
    not depend on v and so gives it no gradient (SPEC §4). Comparing it with the aggregate
    W(v) keeps the paper's intent (do not drift far from the previous global model) and does
    reach v. Softmax turns each tensor into a distribution, which the KLD needs.
    """

    def one_tensor(p, q):
        log_p = jax.nn.log_softmax(p.reshape(-1))
        log_q = jax.nn.log_softmax(q.reshape(-1))
        return jnp.sum(jnp.exp(log_p) * (log_p - log_q))

    return sum(jax.tree.leaves(jax.tree.map(one_tensor, previous_global, aggregated)))
