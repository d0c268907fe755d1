"""Channel slicing of HeteroFL / FedRolex / Federated Dropout against NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from fedconv_jax.algorithms import slicing
from fedconv_jax.models import ModelSpec, make_model, register_model, scaled_width
from fedconv_jax.models.layers import Conv, Dense

MODEL = make_model("cnn_bn", 10, (8, 8, 1), "im2col")  # BN so that every rule is exercised


@pytest.fixture(scope="module")
def full():
    variables = jax.jit(MODEL.init)(jax.random.key(0))
    # Non-trivial BatchNorm statistics, so that slicing them is visible.
    stats = jax.tree.map(lambda x: x + jnp.arange(x.shape[0], dtype=x.dtype), variables["batch_stats"])
    return {"params": variables["params"], "batch_stats": stats}


def _np_gather(full, i0, i1):
    """NumPy reference of the slicing rules (any variables tree of this CNN)."""
    p = jax.tree.map(np.asarray, full["params"])
    pixels = p["head"]["kernel"].shape[0] // p["conv_1"]["kernel"].shape[-1]
    rows = np.concatenate([np.arange(c * pixels, (c + 1) * pixels) for c in i1])
    params = {
        "conv_0": {"kernel": p["conv_0"]["kernel"][..., i0], "bias": p["conv_0"]["bias"][i0]},
        "conv_1": {"kernel": p["conv_1"]["kernel"][:, :, i0][..., i1], "bias": p["conv_1"]["bias"][i1]},
        "bn_0": {k: v[i0] for k, v in p["bn_0"].items()},
        "bn_1": {k: v[i1] for k, v in p["bn_1"].items()},
        "head": {"kernel": p["head"]["kernel"][rows], "bias": p["head"]["bias"]},
    }
    stats = {name: {k: np.asarray(v)[i0 if name == "bn_0" else i1] for k, v in layer.items()}
             for name, layer in full["batch_stats"].items()}
    return {"params": params, "batch_stats": stats}


def _template(ratio):
    return jax.eval_shape(lambda: MODEL.init(jax.random.key(0), ratio))


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.25])
def test_gather_matches_numpy_and_the_tier_model_shapes(full, ratio):
    rules = slicing.channel_rules(MODEL)
    sub_template = _template(ratio)
    kept = MODEL.unit_widths(ratio)
    assert kept == {"conv_0": int(16 * ratio), "conv_1": int(32 * ratio)}
    rng = np.random.default_rng(0)
    i0, i1 = (np.sort(rng.choice(c, k, replace=False)) for c, k in zip((16, 32), kept.values()))
    idx = {"conv_0": jnp.asarray(i0), "conv_1": jnp.asarray(i1)}
    sub = jax.jit(lambda f, i: slicing.gather(f, rules, i))(full, idx)
    assert jax.tree.map(jnp.shape, sub) == jax.tree.map(jnp.shape, sub_template)
    jax.tree.map(np.testing.assert_array_equal, sub, _np_gather(full, i0, i1))
    # Class outputs are never sliced.
    assert sub["params"]["head"]["kernel"].shape[1] == 10
    np.testing.assert_array_equal(sub["params"]["head"]["bias"], full["params"]["head"]["bias"])


def test_sliced_model_computes_the_full_model_with_dropped_channels_zeroed():
    """The dense rows follow the kept channels through the channel-major flatten: the sliced
    model's logits equal the full model's with every dropped channel's weights set to zero."""
    model = make_model("cnn", 10, (8, 8, 1), "im2col")
    full = model.init(jax.random.key(2))
    full = {"params": jax.tree.map(lambda x: x + 0.1, full["params"]), "batch_stats": {}}  # non-zero biases
    rules = slicing.channel_rules(model)
    idx = {"conv_0": jnp.array([1, 4, 7, 9, 10, 15]), "conv_1": jnp.array([0, 3, 5, 8, 13, 20, 21, 27, 28, 30, 31, 2]).sort()}

    @jax.jit
    def both(full, idx, x):
        sub = slicing.gather(full, rules, idx)
        zeroed, owned = slicing.embed(sub, rules, idx, full)
        return model.apply(0.375, sub, x)[0], model.apply(1.0, zeroed, x)[0], owned

    sub_logits, full_logits, owned = both(full, idx, jax.random.normal(jax.random.key(3), (5, 8, 8, 1)))
    np.testing.assert_allclose(sub_logits, full_logits, rtol=1e-5, atol=1e-5)
    assert float(owned["params"]["head"]["kernel"].sum()) == 12 * 4 * 10  # 12 channels x 2x2 pixels x 10


def test_index_policies():
    widths, kept = {"a": 16, "b": 32}, {"a": 12, "b": 24}
    nested = slicing.nested_indices(widths, kept, 3)
    np.testing.assert_array_equal(nested["b"], np.tile(np.arange(24), (3, 1)))
    for r in (0, 1, 5, 15, 16, 33):
        rolled = slicing.rolling_indices(widths, kept, 2, jnp.int32(r))
        for c, k, got in zip(widths.values(), kept.values(), rolled.values()):
            np.testing.assert_array_equal(got, np.tile((np.arange(k) + r) % c, (2, 1)))
    # Round 5 on 16 channels keeping 12 wraps around: 5..15 then 0.
    assert list(np.asarray(slicing.rolling_indices(widths, kept, 1, jnp.int32(5))["a"][0])) == [*range(5, 16), 0]

    def draw(seed, round_index):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), round_index), 1)
        out = slicing.random_indices(unit_widths, unit_kept, jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.arange(4)))
        return tuple(out.values())

    unit_widths, unit_kept = widths, kept
    widths, kept = tuple(widths.values()), tuple(kept.values())
    a, b, c = draw(0, 3), draw(0, 3), draw(0, 4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)  # same (seed, round): same channels
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))  # another round: others
    assert not np.array_equal(a[1][0], a[1][1])  # clients differ within a round
    for got, width, k in zip(a, widths, kept):
        assert got.shape == (4, k)
        for row in np.asarray(got):
            assert len(set(row)) == k and row.min() >= 0 and row.max() < width and list(row) == sorted(row)


def test_aggregation_averages_each_element_over_its_holders(full):
    rules = slicing.channel_rules(MODEL)
    rng = np.random.default_rng(1)
    # Where each sub-model element sits in the global model (flat ids), by the NumPy rules.
    positions = jax.tree.map(lambda x: np.arange(x.size).reshape(x.shape), full)
    tiers, holders = [], []
    for t, (ratio, capacity) in enumerate([(0.5, 3), (0.25, 2)]):
        kept = MODEL.unit_widths(ratio).values()
        idx = [np.stack([np.sort(rng.choice(c, k, replace=False)) for _ in range(capacity)]) for c, k in zip((16, 32), kept)]
        subs = [jax.tree.map(lambda x: x + rng.normal(size=x.shape).astype(np.float32), _np_gather(full, idx[0][j], idx[1][j]))
                for j in range(capacity)]  # "trained" sub-models
        mask = np.array([1.0, 0.0, 1.0][:capacity])  # slot 1 of each tier is absent
        stacked = jax.tree.map(lambda *xs: np.stack(xs), *subs)
        tiers.append((stacked, {"conv_0": jnp.asarray(idx[0]), "conv_1": jnp.asarray(idx[1])}, jnp.asarray(mask)))
        holders += [(subs[j], _np_gather(positions, idx[0][j], idx[1][j])) for j in range(capacity) if mask[j]]
    new = jax.jit(lambda old, tiers: slicing.aggregate_slices(old, rules, tiers))(full, tiers)

    for path, old in jax.tree_util.tree_flatten_with_path(full)[0]:
        total, count = np.zeros(old.size), np.zeros(old.size)
        for sub, pos in holders:  # loop reference over clients and their elements
            values, ids = _at(sub, path).reshape(-1), _at(pos, path).reshape(-1)
            for value, flat_id in zip(values, ids):
                total[flat_id] += value
                count[flat_id] += 1
        old = np.asarray(old).reshape(-1)
        expected = np.where(count > 0, total / np.maximum(count, 1), old)
        got = np.asarray(_at(new, path)).reshape(-1)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got[count == 0], old[count == 0])  # nobody holds: unchanged
        assert (count == 0).any() or path[-2].key == "head"  # the check above is not vacuous
    # Class outputs (head bias) are held by every present client: a plain mean over them.
    assert len(holders) == 3
    np.testing.assert_allclose(
        new["params"]["head"]["bias"], np.mean([h[0]["params"]["head"]["bias"] for h in holders], axis=0), rtol=1e-5
    )


def _at(tree, path):
    for entry in path:
        tree = tree[entry.key]
    return np.asarray(tree)


def sliced_and_zeroed(model, ratio, full, idx, x):
    """(the sub-model `idx` slices from `full`, its logits, the logits of `full` with every
    element outside the slice zeroed), in one jitted program (one compile, not one per op).

    For any model whose slicing keeps its units consistent, the two logits are equal."""
    rules = slicing.channel_rules(model)

    @jax.jit
    def run(full, idx, x):
        sub = slicing.gather(full, rules, idx)
        zeroed, _ = slicing.embed(sub, rules, idx, full)
        return sub, model.apply(ratio, sub, x)[0], model.apply(1.0, zeroed, x)[0]

    return run(full, idx, x)


def assert_sliced_equals_zeroed(model, ratio, policy, x, offset=3):
    """A nested or rolled slice of random variables (non-trivial BatchNorm statistics, eval
    mode) computes the full model with every dropped channel zeroed: the family's slicing
    keeps its units consistent across adds and concatenations. Values come from NumPy on the
    model's shapes, not from its initialisers (GoogLeNet's compile for a minute)."""
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0)))
    full = {
        "params": jax.tree.map(lambda v: 0.2 * rng.standard_normal(v.shape).astype(np.float32), shapes["params"]),
        "batch_stats": jax.tree.map(lambda v: rng.uniform(0.1, 0.5, v.shape).astype(np.float32), shapes["batch_stats"]),
    }
    widths, kept = model.unit_widths(1.0), model.unit_widths(ratio)
    if policy == "nested":
        idx = slicing.nested_indices(widths, kept, 1)
    else:
        idx = slicing.rolling_indices(widths, kept, 1, jnp.int32(offset))
    idx = {u: i[0] for u, i in idx.items()}
    _, sub_logits, full_logits = sliced_and_zeroed(model, ratio, full, idx, x)
    np.testing.assert_allclose(sub_logits, full_logits, rtol=1e-4, atol=1e-4)
    assert float(jnp.abs(sub_logits).max()) > 1e-3  # not two zero outputs


class _Branches(nn.Module):
    """Two conv branches concatenated, then a conv reading both: a GoogLeNet-style axis."""

    ratio: float = 1.0
    num_classes: int = 3
    conv_impl: str = "im2col"

    @nn.compact
    def __call__(self, x, train=False):
        a = Conv(scaled_width(4, self.ratio), axes=(None, "a"), name="a")(x)
        b = Conv(scaled_width(6, self.ratio), axes=(None, "b"), name="b")(x)
        x = Conv(scaled_width(8, self.ratio), axes=("a+b", "c"), name="c")(jnp.concatenate([a, b], axis=-1))
        return Dense(self.num_classes, axes=("c", None), name="head")(x.mean(axis=(1, 2)))


def test_concatenated_axis_slices_each_branch_at_its_offset(temporary_models):
    """A concatenated input axis takes branch a's kept channels, then branch b's shifted by a's
    width; the sliced model equals the full one with every dropped channel's weights zeroed."""
    register_model("branches_test", _Branches)
    model = ModelSpec("branches_test", 3, (5, 5, 2))
    assert model.unit_widths(0.5) == {"a": 2, "b": 3, "c": 4}
    full = model.init(jax.random.key(0))
    full = {"params": jax.tree.map(lambda x: x + 0.1, full["params"]), "batch_stats": {}}
    idx = {"a": jnp.array([1, 3]), "b": jnp.array([0, 4, 5]), "c": jnp.array([2, 3, 6, 7])}
    x = jax.random.normal(jax.random.key(1), (2, 5, 5, 2))
    sub, sub_logits, full_logits = sliced_and_zeroed(model, 0.5, full, idx, x)
    np.testing.assert_array_equal(sub["params"]["c"]["kernel"], full["params"]["c"]["kernel"][:, :, [1, 3, 4, 8, 9]][..., [2, 3, 6, 7]])
    np.testing.assert_allclose(sub_logits, full_logits, rtol=1e-5, atol=1e-5)


def test_undeclared_variable_is_refused(temporary_models):
    class Plain(nn.Module):
        ratio: float = 1.0
        num_classes: int = 2
        conv_impl: str = "im2col"

        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(self.num_classes, name="attn")(x.reshape(x.shape[0], -1))

    register_model("undeclared_test", Plain)
    with pytest.raises(ValueError, match=r"variable \['params'\]\['attn'\]\['bias'\] declares no width axes"):
        ModelSpec("undeclared_test", 2, (3,)).unit_widths()
