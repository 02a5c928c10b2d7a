"""Multi-host start-up and the data-parallel mesh (design.md §3: ``jax.jit`` with shardings).

Parameters are replicated, batches are split along the mesh axis ``data`` over every device of
every process. Each process feeds only its own slice of the global batch.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# Environment variables that mean "this process is one of several" for jax's auto-detection
# (SLURM, Open MPI, explicit coordinator, multi-host TPU slices).
_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
                "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def _cluster_detected() -> bool:
    if os.environ.get("SLURM_NTASKS", "1") not in ("", "1"):
        return True
    if os.environ.get("OMPI_COMM_WORLD_SIZE", "1") not in ("", "1"):
        return True
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts or any(os.environ.get(k) for k in _CLUSTER_ENV[:1] + _CLUSTER_ENV[4:])


_DISTRIBUTED = {"processes": 0}  # set once this process has joined a multi-process run


def is_multiprocess() -> bool:
    """Whether this process joined a multi-process run (without touching the backends)."""
    return _DISTRIBUTED["processes"] > 1


def process_count() -> int:
    return max(1, _DISTRIBUTED["processes"])


def maybe_initialize_distributed(mesh_cfg) -> bool:
    """Calls ``jax.distributed.initialize`` when the run is multi-process; must run before any
    other jax call touches a device. Returns True when it initialized.

    mesh.distributed: "yes" always, "no" never, "auto" when an explicit coordinator is set or a
    cluster environment (SLURM, Open MPI, multi-host TPU) is detected.

    A run whose peers do not all connect within ``mesh.init_timeout_s`` stops (the runtime
    aborts the process, naming the deadline); once running, a process that stops sending
    heartbeats for ``mesh.heartbeat_timeout_s`` is declared dead and the others stop instead
    of waiting in a collective forever (docs/reliability.md).
    """
    explicit = bool(mesh_cfg.coordinator_address) or mesh_cfg.num_processes > 1
    if mesh_cfg.distributed == "no" or (mesh_cfg.distributed == "auto"
                                        and not (explicit or _cluster_detected())):
        return False
    kwargs = {}
    if mesh_cfg.coordinator_address:
        kwargs["coordinator_address"] = mesh_cfg.coordinator_address
    if mesh_cfg.num_processes > 0:
        kwargs["num_processes"] = mesh_cfg.num_processes
    if mesh_cfg.process_id >= 0:
        kwargs["process_id"] = mesh_cfg.process_id
    if jax.config.jax_platforms in (None, "", "cpu") and os.environ.get("JAX_PLATFORMS", "") in ("", "cpu"):
        # CPU collectives across processes need an explicit implementation.
        try:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        except Exception:  # older/newer jax without the option: its default is used
            pass
    jax.distributed.initialize(**kwargs, initialization_timeout=int(mesh_cfg.init_timeout_s),
                               heartbeat_timeout_seconds=int(mesh_cfg.heartbeat_timeout_s))
    _DISTRIBUTED["processes"] = jax.process_count()
    return True


def make_data_mesh(num_devices: int = -1) -> Mesh:
    """1-D mesh with axis ``data`` over ``num_devices`` (-1 = all devices of all processes)."""
    n = jax.device_count() if num_devices == -1 else num_devices
    if n > jax.device_count():
        raise ValueError(f"mesh.data={n} but only {jax.device_count()} devices exist")
    if jax.process_count() > 1 and n != jax.device_count():
        raise ValueError("multi-process runs must put every device on the data axis (mesh.data=-1)")
    devices = np.asarray(jax.devices()[:n])
    return Mesh(devices, ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """Assembles the global batch from each process's local slice (leading axis split)."""
    sharding = batch_sharded(mesh)
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return jax.make_array_from_process_local_data(sharding, local)


def check_batch(global_batch_size: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if global_batch_size % n:
        raise ValueError(f"train.batch_size={global_batch_size} must be divisible by the "
                         f"{n} devices on the data axis")


def place(tree, sharding):
    """Puts host values on ``sharding`` (works with several processes, each holding the same
    values)."""
    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
    return jax.tree_util.tree_map(put, tree)
