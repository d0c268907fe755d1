"""Every federated algorithm, each registered under its name (core.algorithm.register).

Importing this package registers them all; a new algorithm is one module plus one import
line here. FedConv is a package (`fedconv/`); the baselines of SPEC §7 share `common.py`.
The import order is the order `algorithm_names()` lists them in.
"""
# isort: skip_file

from fedconv_jax.algorithms import fedconv  # noqa: F401  (fedconv)
from fedconv_jax.algorithms import fedavg  # noqa: F401  (fedavg_small, fedavg_full)
from fedconv_jax.algorithms import heterofl  # noqa: F401  (heterofl, fedrolex, feddropout)
from fedconv_jax.algorithms import alone  # noqa: F401  (standalone, serveralone)
from fedconv_jax.algorithms import fedmd  # noqa: F401  (fedmd)
from fedconv_jax.algorithms import lotteryfl  # noqa: F401  (lotteryfl)
from fedconv_jax.algorithms import hermes  # noqa: F401  (hermes)
from fedconv_jax.algorithms import tailorfl  # noqa: F401  (tailorfl)
