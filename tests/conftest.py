"""Shared fixtures. Tests run on CPU with tiny models; every compile costs seconds here."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

from fedconv_jax.models import make_model  # noqa: E402


@pytest.fixture(scope="session")
def mnist_model():
    return make_model("cnn", 10, (28, 28, 1), "im2col")


@pytest.fixture(scope="session")
def global_params(mnist_model):
    return mnist_model.init(jax.random.key(0))["params"]
