"""Bytes per model family and SR: what a client receives and trains, and what the server holds.

Shapes only (`jax.eval_shape`; nothing is initialised or compiled), so the numbers are exact
and the full-width families cost seconds:

* per SR tier: the sub-model's parameters (what a client downloads and uploads), and one
  client's dilation filters with their Adam state (what the server keeps per client);
* the whole FedConv server state (global model, compression filters per tier, dilation
  filters per client slot, aggregation weights, every Adam state) at 20 and 100 clients in the
  paper's SR mix (20/40/20/20% at SR 1/0.75/0.5/0.25): the device memory it occupies.

    python benchmarks/memory_table.py --out benchmarks/results/memory_table.json
"""

import argparse
import json
import pathlib
import sys

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from synthetic_round import _config, paper_ratios  # noqa: E402

from fedconv_jax.algorithms.fedconv.dilation import init_dilation_filters  # noqa: E402
from fedconv_jax.algorithms.fedconv.filters import FilterConfig  # noqa: E402
from fedconv_jax.core.tuning import make_optimizer  # noqa: E402
from fedconv_jax.data import Dataset  # noqa: E402
from fedconv_jax.experiment import build_experiment  # noqa: E402
from fedconv_jax.models import make_model  # noqa: E402
from fedconv_jax.models.zoo import example_model  # noqa: E402

FAMILIES = ("cnn", "resnet18", "googlenet", "har_wiar", "har_dcd", "har_harbox")
RATIOS = (1.0, 0.75, 0.5, 0.25)


def nbytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def family_rows(name: str, clients: tuple[int, ...]) -> dict:
    shape = example_model(name).input_shape
    model = make_model(name, 10, shape, "im2col")
    full = jax.eval_shape(lambda: model.init(jax.random.key(0)))["params"]
    tiers = {}
    for ratio in RATIOS:
        sub = jax.eval_shape(lambda r=ratio: model.init(jax.random.key(0), r))["params"]
        row = {"sub_model_bytes": nbytes(sub)}
        if ratio < 1.0:
            filters = jax.eval_shape(lambda s=sub: init_dilation_filters(jax.random.key(0), full, s, FilterConfig()))
            row["dilation_filter_bytes"] = nbytes(filters)
            row["dilation_adam_bytes"] = nbytes(jax.eval_shape(make_optimizer().init, filters))
        tiers[f"{ratio:g}"] = row
    rng = np.random.default_rng(0)
    data = Dataset(  # a handful of examples of the family's input: the state does not depend on data
        name="shapes_only", images=rng.random((4000, *shape), dtype=np.float32),
        labels=np.arange(4000, dtype=np.int32) % 10, num_classes=10,
    )
    server = {}
    for n in clients:
        config = _config(
            model=name, num_clients=n, shrink_ratios=paper_ratios(n), partition="iid", client_costs=False, phase_timing=False
        )
        server[str(n)] = nbytes(build_experiment(config, abstract_state=True, dataset=data).state)
    return {"model": name, "input": list(shape), "tiers": tiers, "server_state_bytes": server}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(FAMILIES))
    parser.add_argument("--clients", default="20,100")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    clients = tuple(int(c) for c in args.clients.split(","))
    rows = []
    for name in args.models.split(","):
        rows.append(family_rows(name, clients))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
