"""train.py itself, unchanged, as two cooperating processes on a 4-device fsdp x tp mesh.

Every mesh shape (dp, fsdp, tp, 2x2x2, remat) is compared with one device at the library level in
tests/test_sharding.py; this test covers what only the script does: the --fsdp/--tp/coordinator
flags, the whole loop (data, evals, checkpoints, metrics) on a mesh that spans processes, and
printing from process 0 only."""

import os
import socket
import subprocess
import sys

from jaxgpt.train.cli import with_default_config
from jaxgpt.train.loop import config_from_argv, train
from helpers import REPO, TINY, loss_events

RUN = [*TINY, "--n_head=4", "--batch_size=8", "--max_iters=20", "--num_samples=0", "--dropout=0.1"]


def _env(devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_process_mesh_run_matches_one_device(tmp_path, corpus_path):
    args = [*RUN, f"--dataset={corpus_path}"]
    # train.py with no config file runs the main job's config (jaxgpt.train.cli): so does the reference
    train(config_from_argv(with_default_config([f"--out_dir={tmp_path / 'single'}", *args])))
    reference = loss_events(tmp_path / "single" / "metrics.jsonl")

    # Two processes joined through a loopback coordinator, 2 devices each: fsdp=2 x tp=2.
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "train.py", f"--out_dir={tmp_path / 'hosts'}", *args,
                               "--fsdp=2", "--tp=2", f"--coordinator_address=127.0.0.1:{port}",
                               "--num_processes=2", f"--process_id={i}"],
                              cwd=REPO, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert "on 4 cpu device(s)" in outs[0][0] and "'dp': 1, 'fsdp': 2, 'tp': 2" in outs[0][0]
    # Only process 0 prints, logs and plots (gloo itself may print connection lines).
    assert "done:" in outs[0][0] and "jaxgpt:" not in outs[1][0] and "done:" not in outs[1][0]
    _assert_close(loss_events(tmp_path / "hosts" / "metrics.jsonl"), reference)


def _assert_close(events, reference, rtol=1e-5):
    """Same events; losses equal to float32 reduction-order noise (relative 1e-5)."""
    assert [sorted(e) for e in events] == [sorted(e) for e in reference]
    for got, want in zip(events, reference):
        assert got["iter"] == want["iter"]
        for key in ("train_loss", "val_loss"):
            if key in want:
                assert abs(got[key] - want[key]) <= rtol * abs(want[key]), (got, want)
