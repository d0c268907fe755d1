"""The client axis sharded over a 1-D device mesh; everything else replicated.

The round stays ONE jitted program: its per-client arrays (client index lists, masks, sample
counts, dilation filters and their Adam states, aggregation weights and theirs) are laid out
along the mesh axis "clients", so each device trains and dilates its own share of every
tier's clients, and XLA inserts the gathers that aggregation needs. Each tier's capacity is
padded up to a multiple of the device count with masked-out slots (device_data.py), which
never change results: an absent slot trains on no data, gets zero aggregation weight, and
keeps its filters.

On CPU, N devices are N XLA:CPU devices in one process (`jax_num_cpu_devices`, a documented
JAX option that must be set before the backend starts): each runs its clients on its own
thread, which is how one program uses several cores for many small client steps.
"""

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
from jax.sharding import NamedSharding, PartitionSpec

from fedconv_jax.core.algorithm import FederatedAlgorithm
from fedconv_jax.core.client import map_clients

AXIS = "clients"


def request_cpu_devices(count: int) -> None:
    """Asks for `count` XLA:CPU devices; a no-op once JAX's backends have started."""
    if count <= 1:
        return
    try:
        jax.config.update("jax_num_cpu_devices", max(count, jax.config.jax_num_cpu_devices))
    except RuntimeError:  # backends already initialised: keep what exists
        pass


def padded_capacity(capacity: int, devices: int) -> int:
    """`capacity` rounded up to a multiple of `devices` (every device gets whole slots)."""
    return math.ceil(capacity / devices) * devices


def make_client_mesh(devices: int) -> jax.sharding.Mesh:
    """A 1-D mesh named "clients" over the first `devices` devices."""
    available = jax.device_count()
    if not 1 <= devices <= available:
        raise ValueError(f"devices={devices} is not allowed: an integer in [1, {available}] (jax.device_count())")
    return jax.make_mesh(
        (devices,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:devices]
    )


def _client_axis(mesh, tree):
    """Leading axis on "clients" for every array with one; scalars (Adam's count) replicated."""
    return jax.tree.map(
        lambda x: NamedSharding(mesh, PartitionSpec(AXIS) if x.ndim >= 1 else PartitionSpec()), tree
    )


def map_clients_sharded(mesh, local_map, shared, *xs):
    """`local_map(shared, *xs)` on each device's block of the leading client axis (shard_map).

    `shared` (the data set, a tier's sub-model) is replicated; inside a device the clients
    run as `local_map` says (vmap or lax.map).
    """
    spec = PartitionSpec(AXIS)
    return jax.shard_map(
        local_map, mesh=mesh, in_specs=(PartitionSpec(),) + (spec,) * len(xs), out_specs=spec,
        check_vma=False,  # scan carries start replicated and become per-client
    )(shared, *xs)


def map_clients_over_devices(
    devices: int, parallelism: str, chunk: int, fn: Callable, shared, *xs, remat: bool = False
):
    """fn(shared, *one_client_slices) over the leading client axis of `xs`, the axis sharded
    over the first `devices` devices; within a device as `client.map_clients` says.

    `shared` (the data set, a tier's model) is passed, not closed over, so that with several
    devices it can enter `shard_map` as a replicated input. Used by FedConv's round and by
    every baseline. `remat` rematerialises each client's function in reverse mode.
    """

    def local_map(shared, *xs):
        return map_clients(parallelism, chunk, functools.partial(fn, shared), *xs, remat=remat)

    if devices == 1:
        return local_map(shared, *xs)
    return map_clients_sharded(make_client_mesh(devices), local_map, shared, *xs)


def replicated(mesh, tree):
    """Every leaf of `tree` replicated over the mesh."""
    return jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), tree)


def place(tree, shardings):
    """`jax.device_put(tree, shardings)`, also where a sharding spans other processes' devices
    (every process passes the same value). Typed PRNG keys travel as their key data there:
    `device_put` takes keys only to addressable devices."""

    def one(leaf, sharding):
        if sharding.is_fully_addressable or not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.device_put(leaf, sharding)
        data = jax.device_put(jax.random.key_data(leaf), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))

    return jax.tree.map(one, tree, shardings)


def data_shardings(mesh, data):
    """Per-client index lists, masks and sample counts along "clients"; the data set replicated.

    `data` is a round.RoundData (this module does not import round.py: round.py imports it).
    """
    return data._replace(
        images=NamedSharding(mesh, PartitionSpec()),
        labels=NamedSharding(mesh, PartitionSpec()),
        server_train=replicated(mesh, data.server_train),
        server_holdout=replicated(mesh, data.server_holdout),
        server_test=replicated(mesh, data.server_test),
        client_train=_client_axis(mesh, data.client_train),
        client_test=_client_axis(mesh, data.client_test),
        client_mask=_client_axis(mesh, data.client_mask),
        num_samples=_client_axis(mesh, data.num_samples),
        poisoned=_client_axis(mesh, data.poisoned),
    )


def state_shardings(mesh, state, per_client_fields: tuple[str, ...]):
    """The state fields stacked over client slots (the algorithm's `per_client_fields`:
    FedConv's dilation filters and aggregation weights, standalone clients' models) along
    "clients"; the rest replicated."""
    return state.replace(**{
        f.name: (_client_axis if f.name in per_client_fields else replicated)(mesh, getattr(state, f.name))
        for f in dataclasses.fields(state)
    })


def jit_round(
    algorithm: FederatedAlgorithm, mesh, state, data, hparams, donate: bool = True, compiler_options=None
):
    """jit of `algorithm.round(state, data, hparams)` with the state's layout pinned on the
    way out, so round r+1 reuses round r's program; the hyper-parameters are replicated.
    `compiler_options`: XLA options of this program only (see `xla_compiler_options`)."""
    shardings = state_shardings(mesh, state, algorithm.per_client_fields)
    metrics = jax.eval_shape(algorithm.round, state, data, hparams)[1]
    return jax.jit(
        algorithm.round,
        in_shardings=(shardings, data_shardings(mesh, data), replicated(mesh, hparams)),
        out_shardings=(shardings, replicated(mesh, metrics)),
        donate_argnums=(0,) if donate else (),
        compiler_options=compiler_options,
    )


def xla_compiler_options(opt_level: int | str) -> dict | None:
    """`jax.jit` compiler options for the config's `xla_opt_level` ("auto": none)."""
    return None if opt_level == "auto" else {"xla_backend_optimization_level": int(opt_level)}


__all__ = [
    "AXIS",
    "data_shardings",
    "jit_round",
    "make_client_mesh",
    "map_clients_over_devices",
    "map_clients_sharded",
    "padded_capacity",
    "place",
    "replicated",
    "request_cpu_devices",
    "state_shardings",
    "xla_compiler_options",
]
