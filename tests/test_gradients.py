"""Gradients through whole rounds: the README's "Python API" example, checked against
central finite differences for each kind (traced hyper-parameters, the initial global model,
FedConv's learned state), and unchanged by rematerialisation.

The example's config takes one step per loop (one batch holds a client's or D's data).
Through many Adam steps the loss is rough at every scale finite differences can resolve: an
Adam update g / (|g| + eps) turns a 1e-9 change of a near-zero gradient into an lr-sized move,
and steps compound that (measured on one round with 32-example batches: float64 differences with
relative steps 1e-4 and 1e-6 gave
-39 and 2364 against a gradient of -56). With one step per loop the loss is piecewise smooth
with small jumps (WINDOW below): float64 differences (a median of neighbour slopes) agree with
the float32 gradient to 1e-2 and with a float64 gradient to 1e-4.

Cost: the example's gradient program (float32, called twice), the float64 gradient program,
one float64 forward program called for every difference, and a 2-device gradient in a fresh
interpreter: opt-in (FEDCONV_SLOW_TESTS=1); the remat checks run in the suite.
"""

import dataclasses
import functools
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedconv_jax as fc

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
KINDS = ("hparams", "global_params", "compression", "dilation", "agg_weights")
LEARNED_HPARAMS = ("local_lr", "pretrain_lr", "filter_lr", "filter_lr_min", "aggregate_lr", "kld_weight")


def _python_api_example() -> str:
    body = README.split("## Python API\n", 1)[1]
    return re.search(r"```python\n(.*?)```", body, re.DOTALL).group(1)


slow = pytest.mark.skipif(not os.environ.get("FEDCONV_SLOW_TESTS"), reason="opt-in: FEDCONV_SLOW_TESTS=1 (~10 min)")


@pytest.fixture(scope="module")
def example():
    """The README example, run as written: its names (exp, loss, d_state, d_hparams)."""
    names = {"__name__": "readme_python_api"}
    exec(compile(_python_api_example(), "README:Python API", "exec"), names)  # noqa: S102
    return names


def _float64(tree):
    """Every float leaf as float64 (call under jax.enable_x64); keys and counters as they are."""

    def cast(x):
        x = jnp.asarray(x)
        return x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, tree)


@pytest.fixture(scope="module")
def offset_case(example):
    """The example's float32 gradient (its own compiled `grad_fn`) at a point next to its
    state, and the same round's loss in float64 (jitted for finite differences, and as a
    function for the float64 gradient).

    At the initial state itself the round is not differentiable: biases start at exactly 0
    and identity-initialised filters generate exact zeros, on MLR's kink; moving any
    parameter off it changes which slope (0.85 or 0.001) every later gradient sees (measured:
    f(x + eps v) - f(x) stayed at 3e-6 for eps down to 1e-10). A random 1e-3 offset of every
    parameter and filter leaves the kinks.
    """
    exp = example["exp"]
    rng = np.random.default_rng(0)

    def offset(tree):
        return jax.tree.map(lambda x: x + (1e-3 * rng.normal(size=x.shape)).astype(x.dtype), tree)

    state = dataclasses.replace(
        exp.state,
        global_vars={**exp.state.global_vars, "params": offset(exp.state.global_vars["params"])},
        compression=offset(exp.state.compression), dilation=offset(exp.state.dilation),
    )
    d_state, d_hparams = example["grad_fn"](state, exp.hparams)
    with jax.enable_x64(True):
        data = _float64(exp.data)  # every float leaf, the sample counts included
        rounds = fc.unroll(exp.algorithm, 2)

        def loss64(state, hparams):
            final, _ = rounds(state, data, hparams)
            return fc.holdout_loss(exp.algorithm, final, data)

        forward = jax.jit(loss64)

    def call(state, hparams):
        with jax.enable_x64(True):  # one signature (all float64): one compile
            return float(forward(_float64(state), _float64(hparams)))

    return state, exp.hparams, call, d_state, d_hparams, loss64


def _part(kind, state, hparams):
    if kind == "hparams":  # clients_per_round is a count (its gradient is 0 by construction)
        return {k: v for k, v in hparams.items() if k != "clients_per_round"}
    if kind == "global_params":
        return state.global_vars["params"]
    return getattr(state, kind)


def _with(kind, state, hparams, value):
    if kind == "hparams":
        return state, {**hparams, **value}
    if kind == "global_params":
        return dataclasses.replace(state, global_vars={**state.global_vars, "params": value}), hparams
    return dataclasses.replace(state, **{kind: value}), hparams


def _dot(a, b):
    return sum(float(jnp.vdot(np.float64(x), np.float64(y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _random_unit(tree, seed):
    rng = np.random.default_rng(seed)
    tree = jax.tree.map(lambda x: rng.normal(size=x.shape), tree)
    norm = _dot(tree, tree) ** 0.5
    return jax.tree.map(lambda x: x / norm, tree)


@slow
def test_every_gradient_is_finite_and_nonzero(example):
    d_state, d_hparams = example["d_state"], example["d_hparams"]
    for kind in KINDS:
        grad = _part(kind, d_state, d_hparams)
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(grad)), kind
        assert _dot(grad, grad) > 0, kind


# The slope along a direction: the loss at 2K + 1 points t = h k / K, k = -K..K, and the median
# of the 2K slopes between neighbours. The round's loss is piecewise smooth with small jumps
# (a ReLU or max-pool switch inside a training step changes that step: jumps of 1e-11 .. 1e-7,
# packed along every direction); a slope across a jump is off by jump / step, and the median
# of many neighbours' slopes outvotes those. Measured (session 14) against the float64
# gradient: the median of three central differences at steps 5e-9 .. 2e-8 was off by up to
# 6.4e-4 |g|; this estimate at the windows below by at most 1.1e-5 |g|, for every kind.
WINDOW = {"hparams": 1e-5, "params": 1e-6}  # hparams: relative (d loss / d log h)
POINTS = 16  # K
BOUND = {"float32": 1e-2, "float64": 1e-4}  # the bounds, relative to |g|


@pytest.fixture(scope="module")
def float64_gradient(offset_case):
    """The float64 gradient at the offset point: its own compile (several minutes)."""
    state, hparams, _, _, _, loss64 = offset_case
    with jax.enable_x64(True):
        return jax.jit(jax.grad(loss64, argnums=(0, 1), allow_int=True))(_float64(state), _float64(hparams))


def _directions(kind, grad):
    """Hyper-parameters: each learned one, by a relative step (d loss / d log h: the rates
    span 1e-5 .. 1); tensors: the gradient's own direction and a random one."""
    if kind == "hparams":
        return {name: {k: float(v) if k == name else 0.0 for k, v in grad.items()} for name in LEARNED_HPARAMS}
    norm = _dot(grad, grad) ** 0.5
    return {"gradient": jax.tree.map(lambda g: np.float64(g) / norm, grad), "random": _random_unit(grad, KINDS.index(kind))}


@pytest.fixture(scope="module")
def differences(offset_case):
    """{kind: {name: (direction, slope)}}: float64 slopes of the round's loss (the median of
    neighbour slopes over WINDOW) along the directions of the float32 gradient, computed once
    for both precisions' checks."""
    state, hparams, forward, d_state, d_hparams, _ = offset_case
    out = {}
    for kind in KINDS:
        base = _part(kind, state, hparams)
        window = WINDOW["hparams" if kind == "hparams" else "params"]
        t = window * np.arange(-POINTS, POINTS + 1) / POINTS
        # hparams directions carry the base values, so a step is relative
        directions = _directions(kind, base if kind == "hparams" else _part(kind, d_state, d_hparams))
        out[kind] = {}
        for name, direction in directions.items():
            values = []
            for step in t:
                with jax.enable_x64(True):
                    moved = jax.tree.map(lambda x, d, step=step: np.float64(x) + step * d, base, direction)
                    values.append(forward(*_with(kind, state, hparams, moved)))
            out[kind][name] = (direction, float(np.median(np.diff(values) / np.diff(t))))
    return out


@slow
@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("kind", KINDS)
def test_gradient_matches_central_finite_differences(offset_case, differences, kind, precision, request):
    """The gradient (the example's float32 one, or the same round's in float64) against float64
    finite differences: |FD - g.v| <= 1e-2 |g| in float32 (1e-4 in float64), along the
    gradient itself and along a random direction, or along each learned hyper-parameter by a
    relative step (|g| then is the norm of the d loss / d log h)."""
    state, hparams, _, d_state, d_hparams, _ = offset_case
    if precision == "float64":
        d_state, d_hparams = request.getfixturevalue("float64_gradient")
    base, grad = _part(kind, state, hparams), _part(kind, d_state, d_hparams)
    if kind == "hparams":
        grad = {k: float(grad[k]) * float(base[k]) for k in base}  # d loss / d log h
    norm = _dot(grad, grad) ** 0.5
    for name, (direction, slope) in differences[kind].items():
        want = _dot(grad, direction) if kind != "hparams" else grad[name]
        assert abs(slope - want) <= BOUND[precision] * norm, (kind, name, slope, want, norm)


# --- remat: the same gradient, at each place it is applied --------------------------------


@pytest.fixture(scope="module")
def digits_model():
    data = fc.load_dataset("digits")
    model = fc.make_model("cnn", 10, (8, 8, 1), "im2col", 0.25)
    return model, jnp.asarray(data.images[:96]), jnp.asarray(data.labels[:96])


def _grad_equal(fn, *args):
    """remat changes the program (a checkpoint is in it) and not the gradient."""
    for remat in (False, True):
        assert ("remat" in str(jax.make_jaxpr(functools.partial(fn, remat=remat))(*args))) == remat
    plain = jax.jit(jax.grad(functools.partial(fn, remat=False)))(*args)
    remat = jax.jit(jax.grad(functools.partial(fn, remat=True)))(*args)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7), remat, plain)
    assert _dot(plain, plain) > 0


def test_remat_tuning_keeps_the_gradient(digits_model):
    from fedconv_jax.core.data import IndexSet
    from fedconv_jax.core.tuning import make_optimizer

    model, images, labels = digits_model
    params = model.init(jax.random.key(0))["params"]
    train, holdout = IndexSet(jnp.arange(64), jnp.ones(64, bool)), IndexSet(jnp.arange(64, 96), jnp.ones(32, bool))

    def loss(lr, remat):
        result = fc.tune(
            lambda p, x: model.apply(1.0, {"params": p, "batch_stats": {}}, x)[0], params, make_optimizer().init(params),
            images, labels, train, holdout, jax.random.key(2), fc.TuningConfig(epochs=2, batch_size=16, remat=remat),
            lr=lr,
        )
        return result.holdout_loss

    _grad_equal(loss, jnp.float32(1e-2))


def test_remat_clients_keeps_the_gradient():
    from fedconv_jax.core.client import map_clients

    xs = jnp.linspace(-1.0, 1.0, 6).reshape(3, 2)

    def loss(w, remat):
        return jnp.sum(map_clients("map", 1, lambda x: jnp.sin(w * x) * jnp.tanh(x + w), xs, remat=remat))

    _grad_equal(loss, jnp.float32(0.7))


def test_remat_rounds_and_local_epochs_keep_the_gradient():
    """unroll's checkpointed rounds and local_train's epochs, on serveralone (the smallest
    round: local training on D)."""
    config = fc.default_config()
    config.update(algorithm="serveralone", num_clients=2, shrink_ratios=(1.0, 0.5), local_epochs=2,
                  phase_timing=False, client_costs=False, global_width=0.25)
    exp = fc.build_experiment(config)
    remat_exp = fc.build_experiment(_with_remat(config))

    def loss(local_lr, remat):
        e = remat_exp if remat else exp
        final, _ = fc.unroll(e.algorithm, 2)(e.state, e.data, {**e.hparams, "local_lr": local_lr})
        return fc.holdout_loss(e.algorithm, final, e.data)

    _grad_equal(loss, exp.hparams["local_lr"])


def _with_remat(config):
    config = config.copy_and_resolve_references()
    config.remat = True
    return config


def test_local_lr_per_tier_reaches_each_tier_only():
    """A (num_tiers,) `local_lr` trains tier t's clients at lr[t]: lr 0 leaves the sent model
    as it was; the scalar form equals the vector of equal rates."""
    from fedconv_jax.core.skeleton import train_clients

    config = fc.default_config()
    config.update(algorithm="heterofl", num_clients=2, shrink_ratios=(1.0, 0.5), local_epochs=1,
                  phase_timing=False, client_costs=False, global_width=0.25)
    exp = fc.build_experiment(config)
    spec, data = exp.algorithm.spec, exp.data
    start = spec.model.init(jax.random.key(1), 0.5)

    @jax.jit
    def train(lr):
        trained, _ = train_clients(spec, 0.5, start, False, data, 1, {"local_lr": lr}, jax.random.key(2))
        return trained["params"]

    def moved(params):
        return max(float(jnp.max(jnp.abs(a[0] - b))) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(start["params"])))

    assert moved(train(jnp.array([1e-2, 0.0]))) == 0.0
    assert moved(train(jnp.array([0.0, 1e-2]))) > 1e-4
    jax.tree.map(np.testing.assert_array_equal, train(jnp.array([1e-2, 1e-2])), train(jnp.float32(1e-2)))


# --- the gradient with the client axis sharded over 2 devices -----------------------------

TWO_DEVICE_SCRIPT = """
import json
import jax
jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
import fedconv_jax as fc
from fedconv_jax.core.sharding import make_client_mesh, state_shardings


def float64(tree):
    cast = lambda x: x.astype(jnp.float64) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x
    return jax.tree.map(cast, tree)


out = {}
for devices in (1, 2):
    config = fc.default_config()
    config.update(num_clients=2, shrink_ratios=(1.0, 0.5), local_epochs=1, pretrain_epochs=1, compress_epochs=1,
                  dilate_epochs=1, aggregate_epochs=1, batch_size=2048, phase_timing=False, client_costs=False,
                  devices=devices)
    exp = fc.build_experiment(config, slot_multiple=2)  # the same slots on 1 and 2 devices
    # off the initial state's kinks (see offset_case)
    rng = np.random.default_rng(0)
    offset = lambda tree: jax.tree.map(lambda x: x + (1e-3 * rng.normal(size=x.shape)).astype(x.dtype), tree)
    start = exp.state.replace(global_vars={**exp.state.global_vars, "params": offset(exp.state.global_vars["params"])},
                              compression=offset(exp.state.compression), dilation=offset(exp.state.dilation))
    start, data, hparams = float64(start), float64(exp.data), float64(exp.hparams)
    state = jax.device_put(start, state_shardings(make_client_mesh(devices), start, exp.algorithm.per_client_fields))
    rounds = fc.unroll(exp.algorithm, 2)

    def loss(state, hparams):
        final, _ = rounds(state, data, hparams)
        return fc.holdout_loss(exp.algorithm, final, data)

    value, (d_state, d_hparams) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), allow_int=True))(state, hparams)
    flat = lambda tree: np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)]).tolist()
    # d loss / d log(h): the rates span 1e-5 .. 1
    out[devices] = {"loss": float(value), "hparams": {k: float(v) * float(hparams[k]) for k, v in d_hparams.items()},
                    **{kind: flat(getattr(d_state, kind)) for kind in ("compression", "dilation", "agg_weights")},
                    "global_params": flat(d_state.global_vars["params"])}
print("RESULT" + json.dumps(out))
"""


@slow
def test_gradient_on_two_devices_equals_one_device():
    """value-and-grad through 2 rounds of the README example, in float64, with the client
    axis sharded over 2 CPU devices (a fresh interpreter: the device count is fixed at
    backend start): the same loss and gradients up to summation order (a wrongly transposed
    replicated input would be off by a factor of 2), at the finite-difference tests' offset
    point. In float32 the two differed by 2.2% of |g| in the compression filters (session
    15), and the float32 compression gradient's norm was 25x the float64 one's: through
    Adam's first steps, d update / d g = lr eps / (|g| + eps)^2 amplifies the rounding of
    near-zero gradients, so float32 cannot tell a summation order from a transpose error.
    In float64 the compression gradients agreed to 4e-12 in one run and 8e-7 in another
    (the same amplification, of float64 rounding): the bound is 1e-5."""
    import json
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", TWO_DEVICE_SCRIPT], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.split("RESULT", 1)[1])
    one, two = out["1"], out["2"]
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-12)
    for kind in ("compression", "dilation", "agg_weights", "global_params"):
        a, b = np.asarray(one[kind]), np.asarray(two[kind])
        assert np.all(np.isfinite(b)) and np.linalg.norm(a) > 0, kind
        assert np.linalg.norm(b - a) <= 1e-5 * np.linalg.norm(a), (kind, np.linalg.norm(b - a) / np.linalg.norm(a))
    norm = np.linalg.norm([one["hparams"][k] for k in LEARNED_HPARAMS])
    for name in LEARNED_HPARAMS:
        assert abs(two["hparams"][name] - one["hparams"][name]) <= 1e-5 * norm, name


@slow
@pytest.mark.parametrize("algorithm", fc.algorithm_names())
def test_every_algorithm_has_finite_gradients_through_a_round(algorithm):
    """d holdout loss / d (traced hyper-parameters, initial global parameters) through one
    round of every registered algorithm: finite, and not all zero. Algorithms without a
    global model (standalone, fedmd) are scored by their first client's model instead."""
    from fedconv_jax.core.tuning import masked_cross_entropy

    config = fc.default_config()
    config.update(algorithm=algorithm, num_clients=2, shrink_ratios=(1.0, 0.5), local_epochs=1, pretrain_epochs=1,
                  compress_epochs=1, dilate_epochs=1, aggregate_epochs=1, batch_size=2048, phase_timing=False,
                  client_costs=False, global_width=0.5)
    exp = fc.build_experiment(config)
    scored = bool(jax.tree.leaves(exp.state.global_vars["params"]))

    def loss(state, hparams):
        final, _ = exp.algorithm.round(state, exp.data, hparams)
        if scored:
            return fc.holdout_loss(exp.algorithm, final, exp.data)
        first = jax.tree.map(lambda x: x[0], final.client_vars[0])
        holdout = exp.data.server_holdout
        logits, _ = exp.algorithm.spec.model.apply(1.0, first, exp.data.images[holdout.idx])
        return masked_cross_entropy(logits, exp.data.labels[holdout.idx], holdout.mask)

    d_state, d_hparams = jax.jit(jax.grad(loss, argnums=(0, 1), allow_int=True))(exp.state, exp.hparams)
    start = d_state.global_vars["params"] if scored else d_state.client_vars
    for name, grad in (("hparams", d_hparams), ("start", start)):
        leaves = [np.asarray(x) for x in jax.tree.leaves(grad) if np.issubdtype(np.asarray(x).dtype, np.floating)]
        assert all(np.all(np.isfinite(x)) for x in leaves), (algorithm, name)
        assert any(np.any(x != 0) for x in leaves), (algorithm, name)
    assert float(d_hparams["local_lr"]) != 0.0  # every algorithm trains something at local_lr
