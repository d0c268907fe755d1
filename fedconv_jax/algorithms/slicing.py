"""Channel slices of the global model (HeteroFL, FedRolex, Federated Dropout; SPEC §7).

A sub-model of ratio s is the global model restricted to k_u = floor(s * C_u) channels of
every width unit u (the tier model's own shapes, `model.init(key, s)`, exactly the
sub-models FedConv's clients train). HeteroFL's paper uses ceil(s * C); for the MNIST CNN's
widths (16, 32) at the paper's SRs (1, 0.75, 0.5, 0.25) both give the same widths.

Which channels a client keeps is one integer vector per unit, a traced input, so rolling
and random choices never recompile. Every variable axis is sliced as the model declares it
(models/axes.py): an axis of unit u takes u's kept channels; a flatten "u*r" the r entries
of each kept channel; a concatenation each segment's kept channels at its offset; an axis
declared None (taps, image channels, class outputs) is kept whole.
"""

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from fedconv_jax.core.types import Params, PRNGKey
from fedconv_jax.models import ModelSpec
from fedconv_jax.models.axes import is_leaf_axes

# Per leaf, one entry per axis: None (kept whole) or its segments (unit, repeat, offset).
AxisRule = tuple[tuple[str, int, int], ...] | None
Indices = Mapping[str, jax.Array]  # unit -> kept channel indices, (k_u,) or (clients, k_u)


def channel_rules(model: ModelSpec):
    """The per-axis slicing rule of every leaf of the full model's variables."""
    widths = model.unit_widths(1.0)

    def rule(decl) -> AxisRule:
        if decl is None:
            return None
        segments, offset = [], 0
        for unit, repeat in decl:
            segments.append((unit, repeat, offset))
            offset += widths[unit] * repeat
        return tuple(segments)

    return jax.tree.map(lambda axes: tuple(rule(d) for d in axes), model.width_axes(1.0), is_leaf=is_leaf_axes)


def _axis_index(rule: AxisRule, size: int, idx: Indices) -> jax.Array:
    if rule is None:
        return jnp.arange(size)
    parts = [
        (offset + idx[unit][:, None] * repeat + jnp.arange(repeat)[None, :]).reshape(-1)
        for unit, repeat, offset in rule
    ]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def gather(full: Params, rules, idx: Indices) -> Params:
    """The sub-model: `full` restricted to channels `idx[u]` of every unit u."""

    def one(x, rule):
        for axis, r in enumerate(rule):
            if r is not None:
                x = jnp.take(x, _axis_index(r, x.shape[axis], idx), axis=axis)
        return x

    # `full` is a prefix of `rules`: each leaf meets its whole tuple of axis rules.
    return jax.tree.map(one, full, rules)


def _channel_inverse(kept: jax.Array, width: int) -> jax.Array:
    """(width,): where channel c sits among `kept` (distinct), or len(kept) if it is not
    kept. A comparison, not a scatter: it fuses into one small kernel."""
    hits = kept[None, :] == jnp.arange(width)[:, None]
    return jnp.where(hits.any(1), jnp.argmax(hits, 1), kept.shape[0]).astype(jnp.int32)


def embed(sub: Params, rules, idx: Indices, full_shapes) -> tuple[Params, Params]:
    """Places a sub-model back into global shapes: (values, 0/1 ownership), zeros elsewhere.

    One axis at a time, as a gather: position p of a full axis reads sub position inverse[p],
    out of range (filled with 0) where the sub-model has nothing. The inverse of each unit's
    channels is computed once and reused by every axis it sizes. (An N-d scatter with a
    broadcast index grid did the same with an index array of one row per sub-model element,
    e.g. 38 MB for one full-width ResNet18 3x3x512x512 kernel, and two scatters per leaf:
    a GoogLeNet round had 1,546 scatters (HeteroFL) and 2,574 (Hermes), now 2. Compile time
    did not change measurably: ResNet18 1/8 Hermes round, old 144 / 127 s, new 131 / 170 s
    on shared cores, session 15.)
    """
    inverses = {}

    def axis_inverse(rule: AxisRule, size: int) -> jax.Array:
        parts, sub_offset = [], 0
        ends = [offset for _, _, offset in rule[1:]] + [size]
        for (unit, repeat, offset), end in zip(rule, ends):
            width, kept = (end - offset) // repeat, idx[unit].shape[0]
            if unit not in inverses:
                inverses[unit] = _channel_inverse(idx[unit], width)
            inverse = inverses[unit]
            at = sub_offset + inverse[:, None] * repeat + jnp.arange(repeat)  # channel-major
            parts.append(jnp.where((inverse < kept)[:, None], at, -1).reshape(-1))
            sub_offset += kept * repeat
        inverse = parts[0] if len(parts) == 1 else jnp.concatenate(parts)
        return jnp.where(inverse < 0, sub_offset, inverse)  # sub_offset = the sub axis' size

    def one(x, rule, target):
        owned = jnp.ones((), jnp.float32)
        for axis, (r, n) in enumerate(zip(rule, target.shape)):
            if r is None:
                continue
            inverse, kept = axis_inverse(r, n), x.shape[axis]
            x = jnp.take(x, inverse, axis=axis, mode="fill", fill_value=0)
            held = (inverse < kept).astype(jnp.float32)
            owned = owned * held.reshape([n if a == axis else 1 for a in range(x.ndim)])
        return x, jnp.broadcast_to(owned, target.shape)

    out = jax.tree.map(one, sub, rules, full_shapes)
    treedef = jax.tree.structure(sub)
    pairs = treedef.flatten_up_to(out)
    return treedef.unflatten([p[0] for p in pairs]), treedef.unflatten([p[1] for p in pairs])


def aggregate_slices(
    old: Params,
    rules,
    tiers: Sequence[tuple[Params, Indices, jax.Array]],
) -> Params:
    """Element-wise average over the clients that hold each element (HeteroFL's rule).

    Args:
      old: the global model; elements no client holds keep these values.
      rules: `channel_rules` of the global model.
      tiers: per tier (stacked sub-models (capacity, ...), per-unit index vectors
        {unit: (capacity, k_u)}, per-client weights (capacity,)). Weights are 1 for present
        clients and 0 for absent slots (plain counts, as in HeteroFL); any non-negative
        weights give the weighted version.

    Returns:
      sum_j w_j * value_j / sum_j w_j * owned_j where the denominator is > 0, else `old`.
    """
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), old)
    total = jax.tree.map(jnp.zeros_like, old)
    count = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), old)
    for subs, idx, weights in tiers:
        values, owned = jax.vmap(lambda s, i: embed(s, rules, i, shapes))(subs, idx)
        w = weights.astype(jnp.float32)
        total = jax.tree.map(lambda a, v, w=w: a + jnp.tensordot(w.astype(v.dtype), v, axes=1), total, values)
        count = jax.tree.map(lambda a, o, w=w: a + jnp.tensordot(w, o, axes=1), count, owned)
    return jax.tree.map(
        lambda t, c, o: jnp.where(c > 0, t / jnp.maximum(c, 1e-12).astype(t.dtype), o), total, count, old
    )


def nested_indices(widths: Mapping[str, int], kept: Mapping[str, int], capacity: int) -> dict[str, jax.Array]:
    """HeteroFL: the first k_u channels, the same for every client. Shapes (capacity, k_u)."""
    del widths
    return {u: jnp.broadcast_to(jnp.arange(k), (capacity, k)) for u, k in kept.items()}


def rolling_indices(
    widths: Mapping[str, int], kept: Mapping[str, int], capacity: int, round_index: jax.Array
) -> dict[str, jax.Array]:
    """FedRolex: (arange(k_u) + round) % C_u, wrapping around; the same for every client."""
    return {u: jnp.broadcast_to((jnp.arange(k) + round_index) % widths[u], (capacity, k)) for u, k in kept.items()}


def random_indices(widths: Mapping[str, int], kept: Mapping[str, int], keys: jax.Array) -> dict[str, jax.Array]:
    """Federated Dropout: k_u channels drawn without replacement per client (sorted).

    Args:
      keys: (capacity,) one key per client slot; the i-th unit (declaration order) uses
        fold_in(key, i).
    """

    def one_client(key: PRNGKey):
        return {
            u: jnp.sort(jax.random.permutation(jax.random.fold_in(key, i), widths[u])[:k])
            for i, (u, k) in enumerate(kept.items())
        }

    return jax.vmap(one_client)(keys)


__all__ = [
    "aggregate_slices",
    "channel_rules",
    "embed",
    "gather",
    "nested_indices",
    "random_indices",
    "rolling_indices",
]
