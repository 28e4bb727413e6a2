"""Subprocess side of tests/test_sharding.py: runs with simulated CPU devices and writes JSON.

    python tests/sharded_worker.py meshes OUT_DIR
        8 simulated devices, one process: single-device baselines, dp=8 / fsdp=8 / tp=8 / 2x2x2
        training, memory layout under fsdp=8, a checkpoint saved on fsdp=8 and restored on
        dp=2 x tp=4 and on one device. Results in OUT_DIR/meshes.json (+ .npz of params).
    python tests/sharded_worker.py multiprocess OUT_DIR PORT PROCESS_ID NUM_PROCESSES
        2 simulated devices per process, jax.distributed over localhost (gloo): train together on
        a dp=1 x fsdp=2 x tp=2 mesh, each process feeding only its rows, then save a checkpoint
        (every process calls save). Results in OUT_DIR/multiprocess_<id>.json.

One process per mode keeps the count of JAX start-ups (seconds each) low.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # device count must be fixed before jax is imported
    _devices = 8 if sys.argv[1] == "meshes" else 2
    # Cheaper CPU codegen: compile time dominates these tiny runs, and every run in one process
    # uses the same flags, so the comparisons are unaffected.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={_devices}"
                               + " --xla_backend_optimization_level=0"
                               + " --xla_llvm_disable_expensive_passes=true")
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxgpt.train import sharding as sh  # noqa: E402
from jaxgpt.model.config import GPTConfig  # noqa: E402
from jaxgpt.model.gpt import GPT  # noqa: E402
from jaxgpt.train.optim import make_optimizer  # noqa: E402
from jaxgpt.train.tasks import lm_loss, model_init  # noqa: E402
from jaxgpt.train.step import abstract_train_state, init_train_state, make_eval_step, make_train_step  # noqa: E402

# Tiny but with every kind of parameter; every sharded dim divisible by 8 (vocab, D, 4D, heads).
# Dropout on (its random bits must not depend on the sharding) and A=2 gradient accumulation.
BASE = GPTConfig(vocab_size=128, block_size=16, n_layer=1, n_head=8, n_embd=32, dropout=0.1)
ACCUM, BATCH, SEQ, STEPS, MP_STEPS, LR = 2, 8, 16, 10, 4, 1e-3


def make_data(config: GPTConfig, accum: int, steps: int, seed: int = 0) -> np.ndarray:
    """(steps, A, B, T+1) tokens; x is [..., :-1], y is [..., 1:]."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, config.vocab_size, size=(steps, accum, BATCH, SEQ + 1), dtype=np.int32)


def path_str(path) -> str:
    return sh._path_str(path)


def train(config: GPTConfig, mesh, data: np.ndarray, snapshot_at: int | None = None,
          initial_state=None):
    """Train len(data) steps on `mesh`; returns (losses, final state, snapshot params, shardings).

    The state is born sharded by init_train_state, or (to skip one compile) placed from the
    host copy `initial_state` of another run's init with the same key.
    """
    model = GPT(config)
    optimizer = make_optimizer(LR, weight_decay=0.1, grad_clip=1.0)
    if initial_state is None:
        state = init_train_state(model_init(model), optimizer, mesh, jax.random.PRNGKey(0))
        shardings = sh.state_shardings(mesh, jax.eval_shape(lambda s: s, state))
    else:
        shardings = sh.state_shardings(mesh, initial_state)
        state = jax.device_put(initial_state, shardings)
    step_fn = sh.compile_train_step(make_train_step(lm_loss(model), optimizer), mesh, shardings)
    rows = sh.process_rows(mesh, BATCH)
    rng = sh.replicate(mesh, jax.random.PRNGKey(1))
    losses, snapshot, first = [], None, None
    for i, tokens in enumerate(data):
        local = tokens[:, rows, :]  # this process's rows of the global batch
        x = sh.global_batch(mesh, local[..., :-1])
        y = sh.global_batch(mesh, local[..., 1:])
        if i == 0 and jax.process_count() == 1:
            first = jax.tree_util.tree_map(np.asarray, state)  # host copy before donation
        state, metrics = step_fn(state, (x, y), rng)
        losses.append(float(metrics["loss"]))
        if snapshot_at is not None and i + 1 == snapshot_at:
            snapshot = host_params(state.params)
    return losses, state, snapshot, shardings, first


def host_params(params) -> dict:
    """{path: np.ndarray}: fully replicated host copies (process_allgather for multi-process)."""
    from jax.experimental import multihost_utils

    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {path_str(p): np.asarray(multihost_utils.process_allgather(x, tiled=True)) for p, x in flat}


def sharding_report(state, shardings) -> dict:
    """Per leaf: actual spec, and whether it is equivalent to what the rules ask for."""
    out = {}
    flat_actual = jax.tree_util.tree_flatten_with_path(state)[0]
    flat_wanted = jax.tree_util.tree_leaves(shardings)
    for (path, leaf), wanted in zip(flat_actual, flat_wanted):
        out[path_str(path)] = {
            "spec": str(tuple(leaf.sharding.spec)),
            "matches_rules": bool(leaf.sharding.is_equivalent_to(wanted, leaf.ndim)),
            "mesh_matches": leaf.sharding.mesh == wanted.mesh,
        }
    return out


def memory_report(tree, mesh) -> dict:
    per_device = sh.bytes_per_device(tree)
    expected = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        spec = sh.spec_for_path(path_str(path), leaf.shape, mesh)
        split = int(np.prod([sh._axis_size(mesh, axes) for axes in spec])) if len(spec) else 1
        expected_bytes = leaf.nbytes // split
        for device in per_device:
            expected[device] = expected.get(device, 0) + expected_bytes
    return {"per_device": [per_device[d] for d in mesh.devices.flat],
            "expected_per_device": [expected[d] for d in mesh.devices.flat],
            "total": int(sum(x.nbytes for x in jax.tree_util.tree_leaves(tree)))}


def trees_equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def run_meshes(out_dir: str) -> None:
    from jaxgpt.train.checkpoint import Checkpointer

    assert jax.device_count() == 8, jax.devices()
    one = sh.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    result: dict = {"losses": {}, "shardings": {}}

    # Single-device baselines: A=1 (also the multi-process reference) and A=2.
    data_a1, data_a2 = make_data(BASE, 1, STEPS), make_data(BASE, ACCUM, STEPS, seed=1)
    losses, _, snapshot, _, init_host = train(BASE, one, data_a1, snapshot_at=MP_STEPS)
    result["losses"]["a1/1"] = losses
    np.savez(os.path.join(out_dir, f"base_params_step{MP_STEPS}.npz"), **snapshot)
    losses, base_state, _, _, _ = train(BASE, one, data_a2, initial_state=init_host)
    result["losses"]["a2/1"] = losses
    eval_step = make_eval_step(lm_loss(GPT(BASE)))
    eval_loss = lambda params, batch: eval_step(params, batch)["loss"]  # noqa: E731
    eval_batch = make_data(BASE, 2, 1, seed=2)[0]  # (N=2, B, T+1)
    eval_x, eval_y = eval_batch[..., :-1], eval_batch[..., 1:]
    result["eval"] = {"1": float(jax.jit(eval_loss)(base_state.params, (eval_x, eval_y)))}

    # Born sharded on fsdp=8 and 2x2x2 (remat there); dp=8 and tp=8 start from the host copy.
    runs = (("dp8", (8, 1, 1), BASE, False), ("tp8", (1, 1, 8), BASE, False),
            ("fsdp8", (1, 8, 1), BASE, True), ("2x2x2", (2, 2, 2), BASE.replace(remat=True), True))
    for name, shape, config, born_sharded in runs:
        mesh = sh.make_mesh(*shape)
        losses, state, _, shardings, _ = train(config, mesh, data_a2,
                                               initial_state=None if born_sharded else init_host)
        result["losses"][f"a2/{name}"] = losses
        result["shardings"][name] = sharding_report(state, shardings)
        if name == "dp8":
            result["memory_dp8"] = memory_report(state.params, mesh)
        if name == "fsdp8":
            fsdp_mesh, fsdp_state, params_sharding = mesh, state, shardings.params
            result["memory_fsdp8"] = {"params": memory_report(state.params, mesh),
                                      "opt_state": memory_report(state.opt_state, mesh)}

    eval_fn = sh.compile_eval_step(eval_loss, fsdp_mesh, params_sharding)
    result["eval"]["fsdp8"] = float(eval_fn(fsdp_state.params, (sh.global_batch(fsdp_mesh, eval_x),
                                                               sh.global_batch(fsdp_mesh, eval_y))))

    # Save on fsdp=8, restore on dp=2 x tp=4 and on one device.
    ckpt_dir = os.path.join(out_dir, "fsdp_run", "checkpoints")
    saved = jax.tree_util.tree_map(np.asarray, fsdp_state)
    with Checkpointer(ckpt_dir) as ckpt:
        ckpt.save(STEPS, fsdp_state, {"model_config": BASE.to_dict(), "iter_num": STEPS}, val_loss=1.0)
    np.savez(os.path.join(out_dir, "fsdp_params.npz"), **host_params(fsdp_state.params))
    result["restore"] = {}
    for name, mesh in (("dp2tp4", sh.make_mesh(2, 1, 4)), ("1", one)):
        target = abstract_train_state(model_init(GPT(BASE)), make_optimizer(LR), mesh)
        target_shardings = jax.tree_util.tree_map(lambda a: a.sharding, target)
        with Checkpointer(ckpt_dir) as ckpt:
            restored, extra = ckpt.restore(target)
        report = sharding_report(restored, target_shardings)
        result["restore"][name] = {
            "values_equal": trees_equal(restored, saved),
            "shardings_match": all(r["matches_rules"] and r["mesh_matches"] for r in report.values()),
            "num_devices": sorted({len(x.sharding.device_set) for x in jax.tree_util.tree_leaves(restored)}),
            "c_attn_spec": report["params/h_0/attn/c_attn/kernel"]["spec"],
            "step": int(restored.step),
            "extra": extra,
        }
    with open(os.path.join(out_dir, "meshes.json"), "w") as f:
        json.dump(result, f)


def run_multiprocess(out_dir: str, port: int, process_id: int, num_processes: int) -> None:
    from jaxgpt.train.checkpoint import Checkpointer

    assert sh.initialize_distributed(f"127.0.0.1:{port}", num_processes, process_id)
    assert jax.process_count() == num_processes and jax.device_count() == 2 * num_processes
    mesh = sh.make_mesh(1, num_processes, 2)  # fsdp spans the processes, tp inside each
    losses, state, _, _, _ = train(BASE, mesh, make_data(BASE, 1, STEPS)[:MP_STEPS])
    rows = sh.process_rows(mesh, BATCH)
    gathered = host_params(state.params)  # collective: every process takes part
    if process_id == 0:
        np.savez(os.path.join(out_dir, "mp_params.npz"), **gathered)
    with Checkpointer(os.path.join(out_dir, "mp_run", "checkpoints")) as ckpt:
        ckpt.save(MP_STEPS, state, {"model_config": BASE.to_dict()})
    with open(os.path.join(out_dir, f"multiprocess_{process_id}.json"), "w") as f:
        json.dump({"losses": losses, "rows": [rows.start, rows.stop],
                   "process_count": jax.process_count()}, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    if sys.argv[1] == "meshes":
        run_meshes(sys.argv[2])
    elif sys.argv[1] == "multiprocess":
        run_multiprocess(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}")
