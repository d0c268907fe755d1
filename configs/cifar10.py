"""The paper's CIFAR10 setting: ResNet18, 20 clients, SR 4x1, 8x0.75, 4x0.5, 4x0.25, Dirichlet alpha.

Needs CIFAR-10 in the data dir once (never downloaded by a run; README "Data sets"):

    fedconv-jax data import cifar10 --from cifar-10-python.tar.gz
    fedconv-jax run --config configs/cifar10.py --workdir runs/cifar10

A TFDS-prepared `cifar10` (`fedconv-jax data prepare cifar10`, TensorFlow and internet) works the
same. Sized for an accelerator: on a 2-core CPU one full-width round takes many minutes and its
program about 7 minutes to compile (benchmarks/README.md); `--config.global_width=0.125` is the
CPU-sized model.
"""

from fedconv_jax.config import default_config, paper_client_setting


def get_config():
    config = paper_client_setting(default_config())
    config.dataset = "tfds:cifar10"
    config.model = "resnet18"
    return config
