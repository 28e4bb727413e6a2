"""Sharding: the rule table, mesh helpers, and (in subprocesses with simulated CPU devices)
training on dp / fsdp / tp meshes, memory per device, cross-mesh restore and two processes.

Multi-device runs need XLA_FLAGS set before jax starts, so they run tests/sharded_worker.py in
a subprocess: one process for all single-process meshes, two for the multi-process run.
Tolerance: losses equal the single-device ones to relative 1e-5 (float32; only the reduction
order differs between meshes).
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P

from jaxgpt.train import sharding as sh
from jaxgpt.train.checkpoint import load_inference_params
from jaxgpt.model.config import GPTConfig
from jaxgpt.model.gpt import GPT
from jaxgpt.train.optim import make_optimizer
from jaxgpt.train.tasks import model_init
from jaxgpt.train.step import abstract_train_state

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "sharded_worker.py")
RTOL = 1e-5


def _load_worker():
    spec = importlib.util.spec_from_file_location("sharded_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _load_worker()


def abstract_mesh(dp, fsdp, tp):
    return AbstractMesh((dp, fsdp, tp), sh.MESH_AXES)


def abstract_params(config: GPTConfig):
    return jax.eval_shape(
        lambda: GPT(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"])


def flat_specs(specs) -> dict:
    flat = jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, P))[0]
    return {sh._path_str(path): spec for path, spec in flat}


# ------------------------------------------------------------------------------ mesh shapes

@pytest.mark.parametrize("given, n, want", [
    ((-1, 1, 1), 8, (8, 1, 1)), ((1, -1, 1), 8, (1, 8, 1)), ((2, -1, 2), 8, (2, 2, 2)),
    ((1, 2, -1), 8, (1, 2, 4)), ((2, 2, 2), 8, (2, 2, 2)), ((-1, 1, 1), 1, (1, 1, 1)),
])
def test_resolve_mesh_shape(given, n, want):
    assert sh.resolve_mesh_shape(*given, n) == want


@pytest.mark.parametrize("given, n, message", [
    ((3, 1, 1), 8, r"dp=3 x fsdp=1 x tp=1 = 3 does not match the 8"),
    ((-1, 3, 1), 8, r"cannot fill dp=-1: dp=-1, fsdp=3, tp=1 do not divide 8"),
    ((-1, -1, 1), 8, r"at most one mesh axis may be -1"),
    ((0, 1, 1), 1, r"mesh axis dp must be a positive integer or -1, got 0"),
    ((1, 1, 2.0), 2, r"mesh axis tp"),
])
def test_resolve_mesh_shape_errors(given, n, message):
    with pytest.raises(ValueError, match=message):
        sh.resolve_mesh_shape(*given, n)


def test_make_mesh_on_this_machine():
    mesh = sh.make_mesh()
    assert mesh.axis_names == sh.MESH_AXES
    assert tuple(mesh.shape.values()) == (jax.device_count(), 1, 1)
    assert all(t == AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(ValueError, match="does not match"):
        sh.make_mesh(1, 1, jax.device_count() + 1)


# ------------------------------------------------------------------------------- rule table

# The task's Megatron-style layout, written out by hand (untied head, biases on).
EXPECTED_SPECS = {
    "wte/embedding": P("tp", "fsdp"),
    "wpe/embedding": P(None, "fsdp"),
    "h_0/ln_1/scale": P(), "h_0/ln_1/bias": P(), "h_0/ln_2/scale": P(), "h_0/ln_2/bias": P(),
    "h_0/attn/c_attn/kernel": P("fsdp", None, "tp", None),
    "h_0/attn/c_attn/bias": P(None, "tp", None),
    "h_0/attn/c_proj/kernel": P("tp", None, "fsdp"),
    "h_0/attn/c_proj/bias": P(),
    "h_0/mlp/c_fc/kernel": P("fsdp", "tp"),
    "h_0/mlp/c_fc/bias": P("tp"),
    "h_0/mlp/c_proj/kernel": P("tp", "fsdp"),
    "h_0/mlp/c_proj/bias": P(),
    "ln_f/scale": P(), "ln_f/bias": P(),
    "lm_head/kernel": P("fsdp", "tp"),
    "lm_head/bias": P("tp"),
}
UNTIED = GPTConfig(vocab_size=128, block_size=16, n_layer=1, n_head=4, n_embd=32, tie_embeddings=False)


def test_param_specs_follow_the_table_on_abstract_params():
    specs = flat_specs(sh.param_specs(abstract_params(UNTIED)))
    assert specs == EXPECTED_SPECS
    # divisible everywhere on a 2x2x2 mesh: nothing falls back
    assert flat_specs(sh.param_specs(abstract_params(UNTIED), abstract_mesh(2, 2, 2))) == EXPECTED_SPECS
    assert sh.unshardable_dims(abstract_params(UNTIED), abstract_mesh(2, 2, 2)) == []


def test_non_divisible_dims_are_replicated():
    # vocab 65 and n_head 6 do not divide by tp=4; D=48 and 4D=192 do (fsdp=2, tp=4).
    config = GPTConfig(vocab_size=65, block_size=16, n_layer=1, n_head=6, n_embd=48)
    params = abstract_params(config)
    specs = flat_specs(sh.param_specs(params, abstract_mesh(1, 2, 4)))
    assert specs["wte/embedding"] == P(None, "fsdp")
    assert specs["h_0/attn/c_attn/kernel"] == P("fsdp", None, None, None)
    assert specs["h_0/attn/c_attn/bias"] == P(None, None, None)
    assert specs["h_0/attn/c_proj/kernel"] == P(None, None, "fsdp")
    assert specs["h_0/mlp/c_fc/kernel"] == P("fsdp", "tp")
    fallbacks = {(path, dim) for path, dim, _, _ in sh.unshardable_dims(params, abstract_mesh(1, 2, 4))}
    assert fallbacks == {("wte/embedding", 0), ("h_0/attn/c_attn/kernel", 2),
                         ("h_0/attn/c_attn/bias", 1), ("h_0/attn/c_proj/kernel", 0)}


def test_optimizer_state_follows_its_parameter():
    model, optimizer = GPT(UNTIED), make_optimizer(1e-3)
    mesh = sh.make_mesh(devices=jax.devices()[:1])
    abstract = abstract_train_state(model_init(model), optimizer, mesh)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(
        lambda a: isinstance(a, jax.ShapeDtypeStruct) and a.sharding.mesh == mesh, abstract))
    flat = {sh._path_str(p): a.sharding.spec
            for p, a in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    assert flat["step"] == P()
    moments = 0
    for path, spec in flat.items():
        if path.startswith("params/"):
            assert spec == EXPECTED_SPECS[path[len("params/"):]]
        elif "/mu/" in path or "/nu/" in path:
            param_path = path.split("/mu/" if "/mu/" in path else "/nu/")[1]
            assert spec == EXPECTED_SPECS[param_path], path
            moments += 1
        else:
            assert spec == P(), path  # adam's count and the like
    assert moments == 2 * len(EXPECTED_SPECS)


# ------------------------------------------------------------------------------------ batch

def test_batch_helpers_single_process():
    mesh = sh.make_mesh(devices=jax.devices()[:1])
    assert sh.batch_sharding(mesh).spec == P(None, ("dp", "fsdp"), None)
    assert sh.process_rows(mesh, 6) == slice(0, 6)
    local = np.arange(2 * 6 * 5, dtype=np.int32).reshape(2, 6, 5)
    batch = sh.global_batch(mesh, local)
    assert batch.shape == (2, 6, 5) and batch.sharding == sh.batch_sharding(mesh)
    np.testing.assert_array_equal(np.asarray(batch), local)
    with pytest.raises(ValueError, match=r"batch must be \(A, B, T\)"):
        sh.global_batch(mesh, local[0])
    with pytest.raises(ValueError, match=r"batch_size=6 is not divisible by dp\*fsdp=4"):
        sh.process_rows(abstract_mesh(2, 2, 1), 6)
    key = sh.replicate(mesh, jax.random.key(3))
    assert jax.random.key_data(key).tolist() == jax.random.key_data(jax.random.key(3)).tolist()


def test_initialize_distributed_is_a_noop_on_a_plain_machine(monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "OMPI_MCA_orte_hnp_uri",
                 "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "JOB_COMPLETION_INDEX"):
        monkeypatch.delenv(name, raising=False)
    assert sh.initialize_distributed() is False
    assert jax.process_count() == 1
    with pytest.raises(ValueError, match=r"process_id=2 is outside \[0, num_processes=2\)"):
        sh.initialize_distributed("127.0.0.1:1", num_processes=2, process_id=2)


# ------------------------------------------------------------------- simulated 8 devices

def _run(args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, WORKER, *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(procs, timeout):
    """Wait for all; on timeout or failure kill the rest and fail with the output tail."""
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=timeout)
            outputs.append(out)
            if proc.returncode != 0:
                pytest.fail(f"worker exited with {proc.returncode}:\n{out[-4000:]}")
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker did not finish within {timeout}s (hang?)")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return outputs


@pytest.fixture(scope="module")
def meshes(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("meshes"))
    _wait([_run(["meshes", out_dir])], 420)
    with open(os.path.join(out_dir, "meshes.json")) as f:
        return out_dir, json.load(f)


def test_losses_match_one_device_on_every_mesh(meshes):
    losses = {k: np.array(v) for k, v in meshes[1]["losses"].items()}
    reference = losses["a2/1"]
    assert reference.shape == (worker.STEPS,) and np.all(np.isfinite(reference))
    assert not np.allclose(reference, losses["a1/1"])  # A=2 really consumed different data
    for name in ("dp8", "tp8", "fsdp8", "2x2x2"):  # 2x2x2 also has remat=True
        np.testing.assert_allclose(losses[f"a2/{name}"], reference, rtol=RTOL, err_msg=name)
    np.testing.assert_allclose(meshes[1]["eval"]["fsdp8"], meshes[1]["eval"]["1"], rtol=RTOL)


def test_every_leaf_is_sharded_as_the_rules_say(meshes):
    for mesh_name, report in meshes[1]["shardings"].items():
        wrong = [path for path, r in report.items() if not (r["matches_rules"] and r["mesh_matches"])]
        assert not wrong, (mesh_name, wrong)
        assert "step" in report and any("/mu/" in p for p in report) and any("/nu/" in p for p in report)
    # on 2x2x2 nothing falls back, so the actual specs are the hand-written table (tied head)
    report = meshes[1]["shardings"]["2x2x2"]
    for path, spec in EXPECTED_SPECS.items():
        if not path.startswith("lm_head"):
            assert report[f"params/{path}"]["spec"] == str(tuple(spec)), path
            assert report[f"opt_state/1/0/mu/{path}"]["spec"] == str(tuple(spec)), path


def test_fsdp_holds_an_eighth_per_device(meshes):
    result = meshes[1]
    for part in ("params", "opt_state"):
        mem = result["memory_fsdp8"][part]
        assert mem["per_device"] == mem["expected_per_device"], part
        assert len(set(mem["per_device"])) == 1  # balanced
        # 1/8 of the weights plus the small replicated LayerNorm/bias vectors
        assert mem["total"] / 8 <= mem["per_device"][0] <= 0.16 * mem["total"], (part, mem)
    dp = result["memory_dp8"]
    assert dp["per_device"] == [dp["total"]] * 8  # plain data parallel replicates everything


def test_restore_onto_other_meshes(meshes):
    out_dir, result = meshes
    for name, devices in (("dp2tp4", [8]), ("1", [1])):
        restored = result["restore"][name]
        assert restored["values_equal"] and restored["shardings_match"], name
        assert restored["num_devices"] == devices
        assert restored["step"] == worker.STEPS and restored["extra"]["iter_num"] == worker.STEPS
    assert result["restore"]["dp2tp4"]["c_attn_spec"] == str(("fsdp", None, "tp", None))
    # and in this (single-device) process, for inference: params only, on one device
    config, params = load_inference_params(os.path.join(out_dir, "fsdp_run"))
    assert config == worker.BASE
    saved = np.load(os.path.join(out_dir, "fsdp_params.npz"))
    flat = {sh._path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert set(flat) == set(saved.files)
    for path, x in flat.items():
        assert len(x.sharding.device_set) == 1
        np.testing.assert_array_equal(np.asarray(x), saved[path], err_msg=path)


# -------------------------------------------------------------------------- two processes

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one(meshes, tmp_path):
    base_dir, result = meshes
    port = _free_port()
    procs = [_run(["multiprocess", str(tmp_path), str(port), str(i), "2"]) for i in range(2)]
    _wait(procs, 240)
    reports = []
    for i in range(2):
        with open(tmp_path / f"multiprocess_{i}.json") as f:
            reports.append(json.load(f))
    # each process fed only its half of the rows
    assert [r["rows"] for r in reports] == [[0, worker.BATCH // 2], [worker.BATCH // 2, worker.BATCH]]
    reference = np.array(result["losses"]["a1/1"][:worker.MP_STEPS])
    for r in reports:
        assert r["process_count"] == 2
        np.testing.assert_allclose(r["losses"], reference, rtol=RTOL)
    # the checkpoint both processes wrote restores here, on one device, exactly
    config, params = load_inference_params(tmp_path / "mp_run")
    assert config == worker.BASE
    written = np.load(tmp_path / "mp_params.npz")
    single = np.load(os.path.join(base_dir, f"base_params_step{worker.MP_STEPS}.npz"))
    close = total = 0
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = sh._path_str(path)
        np.testing.assert_array_equal(np.asarray(x), written[name], err_msg=name)
        # vs the single-process run: Adam turns float noise in near-zero gradients (the key
        # bias's true gradient is exactly 0) into steps of up to lr, so single elements may
        # differ by that much; nearly all must agree tightly (the losses above are the tight check).
        diff = np.abs(np.asarray(x) - single[name])
        assert diff.max() <= 2 * worker.LR * worker.MP_STEPS, name
        close += int(np.sum(diff <= 1e-6 + RTOL * np.abs(single[name])))
        total += diff.size
    assert close / total >= 0.99, (close, total)
