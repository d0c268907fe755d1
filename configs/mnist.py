"""The paper's MNIST setting (SPEC §6): 20 clients, SR 4x1, 8x0.75, 4x0.5, 4x0.25, Dirichlet alpha.

Needs MNIST in the data dir once (no download; see README "Data sets"):

    fedconv-jax data import mnist --from ../shared/data/mnist.pkl.gz
    fedconv-jax run --config configs/mnist.py --workdir runs/mnist

Every tuning loop runs the paper's 20 epochs and clients 5 local epochs: a round takes minutes
on a 2-core CPU. Override for shorter runs, e.g. --config.rounds=5 --config.dilate_epochs=2.
"""

from fedconv_jax.config import default_config, paper_client_setting


def get_config():
    config = paper_client_setting(default_config())
    config.dataset = "tfds:mnist"
    return config
