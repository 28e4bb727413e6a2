"""Experiment tracking (--tensorboard, --wandb_log): one tiny run with both on (W&B offline), then a
resume from its first checkpoint, read back through TensorBoard's own reader and W&B's transaction
log and compared with metrics.jsonl; the options reaching every sweep member; a missing package refused in
one line before anything is touched; --overwrite clearing the files; the trackers closed when the
run is interrupted.

Tolerances: TensorBoard stores a scalar as float32, so a value read back is the float64 rounded to
float32: relative error <= 2**-24 (6e-8); 1e-6 leaves room. W&B's history keeps float64 as JSON
text written by W&B's Go core in shortest round-trip form: equal to 1e-12 relative."""

import glob
import json
import os
import shutil
import struct
import sys
import types

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import jaxgpt.scale.sweep
import jaxgpt.train.loop
from helpers import TINY, digest, one_line_exit_2, run_script, train_cli
from jaxgpt.train.loop import config_from_argv, train
from jaxgpt.train.metrics import read_metrics
from jaxgpt.train.run_dir import RunDir
from jaxgpt.train.tracking import scalars_of, wandb_can_log

TRACKED = ["--tensorboard=True", "--wandb_log=True", "--wandb_project=tests"]
FLOAT32 = 1e-6


def tensorboard_series(logdir):
    """{tag: [(step, value), ...]} as TensorBoard reads the event files of logdir."""
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected_series(events):
    """{tag: [(step, value), ...]} of metrics.jsonl events, as the trackers name them."""
    series = {}
    for event in events:
        for tag, value in scalars_of(event).items():
            series.setdefault(tag, []).append((event["iter"], value))
    return series


def assert_same_series(got, want, rel):
    assert sorted(got) == sorted(want)
    for tag, points in want.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in points], rel=rel), tag


def wandb_records(path):
    """The records of a W&B transaction log (run-<id>.wandb): a 7-byte header, then LevelDB's log
    format (32 KiB blocks of chunks: crc32c, length, type 1 full / 2 first / 3 middle / 4 last),
    each record a wandb_internal Record protobuf."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, chunks = open(path, "rb").read(), 32768, 7, b""
    while pos + 7 <= len(data):
        room = block - (pos - 7) % block
        if room < 7:  # a block's tail too short for a chunk header is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        chunks = chunk if kind in (1, 2) else chunks + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            yield record


def wandb_history(path):
    """{tag: [(step, value), ...]} of the scalars logged to a W&B run (W&B's own _-keys left out)."""
    series = {}
    for record in wandb_records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
        for tag, value in items.items():
            if not tag.startswith("_"):
                series.setdefault(tag, []).append((items["_step"], value))
    return series


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, corpus_path):
    """A 20-iteration tiny run with both trackers (W&B offline, started from an empty cwd), then the
    same run resumed from its checkpoint at 10 to 30: {"out", "cwd", "first": (events, TensorBoard
    series) after the first run}."""
    root = tmp_path_factory.mktemp("tracked")
    out, cwd = root / "run", root / "cwd"
    cwd.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.chdir(cwd)
        train(config_from_argv([f"--out_dir={out}", f"--dataset={corpus_path}", *TINY, *TRACKED, "--num_samples=0",
                                "--max_iters=20"]))
        first = (read_metrics(RunDir(out).metrics_path), tensorboard_series(out))
        # as sweep.py resumes a member: the tracking options come back from the checkpoint
        train(config_from_argv([f"--out_dir={out}", "--init_from=resume", "--resume_step=10", "--max_iters=30",
                                "--num_samples=0"]))
    return {"out": out, "cwd": cwd, "first": first}


def test_scalar_names_of_each_kind_of_event():
    progress = {"iter": 5, "train_loss": 4.0, "lr": 1e-3, "grad_norm": 2.0, "tokens_per_sec": 9e3, "mfu": 0.01}
    evaluation = {"iter": 10, "train_loss": 3.5, "val_loss": 3.6, "val_ppl": 36.6, "val_accuracy": 0.5}
    classify_test = {"iter": 10, "checkpoint": 10, "test_accuracy": 0.75, "test_f1": 0.5, "labels": ["a", "b"],
                     "confusion_matrix": [[1, 0], [1, 2]]}
    sft_test = {"iter": 10, "test_loss": 1.5, "test_examples": 12, "test_exact_match": 0.25, "flag": True}
    assert scalars_of(progress) == {"train/batch_loss": 4.0, "optim/lr": 1e-3, "optim/grad_norm": 2.0,
                                    "perf/tokens_per_sec": 9e3, "perf/mfu": 0.01}
    assert scalars_of(evaluation) == {"train/loss": 3.5, "val/loss": 3.6, "val/ppl": 36.6, "val/accuracy": 0.5}
    assert scalars_of(classify_test) == {"test/accuracy": 0.75, "test/f1": 0.5}
    assert scalars_of(sft_test) == {"test/loss": 1.5, "test/examples": 12.0, "test/exact_match": 0.25}


def test_tensorboard_events_hold_the_metrics_jsonl_series(tracked):
    events, series = tracked["first"]
    evals = [e for e in events if "val_loss" in e]
    assert [s for s, _ in series["val/loss"]] == [0, 10, 20]
    assert [v for _, v in series["val/loss"]] == pytest.approx([e["val_loss"] for e in evals], rel=FLOAT32)
    assert [s for s, _ in series["train/batch_loss"]] == [5, 10, 15, 20]
    assert_same_series(series, expected_series(events), FLOAT32)  # every numeric field, lr to MFU


def test_a_resume_continues_the_curves(tracked):
    out = tracked["out"]
    assert len(RunDir(out).tensorboard_files()) == 2  # one event file per invocation, in out_dir itself
    events = read_metrics(RunDir(out).metrics_path)
    series = tensorboard_series(out)
    # what the first run logged after the checkpoint at 10 is purged (as metrics.jsonl drops it): one
    # point per step, the resumed run's
    assert [s for s, _ in series["val/loss"]] == [0, 10, 20, 30]
    assert_same_series(series, expected_series(events), FLOAT32)
    first_events, _ = tracked["first"]
    assert [e for e in events if e["iter"] <= 10] == [e for e in first_events if e["iter"] <= 10]


def test_wandb_offline_run_is_under_out_dir_with_the_same_scalars(tracked):
    out, first_events = tracked["out"], tracked["first"][0]
    assert os.listdir(tracked["cwd"]) == []  # nothing in the working directory
    logs = sorted(glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb")))
    run_id = (out / "wandb" / "run_id").read_text().strip()
    assert len(logs) == 2 and all(log.endswith(f"run-{run_id}.wandb") for log in logs)  # resumed: the same run
    assert_same_series(wandb_history(logs[0]), expected_series(first_events), 1e-12)
    resumed = [e for e in read_metrics(RunDir(out).metrics_path) if e["iter"] > 10]
    assert_same_series(wandb_history(logs[1]), expected_series(resumed), 1e-12)
    exits = [r.exit.exit_code for log in logs for r in wandb_records(log) if r.WhichOneof("record_type") == "exit"]
    assert exits == [0, 0]


def test_sweep_members_each_get_the_tracking_options(tiny_run, tmp_path, capsys, monkeypatch):
    config = tmp_path / "sweep_config.py"
    config.write_text(f"base = dict(dataset={str(tiny_run / 'corpus.txt')!r}, n_layer=2, n_head=2, n_embd=32, "
                      "block_size=32, batch_size=4)\nshapes = [dict(n_layer=2, n_head=2, n_embd=32)]\n"
                      "tokens = [1280]\nlearning_rates = [1e-3, 3e-3]\n")
    out = tmp_path / "sweep"
    # the second member was interrupted (a checkpoint of a run without tracking): it resumes, tracked too
    shutil.copytree(tiny_run / "run", out / "runs" / "L2-D32-T1e3-lr0.003")
    trained = []

    def record(cfg):  # the members' configs, not their training (train.py's own tests train)
        trained.append(cfg)
        return {"iters": 0, "best_val_loss": 1.0, "last_val_loss": 1.0}

    monkeypatch.setattr(jaxgpt.scale.sweep, "train", record)
    # the copied run stands for this member's interrupted run (its options differ: tests/test_hostile_sweep.py)
    monkeypatch.setattr(jaxgpt.scale.sweep, "member_changes", lambda *args, **kwargs: [])
    monkeypatch.setenv("WANDB_MODE", "offline")
    code, _out, err = run_script(capsys, "sweep.py", str(config), f"--out_dir={out}", "--tensorboard=True",
                                 "--wandb_log=True", "--wandb_project=sweeps", "--fit=False")
    assert code == 0, err
    assert [(os.path.basename(c.out_dir), c.init_from) for c in trained] == [("L2-D32-T1e3-lr0.001", "scratch"),
                                                                             ("L2-D32-T1e3-lr0.003", "resume")]
    for cfg in trained:  # each member's events in its own run dir: TensorBoard lists it as runs/<member>
        assert cfg.tensorboard and cfg.wandb_log and cfg.wandb_project == "sweeps" and cfg.wandb_run_name == ""


def test_a_missing_package_is_one_line_and_touches_nothing(tiny_run, tmp_path, capsys, monkeypatch):
    run = tiny_run / "run"
    before = digest(run)
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed: `import` raises
    monkeypatch.setitem(sys.modules, "wandb", None)
    for flag, package in (("--tensorboard=True", "tensorboardX"), ("--wandb_log=True", "wandb")):
        for argv in ([f"--out_dir={run}", f"--dataset={tiny_run / 'corpus.txt'}", *TINY, "--overwrite=True"],
                     [f"--out_dir={run}", "--init_from=resume"]):
            line = one_line_exit_2(train_cli(capsys, *argv, flag), f"{flag} needs the {package} package")
            assert f"pip install {package}" in line
    assert digest(run) == before
    new = tmp_path / "new"
    one_line_exit_2(run_script(capsys, "finetune.py", f"--out_dir={new}", "--tensorboard=True"), "tensorboardX")
    sweep_config = tmp_path / "sweep_config.py"
    sweep_config.write_text("base = dict(dataset='shakespeare')\nshapes = [dict(n_layer=1)]\ntokens = [1e3]\n")
    one_line_exit_2(run_script(capsys, "sweep.py", str(sweep_config), f"--out_dir={new}", "--wandb_log=True"),
                    "wandb")
    assert not new.exists()


def test_overwrite_removes_the_tracking_files(tracked, tmp_path, corpus_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(tracked["out"], out)
    (out / "notes.txt").write_text("mine")
    one_line_exit_2(train_cli(capsys, f"--out_dir={out}", f"--dataset={tmp_path / 'missing.txt'}", *TINY,
                              "--overwrite=True", "--max_iters=0"), "missing.txt")  # refused before deleting
    assert len(RunDir(out).tensorboard_files()) == 2 and (out / "wandb").is_dir()
    code, stdout, err = train_cli(capsys, f"--out_dir={out}", f"--dataset={corpus_path}", *TINY, "--overwrite=True",
                                  "--max_iters=0", "--num_samples=0")
    assert code == 0, err
    assert "wandb" in stdout and "events.out.tfevents." in stdout  # the "overwrite: removed ..." line
    assert RunDir(out).tensorboard_files() == [] and not (out / "wandb").exists()
    assert (out / "notes.txt").read_text() == "mine"


class FakeWandb(types.ModuleType):
    """A wandb module that records what the tracker asks of it."""

    def __init__(self):
        super().__init__("wandb")
        self.calls = []

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        module = self

        class Run:
            def log(self, scalars, step):
                module.calls.append(("log", scalars, step))

            def finish(self, exit_code=None):
                module.calls.append(("finish", exit_code))

        return Run()


def test_the_trackers_close_when_the_run_is_interrupted(tiny_run, tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "offline")

    def interrupted_loop(run, steps, loop, checkpointer, report, dropout_rng):
        report.event({"iter": 0, "train_loss": 4.0, "val_loss": 4.1})
        raise KeyboardInterrupt

    monkeypatch.setattr(jaxgpt.train.loop, "run_loop", interrupted_loop)
    out = tmp_path / "run"
    out.mkdir()  # made by the user, so kept after the failure (a run's own new directory is removed)
    with pytest.raises(KeyboardInterrupt):
        train(config_from_argv([f"--out_dir={out}", f"--dataset={tiny_run / 'corpus.txt'}", *TINY, *TRACKED,
                                "--max_iters=20"]))
    assert fake.calls[0][0] == "init" and fake.calls[0][1]["dir"] == str(out)
    assert fake.calls[1:] == [("log", {"train/loss": 4.0, "val/loss": 4.1}, 0), ("finish", 1)]  # failed, closed
    # closed: the event is on disk now, not in the writer's queue (it flushes every FLUSH_SECS)
    assert tensorboard_series(out) == {"train/loss": [(0, 4.0)], "val/loss": [(0, pytest.approx(4.1, rel=FLOAT32))]}


def test_wandb_without_a_login_is_refused_before_the_run_directory_is_touched(tiny_run, tmp_path, capsys,
                                                                              monkeypatch):
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine api.wandb.ai login user password KEY\n")
    assert wandb_can_log({"WANDB_MODE": "offline"}) and wandb_can_log({"WANDB_API_KEY": "k"})
    assert wandb_can_log({"NETRC": str(netrc_file)})
    assert not wandb_can_log({"NETRC": str(netrc_file), "WANDB_BASE_URL": "https://wandb.example.com"})
    assert not wandb_can_log({"NETRC": str(tmp_path / "none")})
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    run = tiny_run / "run"
    before = digest(run)
    line = one_line_exit_2(train_cli(capsys, f"--out_dir={run}", f"--dataset={tiny_run / 'corpus.txt'}", *TINY,
                                     "--overwrite=True", "--wandb_log=True"), "W&B has no login")
    assert "WANDB_MODE=offline" in line
    assert digest(run) == before  # --overwrite deleted nothing
