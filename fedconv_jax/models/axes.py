"""Width axes: which axes of a model's variables scale with its width, and with what.

Every layer declares a name for each axis of each variable it creates (Flax logical-axis
metadata, `nn.with_logical_partitioning`), so no federated code parses layer names:
  - None: the axis never scales (kernel taps, image channels, class outputs);
  - "u": the channels of unit u, a group of channels that scales together (one conv's
    outputs and its BatchNorm; both sides of a residual add share one unit);
  - "u*r": unit u's channels, each repeated r times, channel-major (a flatten of r pixels);
  - "u+v+...": the concatenation of such segments (GoogLeNet's concatenated branches).
A unit of width C keeps floor(ratio * C) channels at a width ratio (`scaled_width`), its
first ones in the tier model's own layout.
"""

import math
from collections.abc import Mapping

import jax
from flax import linen as nn

# One declared axis: None, or its segments (unit, entries per channel) in order.
Segment = tuple[str, int]
AxisDecl = tuple[Segment, ...] | None
LeafAxes = tuple[AxisDecl, ...]


def scaled_width(width: int, ratio: float) -> int:
    """floor(width * ratio), robust to float error (0.3 * 10 must give 3, not 2)."""
    return math.floor(width * ratio + 1e-6)


def declare(init, *names: str | None):
    """`init` with one width-axis name per axis of the variable it creates."""
    return nn.with_logical_partitioning(init, names)


def parse_axis(name: str | None) -> AxisDecl:
    """"a+b*4" -> (("a", 1), ("b", 4)); None -> None."""
    if name is None:
        return None
    segments = []
    for part in name.split("+"):
        unit, _, repeat = part.partition("*")
        if not unit or (repeat and not repeat.isdigit()) or repeat == "0":
            raise ValueError(f"width axis {name!r} is not of the form unit[*r][+unit[*r]...]")
        segments.append((unit, int(repeat or 1)))
    return tuple(segments)


def is_leaf_axes(x) -> bool:
    """`is_leaf` for trees of `LeafAxes` (a variable's per-axis declarations)."""
    return isinstance(x, tuple) and all(d is None or isinstance(d, tuple) for d in x)


def _is_box(x) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


def split_declared(boxed) -> tuple[dict, dict]:
    """Boxed variables (a Flax `init` of a declared model) -> (plain variables, axes).

    Raises ValueError naming any variable that does not declare one name per axis.
    """

    def axes_of(path, leaf):
        where = jax.tree_util.keystr(path)
        if not _is_box(leaf):
            raise ValueError(f"variable {where} declares no width axes (models/axes.py)")
        if len(leaf.names) != len(leaf.value.shape):
            raise ValueError(f"variable {where} of shape {leaf.value.shape} declares axes {leaf.names}")
        return tuple(parse_axis(n) for n in leaf.names)

    axes = jax.tree_util.tree_map_with_path(axes_of, boxed, is_leaf=_is_box)
    return nn.unbox(boxed), axes


def unit_widths(variables, axes) -> dict[str, int]:
    """Every unit's width, in order of first appearance; checks every declared axis size.

    A unit's width is the size of its plain ("u") axes, which must all agree; every axis
    must then measure the sum of its segments' width * repeat.
    """
    pairs = list(zip(jax.tree.leaves(variables), jax.tree.leaves(axes, is_leaf=is_leaf_axes)))
    widths: dict[str, int] = {}
    for leaf, leaf_axes in pairs:
        for size, decl in zip(leaf.shape, leaf_axes):
            if decl is not None and len(decl) == 1 and decl[0][1] == 1:
                unit = decl[0][0]
                if widths.setdefault(unit, size) != size:
                    raise ValueError(f"unit {unit!r} has width {widths[unit]} on one axis and {size} on another")
    for leaf, leaf_axes in pairs:
        for size, decl in zip(leaf.shape, leaf_axes):
            if decl is None:
                continue
            missing = [u for u, _ in decl if u not in widths]
            if missing:
                raise ValueError(f"unit {missing[0]!r} is used but no variable has a plain axis of it")
            if size != sum(widths[u] * r for u, r in decl):
                raise ValueError(f"an axis of size {size} is declared as {decl} with unit widths {widths}")
    return widths


def kept_widths(full: Mapping[str, int], sub: Mapping[str, int]) -> dict[str, int]:
    """The sub-model's unit widths, checked to fit inside the full model's."""
    if list(full) != list(sub) or any(not 1 <= sub[u] <= full[u] for u in full):
        raise ValueError(f"sub-model widths {dict(sub)} do not fit the global widths {dict(full)}")
    return dict(sub)


__all__ = [
    "AxisDecl",
    "LeafAxes",
    "Segment",
    "declare",
    "is_leaf_axes",
    "kept_widths",
    "parse_axis",
    "scaled_width",
    "split_declared",
    "unit_widths",
]
