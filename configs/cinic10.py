"""The paper's CINIC10 setting: GoogLeNet, 20 clients, SR 4x1, 8x0.75, 4x0.5, 4x0.25, Dirichlet alpha.

Needs CINIC-10 in the data dir once (never downloaded by a run; README "Data sets"):

    fedconv-jax data import cinic10 --from CINIC-10/   (the unpacked CINIC-10.tar.gz)
    fedconv-jax run --config configs/cinic10.py --workdir runs/cinic10

TFDS's catalogue has no CINIC-10: the builder is fedconv_jax's own (data/cinic10.py; train,
validation and test folders, 270,000 images, all read: the run carves its own splits). Sized for
an accelerator, like configs/cifar10.py; `--config.global_width=0.125` is the CPU-sized model.
"""

from fedconv_jax.config import default_config


def get_config():
    config = default_config()
    config.dataset = "tfds:cinic10"
    config.model = "googlenet"
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
