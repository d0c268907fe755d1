"""PyTorch peer of the client training in round_throughput.py (optional: needs torch).

The same model (SPEC §6 MNIST CNN: conv3x3 16 -> ReLU -> maxpool2 -> conv3x3 32 -> ReLU ->
maxpool2 -> dense 10), batch 32, Adam 1e-3, cross-entropy, the same synthetic images and
client index lists, eager mode: what a PyTorch FL simulation does per client step.
"""

import time

import numpy as np


def available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def make_runner(images: np.ndarray, labels: np.ndarray, client_idx: np.ndarray, epochs: int, batch: int, lr: float, seed: int = 0):
    """Returns run() -> seconds: every client trains `epochs` over its index list from one init.

    images: (N, 28, 28, 1) float32; labels: (N,) int; client_idx: (K, n) int (all valid).
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    x_all = torch.from_numpy(np.array(images.transpose(0, 3, 1, 2)))  # a writable copy
    y_all = torch.from_numpy(labels.astype(np.int64))

    def model():
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
        )

    init = model().state_dict()
    rng = np.random.default_rng(seed)
    loss_fn = nn.CrossEntropyLoss()

    def run() -> float:
        start = time.perf_counter()
        for idx in client_idx:
            net = model()
            net.load_state_dict(init)
            opt = torch.optim.Adam(net.parameters(), lr=lr)
            for _ in range(epochs):
                order = torch.from_numpy(rng.permutation(idx))
                for b in range(0, len(order), batch):
                    sel = order[b : b + batch]
                    opt.zero_grad(set_to_none=True)
                    loss_fn(net(x_all[sel]), y_all[sel]).backward()
                    opt.step()
        return time.perf_counter() - start

    return run


def versions() -> dict:
    import torch

    return {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
