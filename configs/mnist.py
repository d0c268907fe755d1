"""The paper's MNIST setting (SPEC §6): 20 clients, SR 4x1, 8x0.75, 4x0.5, 4x0.25, Dirichlet alpha.

Needs MNIST in the data dir once (no download; see README "Data sets"):

    fedconv-jax data import mnist --from ../shared/data/mnist.pkl.gz
    fedconv-jax run --config configs/mnist.py --workdir runs/mnist

Every tuning loop runs the paper's 20 epochs and clients 5 local epochs: a round takes minutes
on a 2-core CPU. Override for shorter runs, e.g. --config.rounds=5 --config.dilate_epochs=2.
"""

from fedconv_jax.config import default_config


def get_config():
    config = default_config()
    config.dataset = "tfds:mnist"
    config.num_clients = 20
    config.shrink_ratios = (1.0,) * 4 + (0.75,) * 8 + (0.5,) * 4 + (0.25,) * 4
    config.alpha = 1.0  # the paper sweeps 0.05, 0.1, 1, 1e4
    config.rounds = 100
    config.local_epochs = 5
    config.pretrain_epochs = 5
    config.compress_epochs = 20
    config.dilate_epochs = 20
    config.aggregate_epochs = 20
    return config
