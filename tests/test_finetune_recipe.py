"""The recipe read from the data (jaxgpt.finetune.recipe), early stopping, long texts read whole in
windows (--long_text=chunks, jaxgpt.finetune.windows) and the greedy soup of checkpoints
(jaxgpt.finetune.soup): the rules on their own, then finetune.py end to end on a generated set of
short and long texts."""

import contextlib
import dataclasses
import io
import json
import math
import random
import sys
import types

import jax
import numpy as np
import pytest

from jaxgpt.finetune import classify, recipe
from jaxgpt.finetune.classify import ClassifyBatches, classifier_init, classifier_logits, encode_texts, pool
from jaxgpt.finetune.config import FinetuneConfig
from jaxgpt.finetune.soup import greedy_soup
from jaxgpt.finetune.windows import assemble, pack_in_order, window_starts
from jaxgpt.data.tokenizers import CharTokenizer
from jaxgpt.model.config import GPTConfig
from jaxgpt.model.gpt import GPT
from jaxgpt.train.hooks import LoopState, evaluation_hook
from jaxgpt.train.metrics import read_metrics
from jaxgpt.cli import main_guard
from helpers import load_script, run_main

finetune_script = load_script("finetune.py")


# ------------------------------------------------------------------------------ the recipe's rules

def test_a_long_text_set_gets_a_longer_block_and_the_longer_texts_are_counted():
    rng = np.random.default_rng(0)
    short = rng.integers(20, 160, 1000)  # SMS-like
    long = rng.integers(100, 240, 1000)
    a, b = recipe.block_size_from_lengths(short), recipe.block_size_from_lengths(long)
    assert b.block_size > a.block_size
    for lengths, choice in ((short, a), (long, b)):
        assert choice.block_size % recipe.BLOCK_MULTIPLE == 0 and not choice.capped
        assert choice.longer == int(np.sum(lengths > choice.block_size))  # the truncation, counted
        assert np.mean(lengths <= choice.block_size) >= recipe.BLOCK_COVER  # covers 95% of the texts...
        assert np.mean(lengths <= choice.block_size - recipe.BLOCK_MULTIPLE) < recipe.BLOCK_COVER  # ...and no more
    capped = recipe.block_size_from_lengths(rng.integers(300, 3000, 500))
    assert capped.capped and capped.block_size == recipe.BLOCK_CAP and capped.covered < 0.95
    assert recipe.block_size_from_lengths(short, cap=100).block_size == 100  # a backbone's positions


def test_budgets_and_intervals_fit_the_data_and_the_run():
    # SMS: 406,328 characters outside val and test, pretraining batch 16 x 192: 4 passes would read
    # 1,625,312 tokens, over the 1.6M cap: 1.6M / 3,072 = 520.8 iterations, rounded up to a multiple of 10
    assert recipe.pretrain_iters_for(406_328, 16, 192) == 530
    assert recipe.pretrain_iters_for(100_000, 16, 192) == 140  # 4 passes, under the cap: 400,000 / 3,072 = 130.2, up
    assert recipe.pretrain_iters_for(10 ** 8, 16, 192) * 16 * 192 <= recipe.PRETRAIN_MAX_TOKENS + 10 * 16 * 192
    assert recipe.adapt_iters_for(406_328, 16, 128) == 600  # configs/finetune_sms_course.py's measured choice
    assert recipe.adapt_iters_for(recipe.ADAPT_MIN_TOKENS - 1, 16, 128) == 0
    assert recipe.eval_interval_for(300, 16, 149, 1) == 10  # 30 evaluations
    assert recipe.eval_interval_for(300, 16, 600, 1) > 30  # a large val split: fewer of them
    assert recipe.patience_for(300, 10) == 100 and recipe.patience_for(30, 10) == 50  # at least 5 evals


def test_a_config_or_flag_always_wins():
    texts = ["x" * n for n in range(10, 201)]  # 8 of them longer than 192 characters
    auto = FinetuneConfig(init_from="pretrain", pretrain_dataset="task", max_iters=300, batch_size=16, eval_iters=1)
    cfg, line = recipe.resolve_classify_recipe(auto, texts, texts, 149, None)
    assert (cfg.block_size, cfg.eval_interval, cfg.patience) == (192, 10, 100) and cfg.pretrain_iters > 0
    assert "block_size 192 (covers 96% of 191 train texts; 8 longer are read in windows by --long_text=chunks)" in line
    assert "eval_interval 10" in line and "patience 100" in line
    given = auto.replace(block_size=64, eval_interval=5, patience=0, pretrain_iters=7, adapt_iters=0)
    cfg, line = recipe.resolve_classify_recipe(given, texts, texts, 149, None)
    assert (cfg.block_size, cfg.eval_interval, cfg.patience, cfg.pretrain_iters) == (64, 5, 0, 7) and line is None


def test_the_backbone_is_pretrained_with_the_recipe_asked_for():
    from jaxgpt.finetune.backbone import pretrain_options
    from jaxgpt.train.config import TrainConfig, main_job_recipe

    cfg = FinetuneConfig(init_from="pretrain", block_size=96, pretrain_iters=500, pretrain_batch_size=16, seed=7,
                         n_layer=2, pos_emb="learned", mlp="gelu")
    speedrun = pretrain_options(cfg.replace(pretrain_recipe="speedrun"), "texts.txt")
    recipe_keys = main_job_recipe()
    assert recipe_keys["optimizer"] == "muon" and recipe_keys["pos_emb"] == "rope"  # the main job's, from its file
    assert {k: speedrun[k] for k in recipe_keys} == recipe_keys  # the recipe wins over the run's --pos_emb, --mlp
    adamw = pretrain_options(cfg, "texts.txt")  # the default
    assert (adamw["pos_emb"], adamw["mlp"], adamw["learning_rate"]) == ("learned", "gelu", 2e-3)
    assert "optimizer" not in adamw and TrainConfig().optimizer == "adamw"
    for options in (speedrun, adamw):  # the run's data, size, length, budget and seed either way
        assert (options["dataset"], options["block_size"], options["n_layer"], options["max_iters"],
                options["batch_size"], options["seed"]) == ("texts.txt", 96, 2, 500, 16, 7)
        TrainConfig(**options)  # valid options of train.py: the backbone's run accepts them


def test_early_stopping_counts_iterations_since_the_best_val_loss():
    lines = []
    report = types.SimpleNamespace(event=lambda e: None, line=lines.append)
    values = iter([2.0, 1.5, 1.6, 1.5, 1.7])
    evaluation = evaluation_hook(lambda params: {"train": {"loss": 1.0}, "val": {"loss": next(values)}}, report,
                                 patience=20)
    loop = LoopState(types.SimpleNamespace(params=None), 0, math.inf)
    stops = []
    for it in (0, 10, 20, 30, 40):
        loop = evaluation(dataclasses.replace(loop, iter_num=it))
        stops.append(loop.stop)
    assert stops == [False, False, False, True, True] and loop.best_iter == 10  # 1.5 again is no improvement
    assert [line for line in lines if line.startswith("early stop")][0] == \
        "early stop at iteration 30: val loss has not improved since iteration 10 (--patience=20)"


def test_a_greedy_soup_adds_checkpoints_best_first_while_val_loss_does_not_rise():
    weights = {1: 2.0, 2: 4.0, 3: 10.0, 4: 3.5}  # one weight each; val loss (w - 3)^2, recorded as training saw it
    recorded = [(step, (w - 3) ** 2) for step, w in weights.items()]
    members, soup, loss = greedy_soup(recorded, lambda step: {"w": weights[step]}, lambda p: (p["w"] - 3) ** 2)
    # 3.5 alone (0.25); with 2: 2.75 (0.0625, kept); with 4: 3.1667 (0.028, kept); with 10: 4.875 (3.5, left out)
    assert members == [4, 1, 2] and soup["w"] == pytest.approx(9.5 / 3) and loss == pytest.approx((9.5 / 3 - 3) ** 2)
    alone, _, _ = greedy_soup([(1, 0.0), (2, 1.0)], lambda step: {"w": float(step)}, lambda p: p["w"])
    assert alone == [1]  # nothing helps: the best checkpoint alone, what --soup=0 tests


# --------------------------------------------------------------------------------- long texts

def test_windows_cover_a_long_text_evenly():
    assert window_starts(50, 64) == [0]
    assert window_starts(130, 64) == [0, 33, 66]  # ceil(130 / 64) = 3 windows, the last ends at 130
    starts = window_starts(10_000, 64, max_windows=8)  # too long: 8 evenly spaced windows, gaps between
    assert len(starts) == 8 and starts[0] == 0 and starts[-1] == 10_000 - 64


CFG = GPTConfig(vocab_size=12, block_size=8, n_layer=1, n_head=2, n_embd=16)


@pytest.mark.parametrize("pooling", ["max", "mean", "last"])
def test_a_texts_windows_are_pooled_into_one_prediction(pooling):
    """Chunks: the logits of a text are the head on its windows' pooled features, pooled again (max,
    else mean), whatever the other texts in the batch; padding rows count nowhere."""
    params = classifier_init(CFG, 3, "all", 2, jax.random.key(0))
    tok = CharTokenizer("abcdefghijkl")
    texts = ["abcdefghijklabcdefghijkl" + "abc", "fed"]  # 27 characters: 4 windows of 8; 3 characters: 1
    enc = encode_texts(tok, texts, 8, "chunks")
    assert enc.windows_N.tolist() == [4, 1] and enc.truncated == 1
    mask = np.arange(8)[None, :] < enc.lengths_N[:, None]
    slot = np.repeat(np.arange(2), enc.windows_N).astype(np.int32)
    model = GPT(CFG)
    logits = jax.jit(lambda p, x, m, s: classifier_logits(model, p, x, m, pooling, 1.0, slot_B=s))(
        params, enc.tokens_NT, mask, slot)
    per_window = jax.jit(lambda p, x, m: pool(model.apply({"params": p}, x, method=GPT.features), m, pooling))(
        params["backbone"], enc.tokens_NT, mask)
    combine = (lambda f: f.max(0)) if pooling == "max" else (lambda f: f.mean(0))
    head = params["head"]
    for text, rows in ((0, slice(0, 4)), (1, slice(4, 5))):
        expected = combine(np.asarray(per_window[rows])) @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
        np.testing.assert_allclose(logits[text], expected, rtol=1e-5, atol=1e-6)  # float32 sums in another order


def test_chunk_batches_keep_a_texts_windows_together_and_resume_exactly():
    windows = np.array([1, 3, 1, 2, 4, 1, 1], np.int32)
    first = np.cumsum(windows) - windows
    tokens = np.arange(windows.sum() * 2, dtype=np.int32).reshape(-1, 2)
    targets = np.repeat(np.arange(len(windows)) % 2, windows)[:, None].repeat(2, 1).astype(np.int32)
    split = {"train": tokens, "val": tokens, "test": tokens}
    batches = ClassifyBatches(split, {k: targets for k in split}, seed=3, windows={k: windows for k in split})
    seen = []
    for _ in range(6):
        x, y, slot = batches.train_batch(1, 5, slice(None))
        for s in set(slot[0, :, 0].tolist()) - {5}:
            rows = x[0][slot[0, :, 0] == s]
            text = int(np.searchsorted(first, rows[0, 0] // 2, side="right") - 1)  # tokens name their row
            np.testing.assert_array_equal(rows, tokens[first[text]:first[text] + windows[text]])
            seen.append(text)
        assert np.all(y[0][slot[0, :, 0] == 5] == -1)  # filler rows count nowhere
    assert sorted(seen[:len(windows)]) == list(range(len(windows)))  # an epoch: every text once
    state = batches.state_dict()
    again = ClassifyBatches(split, {k: targets for k in split}, seed=99, windows={k: windows for k in split})
    again.load_state_dict(json.loads(json.dumps(state)))
    for _ in range(3):
        np.testing.assert_array_equal(np.concatenate(batches.train_batch(2, 5, slice(None)), -1),
                                      np.concatenate(again.train_batch(2, 5, slice(None)), -1))
    val = pack_in_order(windows, 5)
    assert [t.tolist() for t in val] == [[0, 1, 2], [3], [4, 5], [6]]  # whole texts, in order
    assert sum(len(t) for t in val) == len(windows)
    _, _, slot = assemble(val[0], first, windows, tokens, targets, 5)
    assert slot[:, 0].tolist() == [0, 1, 1, 1, 2]


# ------------------------------------------------------------------------- finetune.py end to end

TINY = ["--init_from=scratch", "--n_layer=1", "--n_head=2", "--n_embd=32", "--batch_size=8", "--eval_iters=2",
        "--max_iters=8", "--lr_decay_iters=8", "--warmup_iters=2", "--learning_rate=3e-3", "--progress=False"]
HAM = "hello see you later ok lunch home soon love thanks".split()
SPAM = "win free prize call now cash claim urgent txt reply".split()


def long_text_rows(n=200, seed=0):
    """Short texts of their label's words, and 4% long ones whose words are mixed but for their last
    few, which are their label's (the cue is at the end: beyond a head's block)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label, words = ("spam", SPAM) if i % 2 else ("ham", HAM)
        if i % 50 < 2:
            text = " ".join(rng.choice(HAM + SPAM) for _ in range(rng.randint(25, 45))) + " " + \
                " ".join(rng.choice(words) for _ in range(4))
        else:
            text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 7)))
        rows.append((text, label))
    return rows


def run_in_process(*args):
    """finetune.py's main with these arguments: (exit code, stdout, stderr), for a module fixture (no capsys)."""
    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["finetune.py", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main_guard(finetune_script.main)
        code = 0
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def chunks_run(tmp_path_factory):
    """A finished tiny run with --long_text=chunks, its block size left to the data, and early stopping
    forced: a learning rate too small to move a float32 weight, so val loss never improves after
    iteration 0, and --patience=4 with an eval every 2 iterations (given: they win over the data); the
    test reads a soup of up to 3 checkpoints. (out_dir, stdout, the confusion matrix figure's title,
    the data's path)."""
    folder = tmp_path_factory.mktemp("chunks")
    path = folder / "long.csv"
    path.write_text("text,label\n" + "".join(f"{t},{l}\n" for t, l in long_text_rows()), encoding="utf-8")
    titles = []
    plot = classify.plot_confusion_matrix

    def recorded(*args, title="", **kwargs):
        titles.append(title)
        return plot(*args, title=title, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(classify, "plot_confusion_matrix", recorded)
        code, out, err = run_in_process("--long_text=chunks", f"--dataset={path}", f"--out_dir={folder / 'run'}", *TINY,
                                        "--learning_rate=1e-30", "--min_lr=0", "--eval_interval=2", "--patience=4",
                                        "--soup=3")
    assert code == 0, err
    return folder / "run", out, titles[-1], path


def test_the_recipe_is_said_and_recorded_and_long_texts_are_read_whole(chunks_run):
    run, out, title, _ = chunks_run
    line = next(line for line in out.splitlines() if line.startswith("recipe from the data"))
    assert line.startswith("recipe from the data (a config or flag wins): block_size 64 (covers 9")
    assert "are read in windows by --long_text=chunks" in line and "eval_interval" not in line  # given: it wins
    options = json.loads((run / "run_config.json").read_text(encoding="utf-8"))
    assert (options["block_size"], options["eval_interval"], options["patience"]) == (64, 2, 4)  # what it ran with
    meta = json.loads((run / "data_meta.json").read_text(encoding="utf-8"))
    counts = {k: sum(v.values()) for k, v in meta["counts"].items()}
    assert meta["windows"]["train"] > counts["train"] and meta["truncated"]["train"] > 0
    final = read_metrics(str(run / "metrics.jsonl"))[-1]
    assert sum(map(sum, final["confusion_matrix"])) == counts["test"]  # texts, not windows, are counted
    assert 0.0 <= final["baseline_test_accuracy"] <= 1.0 and final["baseline_C"] > 0
    assert f"n-gram baseline {final['baseline_test_accuracy']:.4f}" in title
    assert "baseline (char 1-4-gram TF-IDF + logistic regression" in out


def test_a_long_text_is_classified_in_windows(capsys, chunks_run):
    run = chunks_run[0]
    text = " ".join(["hello lunch home"] * 30) + " win free prize cash"
    code, out, err = run_main(capsys, finetune_script.main, f"--out_dir={run}", f"--classify={text}",
                              prog="finetune.py")
    assert code == 0, err
    probs = dict(line.split("\t") for line in out.strip().splitlines())
    assert set(probs) == {"ham", "spam"} and abs(sum(map(float, probs.values())) - 1) < 1e-3


def test_early_stopping_ends_the_run_and_the_best_checkpoint_is_tested(chunks_run):
    run, out = chunks_run[:2]
    assert "early stop at iteration 4: val loss has not improved since iteration 0 (--patience=4)" in out
    events = read_metrics(str(run / "metrics.jsonl"))
    assert max(e["iter"] for e in events if "val_loss" in e) == 4 and "test_accuracy" in events[-1]
    assert "done: 4 iterations" in out


def test_the_soup_is_named_in_the_final_event_and_read_by_classify(chunks_run):
    run, out = chunks_run[:2]
    final = read_metrics(str(run / "metrics.jsonl"))[-1]
    assert final["soup"][0] == final["checkpoint"] and set(final["soup"]) <= {2, 4}  # the kept checkpoints
    assert f"soup: checkpoints {final['soup']} averaged" in out
    options = json.loads((run / "run_config.json").read_text(encoding="utf-8"))
    assert options["soup"] == 3 and options["keep_checkpoints"] == 5  # raised to every evaluation's
