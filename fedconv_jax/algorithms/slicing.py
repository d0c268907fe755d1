"""Channel slices of the global model (HeteroFL, FedRolex, Federated Dropout; SPEC §7).

A sub-model of ratio s is the global model restricted to k_u = floor(s * C_u) channels of
every conv layer u (the tier model's own shapes, `cfg.model.init(key, s)`, exactly the
sub-models FedConv's clients train). HeteroFL's paper uses ceil(s * C); for this CNN's widths
(16, 32) at the paper's SRs (1, 0.75, 0.5, 0.25) both give the same widths.

Which channels a client keeps is one integer vector per conv layer ("unit"), a traced input,
so rolling and random choices never recompile. Every variable axis follows a rule:
  - conv_u kernel (kh, kw, I, O): O follows unit u, I follows unit u - 1 (the first conv's
    input channels are the image's and are kept whole);
  - conv_u bias, bn_u scale/bias/mean/var (O,): unit u;
  - head kernel (D, classes): D follows the last unit through the channel-major flatten,
    row = c * P + pixel (P pixels per channel); class outputs are never sliced.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from fedconv_jax.core.types import Params, PRNGKey, Variables

# Per leaf, one entry per axis: None (kept whole), ("unit", u) or ("flat", u, pixels).
AxisRule = tuple | None


def _layer_index(name: str) -> int:
    return int(name.rsplit("_", 1)[1])


def _leaf_rules(path, leaf, num_units: int, last_width: int) -> tuple[AxisRule, ...]:
    layer, name = path[-2].key, path[-1].key
    rules: list[AxisRule] = [None] * leaf.ndim
    if layer.startswith(("conv_", "bn_")):
        u = _layer_index(layer)
        rules[-1] = ("unit", u)
        if layer.startswith("conv_") and name == "kernel" and u > 0:
            rules[-2] = ("unit", u - 1)
    elif layer == "head" and name == "kernel":
        rows = leaf.shape[0]
        if rows % last_width:
            raise ValueError(f"head kernel rows {rows} are not a multiple of the last conv width {last_width}")
        rules[0] = ("flat", num_units - 1, rows // last_width)
    elif layer != "head":
        raise ValueError(f"no slicing rule for layer {layer!r} (known: conv_<i>, bn_<i>, head)")
    return tuple(rules)


def unit_widths(variables: Variables) -> tuple[int, ...]:
    """Output channels of every conv layer, in order."""
    params = variables["params"]
    names = sorted((k for k in params if k.startswith("conv_")), key=_layer_index)
    return tuple(int(params[n]["kernel"].shape[-1]) for n in names)


def channel_rules(full: Variables):
    """The per-axis slicing rule of every leaf of the global model's variables."""
    widths = unit_widths(full)
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: _leaf_rules(path, leaf, len(widths), widths[-1]), full,
    )


def _axis_index(rule: AxisRule, size: int, idx: Sequence[jax.Array]) -> jax.Array:
    if rule is None:
        return jnp.arange(size)
    if rule[0] == "unit":
        return idx[rule[1]]
    _, u, pixels = rule
    return (idx[u][:, None] * pixels + jnp.arange(pixels)[None, :]).reshape(-1)


def gather(full: Params, rules, idx: Sequence[jax.Array]) -> Params:
    """The sub-model: `full` restricted to channels `idx[u]` of every unit u."""

    def one(x, rule):
        for axis, r in enumerate(rule):
            if r is not None:
                x = jnp.take(x, _axis_index(r, x.shape[axis], idx), axis=axis)
        return x

    # `full` is a prefix of `rules`: each leaf meets its whole tuple of axis rules.
    return jax.tree.map(one, full, rules)


def embed(sub: Params, rules, idx: Sequence[jax.Array], full_shapes) -> tuple[Params, Params]:
    """Scatters a sub-model back into global shapes: (values, 0/1 ownership), zeros elsewhere.

    Indices within one axis are distinct, so `.add` into zeros places each value once.
    """

    def one(x, rule, target):
        shape = target.shape
        grid = jnp.ix_(*(_axis_index(r, n, idx) for r, n in zip(rule, shape)))
        values = jnp.zeros(shape, x.dtype).at[grid].add(x)
        owned = jnp.zeros(shape, jnp.float32).at[grid].add(jnp.ones_like(x, jnp.float32))
        return values, owned

    out = jax.tree.map(one, sub, rules, full_shapes)
    treedef = jax.tree.structure(sub)
    pairs = treedef.flatten_up_to(out)
    return treedef.unflatten([p[0] for p in pairs]), treedef.unflatten([p[1] for p in pairs])


def aggregate_slices(
    old: Params,
    rules,
    tiers: Sequence[tuple[Params, tuple[jax.Array, ...], jax.Array]],
) -> Params:
    """Element-wise average over the clients that hold each element (HeteroFL's rule).

    Args:
      old: the global model; elements no client holds keep these values.
      rules: `channel_rules` of the global model.
      tiers: per tier (stacked sub-models (capacity, ...), per-unit index vectors each of
        shape (capacity, k_u), per-client weights (capacity,)). Weights are 1 for present
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


def nested_indices(widths: Sequence[int], kept: Sequence[int], capacity: int) -> tuple[jax.Array, ...]:
    """HeteroFL: the first k_u channels, the same for every client. Shapes (capacity, k_u)."""
    del widths
    return tuple(jnp.broadcast_to(jnp.arange(k), (capacity, k)) for k in kept)


def rolling_indices(
    widths: Sequence[int], kept: Sequence[int], capacity: int, round_index: jax.Array
) -> tuple[jax.Array, ...]:
    """FedRolex: (arange(k_u) + round) % C_u, wrapping around; the same for every client."""
    return tuple(
        jnp.broadcast_to((jnp.arange(k) + round_index) % c, (capacity, k)) for c, k in zip(widths, kept)
    )


def random_indices(
    widths: Sequence[int], kept: Sequence[int], keys: jax.Array
) -> tuple[jax.Array, ...]:
    """Federated Dropout: k_u channels drawn without replacement per client (sorted).

    Args:
      keys: (capacity,) one key per client slot; unit u uses fold_in(key, u).
    """

    def one_client(key: PRNGKey):
        return tuple(
            jnp.sort(jax.random.permutation(jax.random.fold_in(key, u), c)[:k])
            for u, (c, k) in enumerate(zip(widths, kept))
        )

    return jax.vmap(one_client)(keys)


def kept_widths(full: Variables, sub: Variables) -> tuple[int, ...]:
    """k_u of a sub-model, read from its own shapes (never floor(D * s) of a flattened axis)."""
    widths, kept = unit_widths(full), unit_widths(sub)
    if len(widths) != len(kept) or any(k > c or k < 1 for k, c in zip(kept, widths)):
        raise ValueError(f"sub-model widths {kept} do not fit the global widths {widths}")
    return kept


__all__ = [
    "aggregate_slices",
    "channel_rules",
    "embed",
    "gather",
    "kept_widths",
    "nested_indices",
    "random_indices",
    "rolling_indices",
    "unit_widths",
]
