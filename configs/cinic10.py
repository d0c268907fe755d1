"""The paper's CINIC10 setting: GoogLeNet, 20 clients, SR 4x1, 8x0.75, 4x0.5, 4x0.25, Dirichlet alpha.

Needs CINIC-10 in the data dir once (never downloaded by a run; README "Data sets"):

    fedconv-jax data import cinic10 --from CINIC-10/   (the unpacked CINIC-10.tar.gz)
    fedconv-jax run --config configs/cinic10.py --workdir runs/cinic10

TFDS's catalogue has no CINIC-10: the builder is fedconv_jax's own (data/cinic10.py; train,
validation and test folders, 270,000 images, all read: the run carves its own splits). Sized for
an accelerator, like configs/cifar10.py; `--config.global_width=0.125` is the CPU-sized model.
"""

from fedconv_jax.config import default_config, paper_client_setting


def get_config():
    config = paper_client_setting(default_config())
    config.dataset = "tfds:cinic10"
    config.model = "googlenet"
    return config
