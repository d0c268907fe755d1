"""UCI HAPT with natural clients: one client per user, the paper's HARBox CNN, 24 of 30 users.

Needs the HAPT windows in the data dir once (no download at run time; README "Data sets"):

    fedconv-jax data import hapt --from ../shared/data/HAPT.pkl.gz
    fedconv-jax run --config configs/hapt.py --workdir runs/hapt

10,017 windows of 2.56 s (128 samples x 6 channels: accelerometer and gyroscope at 50 Hz),
six basic activities. 24 users are clients (train on the first 80% of each of their
activities, test on the rest); the other 6 are held out for the server, whose set D (40%
of their windows) and test set (60%) thus come from people no client is. SR mix as the
paper's 20/40/20/20%: 5x1, 10x0.75, 5x0.5, 4x0.25.
"""

from fedconv_jax.config import default_config


def get_config():
    config = default_config()
    config.dataset = "tfds:hapt"
    config.model = "har_harbox"  # 3x3 stride-2 convs with frozen BatchNorm; 128x6 -> 64x3 -> 32x2
    config.partition = "natural"
    config.num_clients = 24
    config.shrink_ratios = (1.0,) * 5 + (0.75,) * 10 + (0.5,) * 5 + (0.25,) * 4
    # D : server test = 0.4 : 0.6 of the held-out users; client train : test = 0.8 : 0.2.
    config.split_fractions = (0.10, 0.15, 0.60, 0.15)
    config.rounds = 20
    config.local_epochs = 5
    config.pretrain_epochs = 5
    config.compress_epochs = 5
    config.dilate_epochs = 5
    config.aggregate_epochs = 5
    return config
