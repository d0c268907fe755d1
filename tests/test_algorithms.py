"""Every registered algorithm through the same protocol checks, then each baseline's own.

Each algorithm runs the tiny config (4 clients, SR 1, 1, 0.5, 0.5) once, in one compiled
program per algorithm: a second round, rounds with other hyper-parameter values, other
client sample counts, client sampling, dropout and a poisoned client must all reuse it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_round import tiny_config

from fedconv_jax.algorithms.common import pretrain_step
from fedconv_jax.checkpointing import Checkpointer, find_latest
from fedconv_jax.config import ALGORITHMS
from fedconv_jax.core.algorithm import algorithm_entry
from fedconv_jax.core.participation import attack_code
from fedconv_jax.core.tuning import evaluate
from fedconv_jax.experiment import build_experiment
from fedconv_jax.metrics import CompileCounter, params_digest

BASELINES = tuple(a for a in ALGORITHMS if a != "fedconv")


def _has_global_model(exp) -> bool:
    """standalone and fedmd keep only the clients' own models (global metrics are NaN)."""
    return bool(jax.tree.leaves(exp.state.global_vars["params"]))


def _same_layout(new, old):
    """`new` laid out like `old`: an unplaced copy would retrace the jitted round."""
    return jax.tree.map(lambda n, o: jax.device_put(n, o.sharding), new, old)


def _fewer_samples(data):
    """The same shapes with every client's last training example masked out."""
    def drop_last(index_set):
        last = jnp.sum(index_set.mask, axis=-1, keepdims=True) - 1
        keep = index_set.mask & (jnp.arange(index_set.mask.shape[-1]) != last)
        return index_set._replace(mask=keep)

    train = tuple(drop_last(t) for t in data.client_train)
    counts = tuple(jnp.sum(t.mask, axis=-1).astype(jnp.float32) for t in train)
    return data._replace(
        client_train=_same_layout(train, data.client_train), num_samples=_same_layout(counts, data.num_samples)
    )


def _run(algorithm):
    config = tiny_config()
    config.algorithm = algorithm
    exp = build_experiment(config)
    counter = CompileCounter()
    round_fn = jax.jit(exp.algorithm.round)
    digest = lambda state: params_digest(exp.algorithm.digest(state))  # noqa: E731
    state, digests, metrics = exp.state, [], []
    # Inputs prepared before counting: eager ops compile too.
    doubled = {name: value * 2 for name, value in exp.hparams.items()}
    fewer = _fewer_samples(exp.data)
    sampled = {**exp.hparams, "clients_per_round": exp.hparams["clients_per_round"] + 2}
    dropout = {**exp.hparams, "dropout_rate": exp.hparams["dropout_rate"] + 0.5}
    flip = attack_code("sign_flip")  # the last slot of the SR 0.5 tier attacks
    attacked = exp.data._replace(poisoned=_same_layout((jnp.array([0, 0]), jnp.array([0, flip])), exp.data.poisoned))
    # The first call compiles (or finds the program another test of this process compiled);
    # nothing after it may compile.
    state, m = round_fn(state, exp.data, exp.hparams)
    digests.append(digest(state))
    metrics.append(jax.device_get(m))
    with counter.counting():
        state, m = round_fn(state, exp.data, exp.hparams)
        digests.append(digest(state))
        metrics.append(jax.device_get(m))
        other_hparams = digest(round_fn(exp.state, exp.data, doubled)[0])
        other_counts = digest(round_fn(exp.state, fewer, exp.hparams)[0])
        participation = {
            "sampled": jax.device_get(round_fn(exp.state, exp.data, sampled)[1]),
            "dropout": jax.device_get(round_fn(exp.state, exp.data, dropout)[1]),
        }
        poisoned_state, poisoned_metrics = round_fn(exp.state, attacked, exp.hparams)
        participation["poisoned"] = (digest(poisoned_state), jax.device_get(poisoned_metrics))
    return {
        "exp": exp, "state": state, "digests": digests, "metrics": metrics, "compiles": counter.count,
        "round_fn": round_fn, "other_hparams": other_hparams, "other_counts": other_counts,
        "participation": participation,
    }


@pytest.fixture(scope="module")
def runs():
    return {algorithm: _run(algorithm) for algorithm in ALGORITHMS}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_one_program_across_rounds_hyper_parameters_and_sample_counts(runs, algorithm):
    run = runs[algorithm]
    assert run["compiles"] == 0  # after round 1's program
    assert int(run["state"].round) == 2
    assert run["digests"][0] != run["digests"][1]  # the model moves every round
    if run["exp"].algorithm.trained_ratio(1.0) is not None:  # clients train (not serveralone)
        assert run["other_counts"] != run["digests"][0]  # the new counts reached the clients
    assert run["other_hparams"] != run["digests"][0]  # the new values reached the round
    assert set(run["exp"].hparams) == set(algorithm_entry(algorithm).hparams)


CLIENT_ALGORITHMS = tuple(a for a in ALGORITHMS if a != "serveralone")  # serveralone has no clients


@pytest.mark.parametrize("algorithm", CLIENT_ALGORITHMS)
def test_sampling_dropout_and_poisoning_in_the_same_program(runs, algorithm):
    """Every algorithm runs the shared upload screen; all of it is round input, not structure."""
    run = runs[algorithm]
    sampled, dropout = run["participation"]["sampled"], run["participation"]["dropout"]
    assert sum(int(np.sum(p)) for p in sampled["participating"]) == 2  # clients_per_round = 2
    assert int(dropout["dropped_clients"]) == 2  # floor(0.5 * 4)
    assert sum(int(np.sum(p)) for p in dropout["participating"]) == 2
    poisoned_digest, poisoned = run["participation"]["poisoned"]
    assert int(poisoned["excluded_clients"]) == 0  # a finite attack passes the screen ...
    assert poisoned_digest != run["digests"][0]  # ... and changes the result
    assert np.isfinite(float(poisoned["global_loss"])) or not _has_global_model(run["exp"])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_rerun_from_the_same_state_is_identical(runs, algorithm):
    run = runs[algorithm]
    exp = run["exp"]
    state, _ = run["round_fn"](exp.state, exp.data, exp.hparams)
    assert params_digest(exp.algorithm.digest(state)) == run["digests"][0]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_checkpoint_round_trip_continues_identically(runs, algorithm, tmp_path):
    """Save after round 1, restore into the abstract initial state, run round 2: round 2's digest."""
    run = runs[algorithm]
    exp = run["exp"]
    after_one, _ = run["round_fn"](exp.state, exp.data, exp.hparams)
    saver = Checkpointer(tmp_path, keep=2)
    saver.save(after_one, {"config": {}, "data_digest": ""})
    saver.close()
    restored, meta, bad = find_latest(tmp_path, jax.eval_shape(lambda: exp.state), lambda message: None)
    assert meta["round"] == 1 and bad == []
    restored = _same_layout(restored, exp.state)
    state, _ = run["round_fn"](restored, exp.data, exp.hparams)
    assert params_digest(exp.algorithm.digest(state)) == run["digests"][1]


# test_sharding pads fedconv with empty slots for 4 devices and compares with 1 device; here,
# one algorithm per code path a padded slot could disturb (suite time): slice-averaging with
# per-slot channels (feddropout: random ones, a superset of heterofl's and fedrolex's
# gather), cross-client scores (fedmd), per-client masks (lotteryfl) and per-client channel
# sets chosen by a score (hermes; tailorfl differs only in the score). fedavg_small/full,
# standalone and serveralone share those paths.
PADDED_HERE = ("feddropout", "fedmd", "lotteryfl", "hermes")


@pytest.mark.parametrize("algorithm", PADDED_HERE)
def test_padded_slots_change_nothing(runs, algorithm):
    """An empty slot in every tier (what padding a tier for more devices adds) changes no
    real client's result: the same round-1 models and client accuracies, up to the order of
    the cross-client sums."""
    config = tiny_config()
    config.algorithm = algorithm
    padded = build_experiment(config, slot_multiple=3)
    assert padded.spec.tier_capacity == (3, 3)
    state, metrics = jax.jit(padded.algorithm.round)(padded.state, padded.data, padded.hparams)
    run = runs[algorithm]
    reference, reference_metrics = run["round_fn"](run["exp"].state, run["exp"].data, run["exp"].hparams)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    if _has_global_model(padded):
        kept, start, reference_kept = state.global_vars, run["exp"].state.global_vars, reference.global_vars
    else:  # the clients' own models (fedmd), real slots only
        kept = tuple(jax.tree.map(lambda x: x[:2], c) for c in state.client_vars)
        start, reference_kept = run["exp"].state.client_vars, reference.client_vars
    jax.tree.map(close, kept, reference_kept)
    for t in range(2):
        close(metrics["client_accuracy"][t][:2], reference_metrics["client_accuracy"][t])
        if "participating" in metrics:  # serveralone has no clients to screen
            assert not bool(metrics["participating"][t][2])  # the empty slot never takes part
    moved = jax.tree.leaves(reference_kept)[-1], jax.tree.leaves(start)[-1]
    assert not np.allclose(*moved)  # the comparison is not between two untouched models


def test_fedconv_sr1_clients_and_fedavg_full_draw_the_same_batches():
    """Named streams: with every client at SR 1 and no server tuning, FedConv's round is
    FedAvg's on the full model (same init, same client keys, same mean), to the bit."""
    digests = {}
    for algorithm in ("fedconv", "fedavg_full"):
        config = tiny_config()
        config.algorithm, config.shrink_ratios = algorithm, (1.0,) * 4
        config.pretrain_epochs = config.compress_epochs = config.dilate_epochs = config.aggregate_epochs = 0
        config.aggregation = "mean"
        # "holders" computes W + mean(update): the same mean as FedAvg's, not the same bits
        config.fedconv.aggregation_scope = "all"
        exp = build_experiment(config)
        state, _ = jax.jit(exp.algorithm.round)(exp.state, exp.data, exp.hparams)
        digests[algorithm] = params_digest(state.global_vars["params"])
    assert digests["fedconv"] == digests["fedavg_full"]


@pytest.mark.parametrize("algorithm", BASELINES)
def test_baseline_reports_fedconvs_metrics(runs, algorithm):
    run = runs[algorithm]
    exp, state, digests = run["exp"], run["state"], run["digests"]
    last = run["metrics"][-1]
    assert [a.shape for a in last["client_accuracy"]] == [(2,), (2,)]
    assert [c.shape for c in last["client_test_count"]] == [(2,), (2,)]
    assert all(np.all((a >= 0) & (a <= 1)) for a in last["client_accuracy"])
    if not _has_global_model(exp):
        assert np.isnan(last["global_accuracy"])
        before = jax.tree.leaves(exp.state.client_vars)
        assert all(not np.allclose(a, b) for a, b in zip(before, jax.tree.leaves(state.client_vars)))
        assert digests[0] != digests[1]  # the digest covers the clients' own models
    else:
        assert 0.0 <= float(last["global_accuracy"]) <= 1.0 and np.isfinite(last["global_loss"])
        assert digests[0] != digests[1]  # the global model moves every round
        full = exp.spec.model.init(jax.random.key(0), 0.5 if algorithm == "fedavg_small" else 1.0)
        assert jax.tree.map(np.shape, state.global_vars) == jax.tree.map(np.shape, full)


def test_fedrolex_equals_heterofl_in_round_one_then_rolls(runs):
    """Round 0 rolls by 0 channels: the same slices as HeteroFL; round 1 differs."""
    hetero, rolex, dropout = (runs[a]["digests"] for a in ("heterofl", "fedrolex", "feddropout"))
    assert hetero[0] == rolex[0]
    assert hetero[1] != rolex[1]
    assert dropout[0] != hetero[0]


def test_optional_pretraining_on_d_runs_in_round_one_only():
    config = tiny_config()  # pretrain_epochs = 1
    config.algorithm = "heterofl"
    exp = build_experiment(config)
    cfg, state = exp.spec, exp.state

    prepare = pretrain_step(cfg, 1.0, True)

    @jax.jit
    def pretrained(state):
        new = prepare(state, exp.data, exp.hparams).global_vars
        loss = lambda v: evaluate(lambda x: cfg.model.apply(1.0, v, x)[0], exp.data.images, exp.data.labels, exp.data.server_holdout)[1]
        return new, loss(state.global_vars), loss(new)

    new, before, after = pretrained(state)
    assert params_digest(exp.algorithm.digest(state.replace(global_vars=new))) != params_digest(exp.algorithm.digest(state))
    assert float(after) <= float(before)  # held-out selection keeps the better of start and epoch 1
    later, _, _ = pretrained(state.replace(round=state.round + 1))
    assert params_digest(exp.algorithm.digest(state.replace(global_vars=later))) == params_digest(exp.algorithm.digest(state))
    assert pretrain_step(cfg, 1.0, False) is None  # off: no step at all
