"""finetune.py end to end on tiny settings: the demo, exact resume, classifying texts, and every
bad input (one line, exit 2, the run directory byte for byte as it was)."""

import json
import os
import sys

import numpy as np
import pytest

from jaxgpt.finetune import instruct
from jaxgpt.finetune.config import FinetuneConfig
from jaxgpt.finetune.classify_data import make_splits, load_labeled
from jaxgpt.data.corpus import DataError
from jaxgpt.train.checkpoint import load_inference_params
from jaxgpt.train.metrics import WALL_CLOCK_KEYS, read_metrics
from helpers import FINETUNE_TINY, REPO, digest, load_script, one_line_exit_2, run_main, spam_rows, write_csv

finetune_script = load_script("finetune.py")

TINY = FINETUNE_TINY


def run(capsys, script, *args):
    return run_main(capsys, script.main, *args, prog="finetune.py")


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("csv") / "sms.csv", spam_rows())


def test_resume_is_exact_and_the_run_reports_metrics(capsys, tmp_path, csv_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    code, out, err = run(capsys, finetune_script, f"--out_dir={whole}", f"--dataset={csv_path}", *TINY)
    assert code == 0, err
    assert "test (checkpoint" in out and "before fine-tuning" in out
    code, _, err = run(capsys, finetune_script, f"--out_dir={part}", f"--dataset={csv_path}", *TINY, "--max_iters=4")
    assert code == 0, err
    code, out, err = run(capsys, finetune_script, f"--out_dir={part}", "--init_from=resume", "--max_iters=8",
                         "--progress=False")
    assert code == 0, err
    a, b = read_metrics(str(whole / "metrics.jsonl")), read_metrics(str(part / "metrics.jsonl"))

    def later(events):
        return [{k: v for k, v in e.items() if k not in WALL_CLOCK_KEYS} for e in events if e["iter"] > 4]

    assert later(a) == later(b) and len(later(a)) >= 3  # logs at 6 and 8, the eval at 8, the test event
    evals = [e for e in a if "val_loss" in e]
    for key in ("val_accuracy", "val_precision", "val_recall", "val_f1", "train_accuracy"):
        assert all(0.0 <= e[key] <= 1.0 for e in evals), key
    final = a[-1]
    assert {"test_accuracy", "test_precision", "test_recall", "test_f1"} <= set(final)
    assert sum(map(sum, final["confusion_matrix"])) == 24  # 20% of 120 texts
    assert os.path.isfile(whole / "confusion_matrix.png")
    assert json.loads((whole / "data_meta.json").read_text())["labels"] == ["ham", "spam"]
    # classify new texts with the run: label probabilities
    code, out, err = run(capsys, finetune_script, f"--out_dir={whole}", "--classify=free cash prize claim now")
    assert code == 0, err
    probs = dict(line.split("\t") for line in out.strip().splitlines())
    assert set(probs) == {"ham", "spam"} and abs(sum(map(float, probs.values())) - 1) < 1e-3


def test_embedded_demo_pretrains_a_backbone_once_then_reuses_it(capsys, tmp_path, corpus_path):
    # the demo's path with a 300k-character slice of the stdlib corpus to pretrain on (quicker)
    args = ["--dataset=stdlib_lines", "--init_from=pretrain", f"--pretrain_dataset={corpus_path}",
            "--pretrain_iters=3", "--pretrain_batch_size=4",
            *TINY[1:], "--block_size=48", "--max_iters=4", "--lr_decay_iters=4"]
    code, out, err = run(capsys, finetune_script, f"--out_dir={tmp_path / 'a'}", *args)
    assert code == 0, err
    assert f"pretraining the backbone on {corpus_path}" in out and "labels ['code', 'prose']" in out
    events = read_metrics(str(tmp_path / "a" / "metrics.jsonl"))
    assert events[-1]["labels"] == ["code", "prose"] and "test_f1" in events[-1]
    code, out, err = run(capsys, finetune_script, f"--out_dir={tmp_path / 'b'}", *args)
    assert code == 0, err
    assert "pretraining the backbone" not in out and "backbone: reusing" in out


# ------------------------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def target(tmp_path_factory, csv_path):
    """An out_dir holding a finished run: every bad command below passes --overwrite=True at it."""
    out = tmp_path_factory.mktemp("target") / "run"
    argv, sys.argv = sys.argv, ["finetune.py", f"--out_dir={out}", f"--dataset={csv_path}", *TINY, "--max_iters=4"]
    try:
        finetune_script.main(sys.argv[1:])
    finally:
        sys.argv = argv
    return out


@pytest.fixture(scope="module")
def char_backbone(tiny_run):
    """A tiny train.py run: a char backbone with its tokenizer (conftest.tiny_run's, shared)."""
    return tiny_run / "run"


def refused(capsys, target, expected, *args):
    before = digest(target)
    result = run(capsys, finetune_script, f"--out_dir={target}", "--overwrite=True", *TINY, *args)
    line = one_line_exit_2(result, expected)
    assert digest(target) == before
    return line


def test_missing_column_or_field(capsys, tmp_path, target):
    path = write_csv(tmp_path / "x.csv", spam_rows(20), header="message,category")
    refused(capsys, target, "has no column 'text' (columns: message, category): pass --text_column=NAME",
            f"--dataset={path}")
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text('{"text": "hi", "label": "a"}\n{"text": "yo"}\n', encoding="utf-8")
    refused(capsys, target, "line 2 has no field 'label'", f"--dataset={jsonl}")


def test_one_class_only(capsys, tmp_path, target):
    path = write_csv(tmp_path / "one.csv", [(t, "ham") for t, _ in spam_rows(20)])
    refused(capsys, target, "has one class only ('ham')", f"--dataset={path}")


def test_tables_read_every_row_the_way_their_format_says(capsys, tmp_path, target):
    rows = spam_rows(300)
    tsv = tmp_path / "quotes.tsv"  # a field that starts with a quote swallowed the rows up to the next one
    tsv.write_text("text\tlabel\n" + "".join(f'"{t}\t{l}\n' if i % 50 == 0 else f"{t}\t{l}\n"
                                             for i, (t, l) in enumerate(rows)), encoding="utf-8")
    data = load_labeled(str(tsv))
    assert len(data.texts) == 300 and data.texts[0].startswith('"') and "(300 rows)" in data.description
    bom = tmp_path / "excel.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + "text,label\n".encode() + "".join(f"{t},{l}\n" for t, l in rows).encode())
    assert load_labeled(str(bom)).texts[:2] == tuple(t for t, _ in rows[:2])
    long_text = "x" * 200_000  # over the csv module's default field limit (131,072)
    long_csv = write_csv(tmp_path / "long.csv", [(long_text, "ham")] + rows[1:])
    assert load_labeled(long_csv).texts[0] == long_text
    quoted = write_csv(tmp_path / "quoted.csv", [('"win, now", call', "spam")] + rows[1:])
    with pytest.raises(DataError, match=r"quoted.csv line 2 (is not valid CSV|has 3 field)"):
        load_labeled(quoted)
    comma = write_csv(tmp_path / "comma.csv", rows[:2] + [("a, b", "ham")] + rows[3:])
    line = refused(capsys, target, "line 4 has 3 field(s), the header 2", f"--dataset={comma}")
    assert "double quotes" in line


def test_empty_files(capsys, tmp_path, target):
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    refused(capsys, target, "is empty", f"--dataset={empty}")
    header_only = write_csv(tmp_path / "header.csv", [])
    refused(capsys, target, "holds no examples", f"--dataset={header_only}")


def test_label_in_val_or_test_that_train_lacks(capsys, tmp_path, target):
    path = write_csv(tmp_path / "rare.csv", spam_rows(60) + [("a lonely text", "rare")])
    data = load_labeled(path)
    seed = None
    for s in range(20):  # a seed that sends the one 'rare' text out of train
        try:
            make_splits(data, s, 0.1, 0.2)
        except DataError:
            seed = s
            break
    assert seed is not None
    refused(capsys, target, "holds label(s) ['rare'] that the train split lacks", f"--dataset={path}",
            f"--data_seed={seed}")


def test_backbone_directory_without_a_checkpoint(capsys, tmp_path, target, csv_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    refused(capsys, target, "holds no checkpoint", f"--dataset={csv_path}", f"--init_from={empty}")
    half = tmp_path / "half"
    half.mkdir()
    (half / "run_config.json").write_text("{}", encoding="utf-8")
    refused(capsys, target, "a run directory without a checkpoint", f"--dataset={csv_path}", f"--init_from={half}")


def test_bad_label_smoothing_or_lm_loss_weight(capsys, target, csv_path):
    refused(capsys, target, "--label_smoothing must be in [0, 1), got 1.0", f"--dataset={csv_path}",
            "--label_smoothing=1")
    refused(capsys, target, "--lm_loss_weight must be >= 0, got -0.5", f"--dataset={csv_path}",
            "--lm_loss_weight=-0.5")
    refused(capsys, target, "--lm_loss_weight must be a finite number, got nan", f"--dataset={csv_path}",
            "--lm_loss_weight=nan")


def test_tokenizer_that_does_not_fit_the_backbone(capsys, target, csv_path, char_backbone):
    refused(capsys, target, "--tokenizer=gpt2 does not fit the backbone", f"--dataset={csv_path}",
            f"--init_from={char_backbone}", "--tokenizer=gpt2")
    refused(capsys, target, "exceeds the backbone's 32 positions", f"--dataset={csv_path}",
            f"--init_from={char_backbone}", "--block_size=64")


def test_a_char_backbone_learns_new_characters_or_reads_them_as_unknown(capsys, tmp_path, csv_path, char_backbone):
    path = write_csv(tmp_path / "odd.csv", [(t + " ☃✈", l) for t, l in spam_rows(40)])
    base = [f"--dataset={path}", *TINY, f"--init_from={char_backbone}", "--max_iters=2"]
    code, out, err = run(capsys, finetune_script, f"--out_dir={tmp_path / 'o'}", *base)
    assert code == 0, err
    assert "2 new characters '☃✈' (mean-initialized)" in out and "not in the backbone's char vocabulary" not in out
    assert "☃✈" in json.loads((tmp_path / "o" / "tokenizer.json").read_text(encoding="utf-8"))["chars"]
    code, out, err = run(capsys, finetune_script, f"--out_dir={tmp_path / 'u'}", *base, "--extend_vocab=False")
    assert code == 0, err
    # 2 unseen characters in each of 40 texts, read as '?' (or the vocabulary's first character)
    assert "note: 80 characters are not in the backbone's char vocabulary" in out


def test_adapting_the_backbone_on_the_task_texts_is_cached(capsys, tmp_path, csv_path, char_backbone):
    args = [f"--dataset={csv_path}", *TINY, f"--init_from={char_backbone}", "--max_iters=2", "--adapt_iters=3",
            "--pretrain_batch_size=4", f"--data_dir={tmp_path / 'cache'}"]
    code, out, err = run(capsys, finetune_script, f"--out_dir={tmp_path / 'a'}", *args)
    assert code == 0, err
    assert "adapting the backbone to the task's texts (3 iterations" in out
    adapted = [d for d in os.listdir(tmp_path / "cache" / "backbones") if d.startswith("adapted-")]
    assert len(adapted) == 1
    events = read_metrics(str(tmp_path / "cache" / "backbones" / adapted[0] / "metrics.jsonl"))
    assert max(e["iter"] for e in events) == 3
    code, out, err = run(capsys, finetune_script, f"--out_dir={tmp_path / 'b'}", *args)
    assert code == 0, err
    assert "reusing" in out and "adapting the backbone" not in out


def test_sft_from_a_char_backbone_that_lacks_the_instructions_characters(capsys, tmp_path, target, char_backbone):
    args = [os.path.join(REPO, "configs", "finetune_sft.py"), f"--init_from={char_backbone}", "--n_per_kind=20",
            "--batch_size=8", "--eval_iters=1", "--max_iters=2", "--eval_interval=2", "--lr_decay_iters=2",
            "--warmup_iters=1", "--block_size=32", "--progress=False"]
    code, out, err = run(capsys, finetune_script, *args, f"--out_dir={tmp_path / 'sft'}")
    assert code == 0, err
    assert "new characters" in out and "(mean-initialized)" in out  # at least the end marker is new
    line = one_line_exit_2(run(capsys, finetune_script, *args, f"--out_dir={target}", "--overwrite=True",
                               "--extend_vocab=False"), "drop --extend_vocab=False to give them ids")
    assert "the backbone's char vocabulary lacks" in line


def test_a_run_never_writes_over_the_backbone_it_starts_from(capsys, csv_path, char_backbone):
    before = digest(char_backbone)
    line = one_line_exit_2(run(capsys, finetune_script, f"--out_dir={char_backbone}", "--overwrite=True", *TINY,
                               f"--dataset={csv_path}", f"--init_from={char_backbone}/"), "are the same directory")
    assert "choose another --out_dir" in line and digest(char_backbone) == before


def test_sft_metadata_is_written_at_the_start_and_overwrite_removes_every_run_file(capsys, tmp_path, csv_path,
                                                                                  monkeypatch):
    out = tmp_path / "run"
    sft = [os.path.join(REPO, "configs", "finetune_sft.py"), "--n_layer=1", "--n_head=2", "--n_embd=32",
           "--n_per_kind=20", "--batch_size=8", "--eval_iters=1", "--max_iters=2", "--eval_interval=2",
           "--lr_decay_iters=2", "--warmup_iters=1", "--block_size=64", "--progress=False", f"--out_dir={out}"]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # stopped before the end of the run

    with monkeypatch.context() as patch:
        patch.setattr(instruct, "finish", killed)
        with pytest.raises(KeyboardInterrupt):
            finetune_script.main(sft)
    assert os.path.isfile(out / "sft.json") and not os.path.exists(out / "responses.jsonl")  # readable already
    code, _, err = run(capsys, finetune_script, *sft, "--overwrite=True")
    assert code == 0, err
    assert os.path.isfile(out / "responses.jsonl")
    code, stdout, err = run(capsys, finetune_script, f"--out_dir={out}", f"--dataset={csv_path}", *TINY,
                            "--max_iters=2", "--overwrite=True")
    assert code == 0, err
    assert "sft.json" in stdout and "responses.jsonl" in stdout  # the overwrite line names what it removed
    assert not os.path.exists(out / "sft.json") and not os.path.exists(out / "responses.jsonl")
    assert os.path.isfile(out / "confusion_matrix.png")


def test_sft_freezes_all_but_the_last_block_or_refuses_what_it_cannot_train(capsys, tmp_path, target, char_backbone):
    args = [os.path.join(REPO, "configs", "finetune_sft.py"), f"--init_from={char_backbone}", "--n_per_kind=20",
            "--batch_size=8", "--eval_iters=1", "--max_iters=4", "--eval_interval=4", "--lr_decay_iters=4",
            "--warmup_iters=1", "--block_size=32", "--progress=False", "--learning_rate=1e-2"]
    out = tmp_path / "sft"
    code, _, err = run(capsys, finetune_script, *args, "--trainable=last_block", f"--out_dir={out}")
    assert code == 0, err
    _, before = load_inference_params(str(char_backbone), "best")
    _, after = load_inference_params(str(out), "latest")
    np.testing.assert_array_equal(after["h_0"]["attn"]["c_attn"]["kernel"], before["h_0"]["attn"]["c_attn"]["kernel"])
    rows = before["wte"]["embedding"].shape[0]  # the backbone's rows; new characters' rows are frozen too
    np.testing.assert_array_equal(after["wte"]["embedding"][:rows], before["wte"]["embedding"])
    assert not np.array_equal(after["h_1"]["attn"]["c_attn"]["kernel"], before["h_1"]["attn"]["c_attn"]["kernel"])
    for trainable in ("head", "lora"):
        one_line_exit_2(run(capsys, finetune_script, *args, f"--trainable={trainable}", f"--out_dir={target}",
                            "--overwrite=True"), "is classification's")


def test_adapt_iters_needs_a_classifier_with_a_backbone(capsys, target, csv_path):
    refused(capsys, target, "--adapt_iters adapts a classifier's backbone", f"--dataset={csv_path}",
            "--adapt_iters=5")  # TINY trains from scratch


def test_sft_demo_runs_through_the_shared_loop(capsys, tmp_path):
    out = tmp_path / "sft"
    code, stdout, err = run(capsys, finetune_script, os.path.join(REPO, "configs", "finetune_sft.py"),
                            f"--out_dir={out}", "--n_layer=1", "--n_head=2", "--n_embd=32", "--n_per_kind=20",
                            "--batch_size=8", "--eval_iters=1", "--max_iters=2", "--eval_interval=2",
                            "--lr_decay_iters=2", "--warmup_iters=1", "--block_size=64", "--progress=False")
    assert code == 0, err
    final = read_metrics(str(out / "metrics.jsonl"))[-1]
    assert 0.0 <= final["test_exact_match"] <= 1.0 and "test_exact_match_reverse" in final
    rows = [json.loads(line) for line in (out / "responses.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == final["test_examples"] and {"instruction", "input", "expected", "generated"} <= set(rows[0])
    assert os.path.isdir(out / "checkpoints" / "2") and os.path.isfile(out / "sft.json")


def test_an_empty_classify_is_refused_not_trained(capsys, target):
    line = refused(capsys, target, "--classify needs a text", "--classify=")
    assert "classification run" in line


def test_adapting_without_new_characters_reads_them_as_unknown(capsys, tmp_path, char_backbone):
    path = write_csv(tmp_path / "odd.csv", [(t + " ☃", l) for t, l in spam_rows(40)])
    code, out, err = run(capsys, finetune_script, f"--out_dir={tmp_path / 'o'}", f"--dataset={path}", *TINY,
                         f"--init_from={char_backbone}", "--max_iters=2", "--adapt_iters=2", "--pretrain_batch_size=4",
                         "--extend_vocab=False", f"--data_dir={tmp_path / 'cache'}")
    assert code == 0, err
    assert "adapting the backbone" in out and "not in the backbone's char vocabulary" in out


def test_an_out_dir_may_share_a_name_with_an_init_from_keyword(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("scratch", "pretrain"):
        assert FinetuneConfig(out_dir=name, init_from=name).out_dir == name
