"""fedconv_jax: FedConv (MobiSys 2024) and its baselines as pure, jit-compiled JAX functions.

What a researcher composes, importable from the top level (README, "Python API"):

    import fedconv_jax as fc
    exp = fc.build_experiment(config)                 # data on the device, spec, initial state
    state, metrics = jax.jit(exp.algorithm.round)(exp.state, exp.data, exp.hparams)

Names are resolved on first use, so `import fedconv_jax` (and the CLI's start) does not pay
for JAX, Flax and TFDS until something needs them.
"""

import importlib

# name -> module that defines it
_EXPORTS = {
    # configs, experiments, traced hyper-parameters
    "default_config": "fedconv_jax.config",
    "load_config": "fedconv_jax.config",
    "validate": "fedconv_jax.config",
    "make_hparams": "fedconv_jax.config",
    "make_round_spec": "fedconv_jax.config",
    "Experiment": "fedconv_jax.experiment",
    "build_experiment": "fedconv_jax.experiment",
    "initial_state": "fedconv_jax.experiment",
    "run_experiment": "fedconv_jax.experiment",
    # the algorithm protocol and registry
    "FederatedAlgorithm": "fedconv_jax.core.algorithm",
    "RoundSpec": "fedconv_jax.core.spec",
    "algorithm_names": "fedconv_jax.core.algorithm",
    "make_algorithm": "fedconv_jax.core.algorithm",
    "register": "fedconv_jax.core.algorithm",
    # FedConv's learned steps (SPEC §3-5)
    "FilterConfig": "fedconv_jax.algorithms.fedconv.filters",
    "init_filters": "fedconv_jax.algorithms.fedconv.filters",
    "compress": "fedconv_jax.algorithms.fedconv.compression",
    "dilate": "fedconv_jax.algorithms.fedconv.dilation",
    "aggregate": "fedconv_jax.algorithms.fedconv.aggregation",
    "init_aggregation_weights": "fedconv_jax.algorithms.fedconv.aggregation",
    # training, tuning, evaluation
    "local_train": "fedconv_jax.core.client",
    "tune": "fedconv_jax.core.tuning",
    "TuningConfig": "fedconv_jax.core.tuning",
    "evaluate": "fedconv_jax.core.tuning",
    # gradients through rounds
    "unroll": "fedconv_jax.differentiable",
    "holdout_loss": "fedconv_jax.differentiable",
    # data and models
    "Dataset": "fedconv_jax.data",
    "load_dataset": "fedconv_jax.data",
    "split_federated": "fedconv_jax.data",
    "RoundData": "fedconv_jax.core.data",
    "make_model": "fedconv_jax.models",
    "model_names": "fedconv_jax.models",
    "register_model": "fedconv_jax.models",
}

__all__ = list(_EXPORTS)  # noqa: PLE0605 (built from the table above)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fedconv_jax' has no attribute {name!r}")
    importlib.import_module("fedconv_jax.algorithms")  # the registry is filled on import
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # resolved once
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
