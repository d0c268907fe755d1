"""Per-client costs: exact bytes sent, XLA FLOPs against an analytic count, memory."""

import math

import numpy as np
import pytest

from fedconv_jax.config import default_config
from fedconv_jax.core.algorithm import make_algorithm
from fedconv_jax.core.spec import RoundSpec
from fedconv_jax.costs import client_costs, step_costs
from fedconv_jax.models import make_model

MNIST_PARAMS = {"1": 20_490, "0.75": 14_506, "0.5": 9_098}  # SPEC §3


@pytest.fixture(scope="module")
def cfg():
    model = make_model("cnn", 10, (28, 28, 1), "im2col")
    return RoundSpec(model=model, tier_ratios=(1.0, 0.75, 0.5), tier_capacity=(1, 2, 1), local_epochs=3)


def _algorithm(name, spec):
    return make_algorithm(name, spec, default_config())


@pytest.fixture(scope="module")
def samples():
    return [np.array([64.0]), np.array([33.0, 100.0]), np.array([32.0])]


@pytest.fixture(scope="module")
def fedconv_costs(cfg, samples):
    return client_costs(_algorithm("fedconv", cfg), samples)


def _analytic_train_flops(ratio, batch):
    """2 * MACs of the forward pass (convs as matmuls, dense), x3 for forward + backward."""
    c1, c2 = math.floor(16 * ratio), math.floor(32 * ratio)
    forward = 2 * (28 * 28 * 9 * 1 * c1 + 14 * 14 * 9 * c1 * c2 + 7 * 7 * c2 * 10)
    return 3 * forward * batch


def test_bytes_are_the_tier_models_parameters(fedconv_costs):
    for tier, params in MNIST_PARAMS.items():
        assert fedconv_costs[tier]["bytes_down"] == fedconv_costs[tier]["bytes_up"] == 4 * params


def test_flops_match_an_analytic_count_and_scale_with_steps(cfg, fedconv_costs):
    for tier in MNIST_PARAMS:
        got = fedconv_costs[tier]["flops_per_step"]
        ratio = got / _analytic_train_flops(float(tier), cfg.local_batch_size)
        assert 0.8 < ratio < 1.5, (tier, ratio)
    per_step = fedconv_costs["0.75"]["flops_per_step"]
    # 3 epochs of ceil(33/32) = 2 and ceil(100/32) = 4 steps.
    assert fedconv_costs["0.75"]["train_flops"] == [6 * per_step, 12 * per_step]
    assert fedconv_costs["1"]["peak_memory_bytes"] > fedconv_costs["0.5"]["peak_memory_bytes"] > 4 * MNIST_PARAMS["0.5"]


def test_costs_follow_what_each_algorithm_trains_and_sends(cfg, samples, fedconv_costs):
    small = client_costs(_algorithm("fedavg_small", cfg), samples)
    assert all(small[t]["bytes_up"] == 4 * MNIST_PARAMS["0.5"] for t in MNIST_PARAMS)
    assert small["1"]["flops_per_step"] == fedconv_costs["0.5"]["flops_per_step"]
    alone = client_costs(_algorithm("standalone", cfg), samples)
    assert alone["0.75"]["bytes_down"] == 0 and alone["0.75"]["train_flops"] == fedconv_costs["0.75"]["train_flops"]
    server = client_costs(_algorithm("serveralone", cfg), samples)
    assert server["1"]["train_flops"] == [0.0] and server["1"]["bytes_up"] == 0
    with pytest.raises(ValueError, match="algorithm='lottery'"):
        _algorithm("lottery", cfg)


def test_step_costs_of_the_batchnorm_model_count_its_statistics():
    model = make_model("cnn_bn", 10, (8, 8, 1), "im2col")
    cfg = RoundSpec(model=model, tier_ratios=(1.0,), tier_capacity=(1,))
    costs = client_costs(_algorithm("heterofl", cfg), [np.array([10.0])])["1"]
    # conv 1->16, conv 16->32, head 128->10, BN scale/bias/mean/var for 16 + 32 channels.
    params = (9 * 16 + 16) + (9 * 16 * 32 + 32) + (128 * 10 + 10) + 4 * (16 + 32)
    assert costs["bytes_down"] == 4 * params
    assert step_costs(cfg, 1.0)["flops_per_step"] == costs["flops_per_step"]
