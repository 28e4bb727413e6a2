"""sweep.py with `variants` (issue 27): named option sets run as members by the grid's own runner,
the ablation table (time to target read from each member's metrics.jsonl), the refusals (one line,
exit 2, nothing written), a rerun that reuses finished members and refuses a changed one; and
configs/sweep_speedrun_ablation.py, which must end at exactly configs/speedrun_cpu.py.

One tiny sweep (1 layer, 16 wide, 10 iterations, 3 variants) is shared by the module."""

import contextlib
import dataclasses
import io
import json
import pathlib

import pytest

from jaxgpt.scale import ablation, sweep
from jaxgpt.train.config import config_from_sources
from jaxgpt.train.loop import config_from_argv
from jaxgpt.train.metrics import read_metrics
from helpers import load_script, one_line_exit_2, run_script, snapshot

BASE = ("base = dict(dataset={dataset!r}, n_layer=1, n_head=1, n_embd=16, block_size=16, batch_size=4, "
        "max_iters=10, lr_decay_iters=10, warmup_iters=1, eval_interval=2, eval_iters=1, log_interval=5, "
        "eval_full_val=True)\n")
VARIANTS = ('variants = [("ref", {}), ("lr-1e-2", dict(learning_rate=1e-2)), '
            '("muon", dict(learning_rate=1e-2, optimizer="muon", muon_learning_rate=0.05))]\n')
NAMES = ["ref", "lr-1e-2", "muon"]


@dataclasses.dataclass(frozen=True)
class Sweep:
    root: pathlib.Path
    corpus: pathlib.Path
    config: str
    out: pathlib.Path
    stdout: str


@pytest.fixture(scope="module")
def variants_sweep(tmp_path_factory, corpus_text):
    root = tmp_path_factory.mktemp("variants_sweep")
    corpus = root / "corpus.txt"  # 5k val tokens: the whole-val evaluations stay cheap
    corpus.write_text(corpus_text[:50_000], encoding="utf-8")
    config = root / "variants.py"
    config.write_text(BASE.format(dataset=str(corpus)) + VARIANTS)
    out, stdout = root / "sweep", io.StringIO()
    with contextlib.redirect_stdout(stdout):
        load_script("sweep.py").main([str(config), f"--out_dir={out}"])
    return Sweep(root, corpus, str(config), out, stdout.getvalue())


def first_at_target(metrics_path, target):
    """(iter, val loss, train_seconds) of the first eval event at or below target, read here by hand."""
    for event in read_metrics(metrics_path):
        if "val_loss" in event and event["val_loss"] <= target:
            return event["iter"], event["val_loss"], event["train_seconds"]
    return None, None, None


def test_variants_run_as_named_members_and_the_table_times_them_from_metrics(variants_sweep):
    out = variants_sweep.out
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [r["name"] for r in runs] == NAMES and all((out / "runs" / n / "result.json").exists() for n in NAMES)
    assert runs[1]["config"]["learning_rate"] == 0.01 and runs[2]["config"]["optimizer"] == "muon"
    assert runs[0]["config"]["learning_rate"] == 1e-3  # the reference: base alone (train.py's default rate)

    table = json.loads((out / "ablation.json").read_text())
    assert table["target_val_loss"] == runs[0]["best_val_loss"] and table["reference"] == "ref"
    rows = table["rows"]
    assert [r["variant"] for r in rows] == NAMES and [r["iterations"] for r in rows] == [10, 10, 10]
    reference_seconds = rows[0]["time_to_target_s"]
    for row, run in zip(rows, runs):
        it, val, seconds = first_at_target(out / "runs" / row["variant"] / "metrics.jsonl", table["target_val_loss"])
        assert (row["iter_at_target"], row["val_at_target"], row["time_to_target_s"]) == (it, val, seconds)
        assert (row["best_val_loss"], row["final_val_loss"]) == (run["best_val_loss"], run["final_val_loss"])
        if seconds is not None:
            assert row["ratio_to_first"] == seconds / reference_seconds
    assert rows[0]["ratio_to_first"] == 1.0 and rows[0]["iter_at_target"] > 0 and reference_seconds > 0
    assert sum(r["time_to_target_s"] is not None for r in rows[1:]) >= 1  # the higher rates beat a 1e-3 reference

    markdown = (out / "ablation.md").read_text()
    assert markdown in variants_sweep.stdout and markdown.count("\n| ") == 1 + len(NAMES)
    assert f"Target val loss {table['target_val_loss']:.4f} (the best val loss of the first variant, ref)" in markdown
    assert (out / "ablation.csv").read_text().splitlines()[0] == ",".join(ablation.ABLATION_COLUMNS)
    assert (out / "loss_curves.png").stat().st_size > 10_000 and not (out / "fit.json").exists()

    # A target of the config's own: every member timed to it (here the worst member's best loss: all reach it).
    results = [(run, read_metrics(out / "runs" / run["name"] / "metrics.jsonl")) for run in runs]
    target = max(run["best_val_loss"] for run in runs)
    found, given = ablation.ablation_rows(results, "ref", target)
    assert found == target
    for row in given:
        it, val, seconds = first_at_target(out / "runs" / row["variant"] / "metrics.jsonl", target)
        assert it is not None and (row["iter_at_target"], row["time_to_target_s"]) == (it, seconds)


def test_a_rerun_reuses_finished_variants_and_refuses_a_changed_one(variants_sweep, capsys):
    out = variants_sweep.out
    before = {name: snapshot(out / "runs" / name) for name in NAMES}
    code, stdout, err = run_script(capsys, "sweep.py", variants_sweep.config, f"--out_dir={out}")
    assert code == 0, err
    assert stdout.count("done, skipped") == 3 and {n: snapshot(out / "runs" / n) for n in NAMES} == before
    changed = variants_sweep.root / "changed.py"
    changed.write_text(pathlib.Path(variants_sweep.config).read_text().replace("learning_rate=1e-2)", "learning_rate=2e-2)"))
    line = one_line_exit_2(run_script(capsys, "sweep.py", str(changed), f"--out_dir={out}"), "sweep member lr-1e-2")
    assert "learning_rate: 0.01 -> 0.02" in line and {n: snapshot(out / "runs" / n) for n in NAMES} == before


@pytest.mark.parametrize("variants, expected", [
    ('{"a": {}}', "variants must be a non-empty list of (name, options) pairs"),
    ('[("a", "fast")]', "each variant must be a (name, options dict) pair"),
    ('[("a/b", {})]', "variant name 'a/b' cannot name a folder"),
    ('[("a", {}), ("a", dict(learning_rate=1e-2))]', "variant 'a' is listed twice"),
    ('[("a", dict(no_such_key=1))]', "unknown key 'no_such_key' in variant 'a'"),
    ('[("a", dict(learning_rate="fast"))]', "'learning_rate' in variant 'a'"),
    ('[("a", dict(out_dir="x"))]', "the sweep sets it"),
    ('[("a", dict(dataset="stdlib"))]', "set it in base"),
    ('[("a", {}), ("b", dict(learning_rate=1e-3))]', "variants 'a' and 'b' train with the same options"),
    ('[("a", dict(optimizer="muon", mup=True, mup_base_width=16))]', "variant 'a': "),
    ('[("a", {})]\nshapes = [dict(n_layer=1)]\ntokens = [128]', "give variants or a scaling grid, not both "
                                                                 "(it also sets shapes, tokens)"),
    ('[("a", {})]\ntarget = -1.0', "target must be a positive finite number"),
    ('[]\nshapes = [dict(n_layer=1, n_head=1, n_embd=16)]\ntokens = [128]\ntarget = 2.0', "target is the ablation"),
])
def test_bad_variants_are_one_line_and_write_nothing(variants_sweep, tmp_path, capsys, variants, expected):
    config = tmp_path / "bad.py"
    config.write_text(BASE.format(dataset=str(variants_sweep.corpus)) + f"variants = {variants}\n")
    one_line_exit_2(run_script(capsys, "sweep.py", str(config), f"--out_dir={tmp_path / 'out'}"), expected)
    assert not (tmp_path / "out").exists()


def test_the_ablation_config_goes_from_nanogpts_cpu_recipe_to_speedrun_cpu():
    spec = sweep.SweepSpec.from_file("configs/sweep_speedrun_ablation.py")
    members = sweep.expand(spec, vocab_size=65)
    assert 6 <= len(members) <= 8 and members[0].options == spec.base
    options = [config_from_sources(m.options).run_options() for m in members]
    reference = config_from_argv(["shakespeare_char_cpu"]).run_options()
    assert options[0] == {**reference, "eval_full_val": True, "eval_interval": 100}
    assert options[-1] == config_from_argv(["speedrun_cpu"]).run_options()
    # The last change is the Newton-Schulz steps (gelu is speedrun_cpu's default, unused by its relu2 MLP).
    last_change = {k for k in options[-1] if options[-1][k] != options[-2][k]}
    assert last_change == {"muon_ns_steps", "gelu"} and options[-1]["mlp"] == "relu2"
    for opts in options:  # the same data, model size and measurement throughout: only the recipe changes
        assert opts["eval_full_val"] is True and all(opts[k] == reference[k] for k in (
            "dataset", "tokenizer", "n_layer", "n_head", "n_embd", "batch_size", "block_size", "dropout", "seed"))
