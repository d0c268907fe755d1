"""TailorFL (Deng et al., 2022): each client keeps the filters most important to its own
data; the server aggregates each filter over the clients that hold it (`channel_sets`).

After each round a participant scores every channel of every width unit by its first-order
Taylor importance on its own training data, (sum over the channel's parameters of
w * dL/dw)^2 (the loss change if the channel were removed), computed with one forward and
backward pass of the full-width model in the client's view (its trained channels where it
holds them, the global model it was sent from elsewhere) on the first `eval_chunk` examples
of its training list; it keeps the k_u = floor(s * C_u) most important.

Choices of ours: TailorFL also adapts the sub-model size per client and round; here the
size is fixed by the SR, and the importance pass (one full-width gradient per client and
round, not counted in `train_flops`) is the only full-width computation a client does.
"""

import functools

import jax

from fedconv_jax.algorithms.channel_sets import (
    channel_algorithm,
    channel_sums,
    personal_view,
)
from fedconv_jax.core.algorithm import FederatedAlgorithm, register
from fedconv_jax.core.spec import RoundSpec
from fedconv_jax.core.tuning import masked_cross_entropy


def taylor_scores(spec, rules, global_vars, upload, channels, images, labels, train_set):
    """(sum_c w * dL/dw)^2 per channel, on the client's first `eval_chunk` training examples."""
    view = personal_view(rules, global_vars, upload, channels)
    idx, mask = train_set.idx[: spec.eval_chunk], train_set.mask[: spec.eval_chunk]
    apply_fn = functools.partial(spec.model.apply, 1.0)

    def loss(params):
        logits, _ = apply_fn({"params": params, "batch_stats": global_vars["batch_stats"]}, images[idx])
        return masked_cross_entropy(logits, labels[idx], mask)

    grads = jax.grad(loss)(view)
    taylor = channel_sums(jax.tree.map(lambda w, g: w * g, view, grads), rules["params"], spec.model.unit_widths(1.0))
    return jax.tree.map(lambda t: t * t, taylor)


@register("tailorfl")
def tailorfl(spec: RoundSpec) -> FederatedAlgorithm:
    return channel_algorithm("tailorfl", spec, taylor_scores)
