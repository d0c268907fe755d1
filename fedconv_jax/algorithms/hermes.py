"""Hermes (Li et al., 2021): each client keeps a personal structured sub-network, chosen by
channel norm; the server averages only the overlapping parameters (`channel_sets`).

After each round a participant ranks every channel of every width unit by the L2 norm of
all its parameters (the conv filter producing it, its bias and BatchNorm scale/bias, and the
next layer's weights reading it) in its own view of the model: its trained channels where
it holds them, the global model it was sent from elsewhere; it keeps the k_u = floor(s * C_u)
largest. A channel its training shrank is thus swapped for a stronger one it did not hold.

Choices of ours: Hermes prunes a full model progressively with a group-lasso penalty; here a
client never trains more than its SR's width, the channels start as HeteroFL's, and the
selection is by norm in one step per round.
"""

import jax

from fedconv_jax.algorithms.channel_sets import (
    channel_algorithm,
    channel_sums,
    personal_view,
)
from fedconv_jax.core.algorithm import FederatedAlgorithm, register
from fedconv_jax.core.spec import RoundSpec


def norm_scores(spec, rules, global_vars, upload, channels, images, labels, train_set):
    """Squared L2 norm of every channel's parameters in the client's view."""
    del images, labels, train_set
    view = personal_view(rules, global_vars, upload, channels)
    return channel_sums(jax.tree.map(lambda x: x * x, view), rules["params"], spec.model.unit_widths(1.0))


@register("hermes")
def hermes(spec: RoundSpec) -> FederatedAlgorithm:
    return channel_algorithm("hermes", spec, norm_scores)
