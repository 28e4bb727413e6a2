"""Scale out with JAX's own machinery: a ("dp", "fsdp", "tp") Mesh, NamedShardings from one rule
table, and jit with in/out shardings. No pmap, no hand-written collectives: XLA's SPMD partitioner
inserts the all-gathers / reduce-scatters / all-reduces the shardings imply.

Axes of the mesh:
    dp    data parallel: batch rows split, parameters replicated.
    fsdp  fully sharded data parallel (ZeRO-3): batch rows split AND the non-TP "other big axis"
          of every weight split, so params + AdamW moments take ~1/fsdp of the memory per device.
    tp    Megatron tensor parallel: attention heads and the MLP hidden axis split (column-parallel
          in, row-parallel out), vocab split for the embedding / head.

The same config gives the same losses on any mesh: `batch_size` is the GLOBAL number of rows of
one micro-step, whatever the device or process count (see `global_batch`, `process_rows`).

Non-divisible dimensions: where a parameter dimension is not divisible by the size of the mesh
axes the rules assign to it (e.g. vocab_size=65 with tp=2, or n_head=6 with tp=4), that dimension
is REPLICATED instead of failing (`param_specs(params, mesh)` drops the axis). Training stays
correct, only less memory is saved; `unshardable_dims` lists where this happened so a launcher can
warn. For tp this means an n_head not divisible by tp leaves attention replicated (correct but not
tensor parallel), so choose tp | n_head.

Multi-process: call `initialize_distributed()` first, then build the mesh from all global
devices. Every process runs the same program; each feeds only its own rows of the global batch.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import os
import pkgutil
import re
from typing import Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

__all__ = [
    "MESH_AXES", "BATCH_AXES", "PARTITION_RULES", "resolve_mesh_shape", "make_mesh", "param_specs",
    "spec_for_path", "unshardable_dims", "state_shardings", "with_shardings", "batch_sharding", "replicated", "process_rows", "global_batch",
    "replicate", "compile_train_step", "compile_eval_step", "initialize_distributed",
    "bytes_per_device",
]

MESH_AXES = ("dp", "fsdp", "tp")
BATCH_AXES = ("dp", "fsdp")  # batch rows are split over both data axes

# (regex searched in the '/'-joined path, PartitionSpec). First match wins; the last rule
# replicates everything else (LayerNorm/RMSNorm scales and biases, the qk-norm scales (K,) that
# every head shares, c_proj biases, scalars). The same table
# serves optimizer state: an AdamW moment's path ends with its parameter's path
# (".../mu/h_0/attn/c_attn/kernel"), so moments are sharded exactly like their parameter.
PARTITION_RULES: Tuple[Tuple[str, P], ...] = (
    # attention: qkv column-parallel on heads (D, 3, H, K); output row-parallel (H, K, D)
    (r"(^|/)attn/c_attn/kernel$", P("fsdp", None, "tp", None)),
    (r"(^|/)attn/c_attn/bias$", P(None, "tp", None)),
    (r"(^|/)attn/c_proj/kernel$", P("tp", None, "fsdp")),
    # MLP: c_fc column-parallel (D, F), c_proj row-parallel (F, D); swiglu's gate (D, F) is split
    # like c_fc, so silu(gate) * c_fc stays local to each tp shard
    (r"(^|/)mlp/c_fc/kernel$", P("fsdp", "tp")),
    (r"(^|/)mlp/c_fc/bias$", P("tp")),
    (r"(^|/)mlp/c_gate/kernel$", P("fsdp", "tp")),
    (r"(^|/)mlp/c_gate/bias$", P("tp")),
    (r"(^|/)mlp/c_proj/kernel$", P("tp", "fsdp")),
    # embeddings: token table split along vocab (V, D); positions along width
    (r"(^|/)wte/embedding$", P("tp", "fsdp")),
    (r"(^|/)wpe/embedding$", P(None, "fsdp")),
    # untied head (D, V): column-parallel over vocab, like c_fc (its bias follows the vocab split)
    (r"(^|/)lm_head/kernel$", P("fsdp", "tp")),
    (r"(^|/)lm_head/bias$", P("tp")),
    # everything else replicated
    (r".*", P()),
)


# ----------------------------------------------------------------------------------------- mesh

def resolve_mesh_shape(dp: int, fsdp: int, tp: int, num_devices: int) -> Tuple[int, int, int]:
    """Fill at most one -1 with what is left; the product must equal num_devices."""
    sizes = {"dp": dp, "fsdp": fsdp, "tp": tp}
    for name, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
            raise ValueError(f"mesh axis {name} must be a positive integer or -1, got {size!r}")
    if not isinstance(num_devices, int) or num_devices < 1:
        raise ValueError(f"num_devices must be a positive integer, got {num_devices!r}")
    free = [name for name, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got dp={dp}, fsdp={fsdp}, tp={tp}")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(f"cannot fill {free[0]}=-1: dp={dp}, fsdp={fsdp}, tp={tp} do not divide "
                             f"{num_devices} devices")
        sizes[free[0]] = num_devices // fixed
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(f"mesh dp={dp} x fsdp={fsdp} x tp={tp} = {math.prod(sizes.values())} "
                         f"does not match the {num_devices} available devices")
    return sizes["dp"], sizes["fsdp"], sizes["tp"]


def make_mesh(dp: int = -1, fsdp: int = 1, tp: int = 1,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A (dp, fsdp, tp) Mesh over `devices` (default: all global devices).

    tp is the innermost axis so tensor-parallel collectives stay between neighbouring devices
    (same host / NVLink); dp is outermost so, with several processes, each process owns whole
    batch-row blocks. Axes are Auto: shardings come from jit in/out shardings and XLA propagates.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(dp, fsdp, tp, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


# ---------------------------------------------------------------------------------- param rules

def _key_name(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _path_str(path) -> str:
    return "/".join(_key_name(k) for k in path)


def _axis_size(mesh: Optional[Mesh], axes) -> int:
    if axes is None or mesh is None:
        return 1
    names = axes if isinstance(axes, tuple) else (axes,)
    return math.prod(mesh.shape[name] for name in names)


def spec_for_path(path: str, shape: Sequence[int], mesh: Optional[Mesh] = None) -> P:
    """The rule table's PartitionSpec for one leaf.

    A rule whose rank does not match the leaf (e.g. a scalar under a matching name) replicates.
    With a mesh, a dimension not divisible by its axes' size is replicated (see module docstring).
    """
    for pattern, spec in PARTITION_RULES:
        if re.search(pattern, path):
            break
    else:  # pragma: no cover - the table ends with a catch-all
        spec = P()
    if len(spec) == 0:
        return P()
    if len(spec) != len(shape):
        return P()
    dims = [axes if shape[i] % _axis_size(mesh, axes) == 0 else None for i, axes in enumerate(spec)]
    return P(*dims)


def _shape(leaf) -> Tuple[int, ...]:
    return tuple(getattr(leaf, "shape", np.shape(leaf)))


def param_specs(params, mesh: Optional[Mesh] = None):
    """Pytree of PartitionSpec matching `params` (arrays or jax.ShapeDtypeStruct leaves).

    Without a mesh, the specs are the rules verbatim; with one, non-divisible dimensions are
    replicated. Works on any pytree of the same naming, e.g. a whole optimizer state.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: spec_for_path(_path_str(path), _shape(leaf), mesh), params)


def unshardable_dims(params, mesh: Mesh) -> list:
    """[(path, dim, size, axes)] where a rule asked for a split the mesh cannot divide evenly."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name, shape = _path_str(path), _shape(leaf)
        wanted, got = spec_for_path(name, shape), spec_for_path(name, shape, mesh)
        for dim, (w, g) in enumerate(zip(wanted, got)):
            if w is not None and g is None and _axis_size(mesh, w) > 1:
                out.append((name, dim, shape[dim], w))
    return out


def state_shardings(mesh: Mesh, abstract_state):
    """NamedSharding for every leaf of a TrainState: params by the rules, optimizer moments like
    their parameter (same path suffix), step and counts replicated."""
    specs = param_specs(abstract_state, mesh)
    return jax.tree_util.tree_map(lambda spec: NamedSharding(mesh, spec), specs,
                                  is_leaf=lambda x: isinstance(x, P))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def with_shardings(abstract, shardings):
    """The abstract tree with `.sharding` set on every jax.ShapeDtypeStruct leaf."""
    return jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


# ---------------------------------------------------------------------------------------- batch

def batch_sharding(mesh: Mesh) -> NamedSharding:
    """For (A, B, T) batches (and (N, B, T) eval batches): rows split over ("dp", "fsdp")."""
    return NamedSharding(mesh, P(None, BATCH_AXES, None))


def _check_rows(mesh: Mesh, batch_size: int) -> None:
    shards = _axis_size(mesh, BATCH_AXES)
    if batch_size % shards:
        raise ValueError(f"batch_size={batch_size} is not divisible by dp*fsdp={shards} "
                         f"(dp={mesh.shape['dp']}, fsdp={mesh.shape['fsdp']})")


def process_rows(mesh: Mesh, batch_size: int) -> slice:
    """Which rows of the GLOBAL batch (of batch_size rows) this process must feed to global_batch.

    Single process: slice(0, batch_size). With dp/fsdp spanning processes, each process owns a
    contiguous block; where a process's devices only hold replicated rows (e.g. tp spans
    processes), several processes feed the same rows.
    """
    _check_rows(mesh, batch_size)
    index_map = batch_sharding(mesh).addressable_devices_indices_map((1, batch_size, 1))
    rows = set()
    for index in index_map.values():
        rows.update(range(*index[1].indices(batch_size)))
    start, stop = min(rows), max(rows) + 1
    if len(rows) != stop - start:
        raise ValueError(f"this process's batch rows {sorted(rows)} are not contiguous; "
                         "build the mesh with make_mesh so that dp/fsdp blocks follow processes")
    return slice(start, stop)


def global_batch(mesh: Mesh, local_ABT: np.ndarray) -> jax.Array:
    """Assemble this process's rows (`local[process_rows(...)]` of the global batch) into the
    global (A, B, T) jax.Array sharded by batch_sharding. Single process: local is the batch."""
    local_ABT = np.asarray(local_ABT)
    if local_ABT.ndim != 3:
        raise ValueError(f"batch must be (A, B, T), got shape {local_ABT.shape}")
    sharding = batch_sharding(mesh)
    # This process holds len(local_blocks) of the dp*fsdp row blocks: scale its rows up.
    index_map = sharding.addressable_devices_indices_map((1, _axis_size(mesh, BATCH_AXES), 1))
    local_blocks = {idx[1].start for idx in index_map.values()}
    global_rows = local_ABT.shape[1] * _axis_size(mesh, BATCH_AXES) // len(local_blocks)
    _check_rows(mesh, global_rows)
    global_shape = (local_ABT.shape[0], global_rows, local_ABT.shape[2])
    return jax.make_array_from_process_local_data(sharding, local_ABT, global_shape)


def replicate(mesh: Mesh, x):
    """A host value (same on every process) as a fully replicated global jax.Array on the mesh.

    Handles typed PRNG keys. jit also accepts a plain (uncommitted) key for a replicated input,
    multi-process too; this makes the placement explicit, e.g. for eager use outside jit.
    """
    sharding = replicated(mesh)
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = replicate(mesh, jax.random.key_data(x))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, host, host.shape)


# -------------------------------------------------------------------------------------- compile

# XLA:CPU's YNNPACK library fusions (its default for dots and reductions in jax 0.10) ran the
# shakespeare_char_cpu train step about 1.2-2x slower than XLA's own kernels at these small sizes
# (measured on a 2-core EPYC, see README "Speed"), so the steps compile without them on CPU.
# jaxlib < 0.8.1 has no such option (and no such fusions): it refuses an unknown one.
_CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
_YNN_OPTION_SINCE = (0, 8, 1)


def compiler_options(mesh: Mesh) -> Optional[dict]:
    """XLA options for the train and eval steps on this mesh's platform (None: XLA's defaults)."""
    if mesh.devices.flat[0].platform != "cpu" or _version_tuple(jax.__version__) < _YNN_OPTION_SINCE:
        return None
    return dict(_CPU_COMPILER_OPTIONS)


def _version_tuple(version: str) -> Tuple[int, ...]:
    """"0.8.1" (or "0.9.0.1", "0.10.0.dev2026") -> (0, 8, 1): the leading numeric fields."""
    return tuple(int(m) for m in re.findall(r"\d+", ".".join(version.split(".")[:3])))


def compile_train_step(train_step: Callable, mesh: Mesh, state_sharding) -> Callable:
    """jit(train_step) for `(state, (x_ABT, y_ABT), rng) -> (state, metrics)` on the mesh.

    State in/out with its shardings (donated: updated in place), batch rows split by
    batch_sharding (every array of the batch tuple: a task may add e.g. an (A, B, 1) one), rng and
    metrics replicated. Batches should be global arrays (global_batch);
    plain single-process arrays also work. The returned function keeps jit's `.lower`.
    """
    batch = batch_sharding(mesh)
    return jax.jit(
        train_step,
        in_shardings=(state_sharding, batch, replicated(mesh)),
        out_shardings=(state_sharding, replicated(mesh)),
        donate_argnums=(0,),
        compiler_options=compiler_options(mesh),
    )


def compile_eval_step(eval_loss: Callable, mesh: Mesh, params_sharding) -> Callable:
    """jit(eval_step) for `(params, (x_NBT, y_NBT)) -> metrics`, replicated out."""
    batch = batch_sharding(mesh)
    return jax.jit(eval_loss, in_shardings=(params_sharding, batch),
                   out_shardings=replicated(mesh), compiler_options=compiler_options(mesh))


def bytes_per_device(tree) -> dict:
    """{device: bytes of `tree` stored on it}, from each array's addressable shards."""
    totals: dict = {}
    for leaf in jax.tree_util.tree_leaves(tree):
        for shard in leaf.addressable_shards:
            totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
    return totals


# ---------------------------------------------------------------------------------- distributed


def _cluster_detected() -> bool:
    """True where jax.distributed.initialize() with no arguments would find its peers."""
    try:
        from jax._src import clusters  # private, but it is exactly JAX's own auto-detection

        return any(env.is_env_present() for env in clusters.ClusterEnv._cluster_types
                   if not env.opt_in_only_method)
    except Exception:  # pragma: no cover - layout of a future jax
        return False


def _platform_is_cpu() -> bool:
    """Whether JAX will run on CPU, decided WITHOUT initializing a backend."""
    platforms = jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    # GPU/TPU support arrives as a PJRT plugin (entry point or jax_plugins.* package) or libtpu.
    # With one installed but no accelerator present, set JAX_PLATFORMS=cpu to get gloo.
    accelerator_plugins = [ep.name for ep in importlib.metadata.entry_points(group="jax_plugins")]
    try:
        import jax_plugins  # namespace package of the CUDA/ROCm plugins

        accelerator_plugins += [m.name for m in pkgutil.iter_modules(jax_plugins.__path__)]
    except ImportError:
        pass
    has_tpu = importlib.util.find_spec("libtpu") is not None
    return not accelerator_plugins and not has_tpu


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> bool:
    """Join a multi-process JAX run. Returns True if jax.distributed was initialized.

    Explicit values go to jax.distributed.initialize; with none, it is called without arguments
    only where JAX auto-detects a cluster (SLURM, Open MPI, TPU pod, k8s); on a plain machine
    nothing happens. On CPU the gloo collectives are selected first (CPU has none by default).
    Call before anything that touches devices (jax.devices(), any array creation).
    """
    if jax.distributed.is_initialized():  # idempotent: the trainer calls it before reading a checkpoint
        return True
    given = (coordinator_address, num_processes, process_id)
    if all(v is None for v in given) and not _cluster_detected():
        return False
    if num_processes is not None and (isinstance(num_processes, bool) or num_processes < 1):
        raise ValueError(f"num_processes must be a positive integer, got {num_processes!r}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id={process_id} is outside [0, num_processes={num_processes})")
    if _platform_is_cpu():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    return True
