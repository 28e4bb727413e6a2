"""The run directory's owner (jaxgpt.train.run_dir), the file helpers it stands on (jaxgpt.files)
and the sampler positions (jaxgpt.data.sampler_state): names, bookkeeping, messages, formats."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile

import numpy as np
import pytest

from jaxgpt.data.corpus import BatchSampler
from jaxgpt.data.sampler_state import int_fields, not_a_state, pcg64_words, restore_pcg64
from jaxgpt.data.tokenizers import CharTokenizer
from jaxgpt.files import fetch_once, read_json, write_json_atomic
from jaxgpt.train.metrics import LossCurve, draw_loss_curves, plot_loss_curves, series_points
from jaxgpt.train.run_dir import RUN_FILES, RunDir, RunDirError, RunDirLock, clear_run_files

REFUSED_URL = "http://127.0.0.1:9/nothing"  # the discard port: refused at once, no network needed


def test_file_names_are_those_of_run_directories_written_before(tmp_path):
    run = RunDir(tmp_path)
    names = {os.path.basename(p) for p in (run.checkpoint_dir, run.metrics_path, run.loss_png, run.run_config_path,
                                           run.tokenizer_path, run.data_meta_path, run.sft_config_path,
                                           run.responses_path, run.confusion_png, run.wandb_dir, run.lock_path)}
    assert names == {"checkpoints", "metrics.jsonl", "loss.png", "run_config.json", "tokenizer.json",
                     "data_meta.json", "sft.json", "responses.jsonl", "confusion_matrix.png", "wandb", ".lock"}
    # --overwrite removes exactly these: every file a run writes, the lock aside
    assert set(RUN_FILES) == names - {".lock"}


def test_metadata_round_trips_byte_for_byte(tmp_path):
    run = RunDir(tmp_path)
    assert not run.holds_a_run()
    run.write_run_config({"n_layer": 2, "dataset": "stdlib"})
    run.write_data_meta({"vocab_size": 3, "corpus_description": "caf\u00e9"})
    run.write_tokenizer(CharTokenizer("abc"))
    assert run.holds_a_run() and run.read_run_config() == {"n_layer": 2, "dataset": "stdlib"}
    assert open(run.run_config_path, encoding="utf-8").read() == '{\n  "dataset": "stdlib",\n  "n_layer": 2\n}'
    assert "caf\u00e9" in open(run.data_meta_path, encoding="utf-8").read()  # UTF-8, not \\u escapes
    assert run.read_tokenizer() == CharTokenizer("abc")
    assert sorted(os.listdir(tmp_path)) == ["data_meta.json", "run_config.json", "tokenizer.json"]  # no temporaries


def test_unreadable_metadata_is_one_line_naming_the_file(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(ValueError, match=r"cannot read .*run_config.json: No such file"):
        run.read_run_config()
    open(run.data_meta_path, "w").write("{not json")
    with pytest.raises(ValueError, match=r"data_meta.json is not valid JSON \("):
        run.read_data_meta()
    open(run.run_config_path, "w").write("[1, 2]")
    with pytest.raises(ValueError, match=r"run_config.json does not hold a JSON object"):
        run.read_run_config()


def test_checkpoint_steps_count_only_committed_folders(tmp_path):
    run = RunDir(tmp_path)
    assert run.checkpoint_steps() == [] and run.latest_step() is None
    for name in ("10", "250", "30.orbax-checkpoint-tmp-1", "notes"):
        os.makedirs(os.path.join(run.checkpoint_dir, name))
    open(os.path.join(run.checkpoint_dir, "40"), "w").close()  # a file, not a step
    assert run.checkpoint_steps() == [10, 250] and run.latest_step() == 250


def test_lock_refuses_a_second_writer_with_the_holders_pid(tmp_path):
    out = tmp_path / "new" / "run"
    with RunDirLock(str(out)) as lock:
        assert lock.created and out.is_dir()
        assert (out / ".lock").read_text() == str(os.getpid())
        with pytest.raises(RunDirError) as err:
            RunDirLock(str(out)).acquire()
        assert str(err.value) == (f"{out} is in use by another run (pid {os.getpid()}); wait for it to finish "
                                  "or choose another --out_dir")
    assert (out / ".lock").read_text() == ""  # released: the next writer gets it
    RunDirLock(str(out)).acquire().release()
    (out / "keep.txt").write_text("mine")
    (out / "metrics.jsonl").write_text("")
    assert clear_run_files(str(out)) == ["metrics.jsonl"] and sorted(os.listdir(out)) == [".lock", "keep.txt"]


def test_fetch_once_verifies_before_keeping_and_then_needs_no_network(tmp_path):
    payload = b"the real file\n"
    digest = hashlib.sha256(payload).hexdigest()
    source, wrong = tmp_path / "source.txt", tmp_path / "wrong.txt"
    source.write_bytes(payload)
    wrong.write_bytes(b"something else\n")
    kept = tmp_path / "cache" / "file.txt"
    args = dict(sha256=digest, what="the file", timeout=2, error=ValueError, offline_hint="pass a path instead")
    with pytest.raises(ValueError, match=r"is not the file \(sha256 .*\); not kept\. pass a path instead$"):
        fetch_once(wrong.as_uri(), str(kept), **args)
    assert not kept.exists()
    with pytest.raises(ValueError, match=r"^could not download the file \(http://127.0.0.1:9/nothing: .*\): pass a"):
        fetch_once(REFUSED_URL, str(kept), **args)
    assert fetch_once(source.as_uri(), str(kept), **args) == payload and kept.read_bytes() == payload
    assert fetch_once(REFUSED_URL, str(kept), **args) == payload  # the kept copy: no download
    assert os.listdir(kept.parent) == ["file.txt"]


def test_fetch_once_takes_a_member_of_a_zip_archive(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("inner.txt", b"inside\n")
    archive = tmp_path / "a.zip"
    archive.write_bytes(buf.getvalue())
    kept = tmp_path / "inner.txt"
    data = fetch_once(archive.as_uri(), str(kept), sha256=hashlib.sha256(b"inside\n").hexdigest(), what="it",
                      timeout=2, error=ValueError, offline_hint="offline", member="inner.txt")
    assert data == b"inside\n" == kept.read_bytes()
    with pytest.raises(ValueError, match=r"could not download it .*no item named 'missing'.*: offline"):
        fetch_once(archive.as_uri(), str(tmp_path / "m"), sha256="0" * 64, what="it", timeout=2, error=ValueError,
                   offline_hint="offline", member="missing")


def test_read_json_words_its_errors_as_the_caller_asks(tmp_path):
    path = str(tmp_path / "x.json")
    with pytest.raises(KeyError, match="missing: No such file"):
        read_json(path, error=KeyError, unreadable=lambda reason: f"missing: {reason}")
    write_json_atomic(path, {"b": 1, "a": [1]}, indent=1, sort_keys=False, trailing_newline=True)
    assert open(path).read() == '{\n "b": 1,\n "a": [\n  1\n ]\n}\n'
    assert read_json(path) == {"b": 1, "a": [1]}


def test_a_batch_sampler_position_reads_as_checkpoints_wrote_it(tmp_path):
    tokens = np.arange(1000, dtype=np.uint16)
    sampler = BatchSampler(tokens, seed=7)
    sampler.sample(4, 8)
    state = json.loads(json.dumps(sampler.state_dict()))  # through JSON, as in a checkpoint
    assert list(state) == ["bit_generator", "seed", "state", "inc", "has_uint32", "uinteger"]
    assert isinstance(state["state"], str) and isinstance(state["inc"], str)  # 128-bit words as decimal strings
    expected = sampler.sample(4, 8)
    other = BatchSampler(tokens, seed=0)
    other.load_state_dict(state)
    assert other.seed == 7 and all(np.array_equal(a, b) for a, b in zip(other.sample(4, 8), expected))
    with pytest.raises(ValueError, match=r"^not a BatchSampler state_dict \(KeyError: 'inc'\)$"):
        other.load_state_dict({k: v for k, v in state.items() if k != "inc"})


def test_generator_words_and_counters(tmp_path):
    rng = np.random.default_rng(3)
    rng.integers(0, 10, size=5)
    words = pcg64_words(rng)
    again = np.random.default_rng(0)
    restore_pcg64(again, json.loads(json.dumps(words)))
    assert np.array_equal(again.integers(0, 1 << 30, size=4), rng.integers(0, 1 << 30, size=4))
    assert int_fields({"seed": 1, "epoch": "2", "pos": 3}, ("seed", "epoch", "pos")) == (1, 2, 3)
    with pytest.raises(KeyError):
        int_fields({"seed": 1}, ("seed", "pos"))
    assert str(not_a_state("an SFT batch state", KeyError("pos"))) == "not an SFT batch state (KeyError: 'pos')"


def test_one_loss_curve_figure_for_a_run_and_for_several(tmp_path):
    run = RunDir(tmp_path / "run")
    os.makedirs(run.path)
    events = [{"iter": 0, "train_loss": 4.0, "val_loss": 4.1}, {"iter": 5, "train_loss": 3.5},
              {"iter": 10, "train_loss": 3.0, "val_loss": 3.2}]
    open(run.metrics_path, "w").write("".join(json.dumps(e) + "\n" for e in events))
    png = plot_loss_curves([run.metrics_path], str(tmp_path / "one.png"), labels=[""], x_axis="iteration",
                           eval_train=True)
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    run.write_run_config({"batch_size": 4, "block_size": 8})
    out = plot_loss_curves([run.path, run.path], str(tmp_path / "figs" / "two.png"), labels=["a", "b"])
    assert os.path.isfile(out) and sorted(os.listdir(tmp_path / "figs")) == ["two.png"]
    with pytest.raises(ValueError, match="x_axis must be"):
        plot_loss_curves([run.path], str(tmp_path / "x.png"), x_axis="steps")
    with pytest.raises(ValueError, match=r"no metrics.jsonl at"):
        plot_loss_curves([str(tmp_path / "nothing")], str(tmp_path / "y.png"))


def test_loss_curve_series_are_log_lines_and_finite_evals():
    events = [{"iter": 10, "train_loss": 3.0, "val_loss": 3.2}, {"iter": 5, "train_loss": 3.5},
              {"iter": 0, "train_loss": 4.0, "val_loss": 4.1}, {"iter": 6, "train_loss": float("nan")},
              {"iter": 15, "train_loss": 2.9, "val_loss": float("nan")}, {"iter": 20, "val_loss": 2.8}]
    assert series_points(events, "train") == [(5, 3.5)]
    assert series_points(events, "train_eval", scale=32) == [(0, 4.0), (320, 3.0)]
    assert series_points(events, "val") == [(0, 4.1), (10, 3.2), (20, 2.8)]


def test_loss_curve_figure_with_nothing_to_draw_is_still_written(tmp_path):
    # a run's loss.png is redrawn while it trains: a run with no finite point yet gets empty axes, not an error
    png = draw_loss_curves([LossCurve("", [{"iter": 0, "train_loss": float("nan")}])], tmp_path / "empty.png",
                           log_x=True)
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
