"""The paper's CIFAR10 setting: ResNet18, 20 clients, SR 4x1, 8x0.75, 4x0.5, 4x0.25, Dirichlet alpha.

Needs CIFAR-10 in the data dir once (never downloaded by a run; README "Data sets"):

    fedconv-jax data import cifar10 --from cifar-10-python.tar.gz
    fedconv-jax run --config configs/cifar10.py --workdir runs/cifar10

A TFDS-prepared `cifar10` (`fedconv-jax data prepare cifar10`, TensorFlow and internet) works the
same. Sized for an accelerator: on a 2-core CPU one full-width round takes many minutes and its
program about 7 minutes to compile (benchmarks/README.md); `--config.global_width=0.125` is the
CPU-sized model.
"""

from fedconv_jax.config import default_config


def get_config():
    config = default_config()
    config.dataset = "tfds:cifar10"
    config.model = "resnet18"
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
