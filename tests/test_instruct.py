"""Instruction fine-tuning (jaxgpt.finetune.instruct, jaxgpt.finetune.instruct_data): the loss mask against a hand
computation, padding, bucketing, truncation, content-disjoint splits, scoring, data validation,
exact resume of the batches, sample.py --instruction, and a tiny SFT run through the shared step.
"""

from __future__ import annotations

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgpt.finetune import instruct
from jaxgpt.finetune import instruct_data
from jaxgpt.train.checkpoint import Checkpointer
from jaxgpt.train.run_dir import CHECKPOINTS
from jaxgpt.model.config import GPTConfig
from jaxgpt.data.corpus import DataError
from jaxgpt.finetune.instruct_data import Record
from jaxgpt.model.gpt import GPT
from jaxgpt.train.step import create_train_state, make_eval_step, make_train_step
from helpers import run_script

RECORDS = [Record("Say hi.", "", "hi there"), Record("Reverse the word.", "abc", "cba"),
           Record("Add the numbers.", "2 + 3", "5"), Record("Copy.", "hello world", "hello world"),
           Record("Echo.", "x", "x y z w"), Record("Nothing.", "", "ok")]
SPLITS = {"train": RECORDS[:4], "val": RECORDS[4:5], "test": RECORDS[5:]}


def _data(max_length=100, mask_prompt=True, splits=SPLITS, template="short"):
    tok = instruct.char_tokenizer_for([r for s in splits.values() for r in s], template)
    return instruct.prepare_sft(splits, tok, template, max_length, mask_prompt, "test")


def _model(data, block_size=100, seed=0):
    cfg = GPTConfig(vocab_size=data.tokenizer.vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=16,
                    dropout=0.0)
    return cfg, jax.jit(GPT(cfg).init)(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"]


def _hand_loss(cfg, params, data, records, mask_prompt):
    """Mean -log p(target) over the counted targets, from the records' texts (not the batch)."""
    total, count = 0.0, 0
    forward = jax.jit(lambda p, ids: GPT(cfg).apply({"params": p}, ids))  # one compile per length, not per op
    for r in records:
        prompt = data.tokenizer.encode(data.template.prompt(r.instruction, r.input))
        seq = prompt + data.tokenizer.encode(r.output) + [data.eos_id]
        logits = np.asarray(forward(params, jnp.asarray([seq[:-1]], jnp.int32))[0], np.float64)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
        first = len(prompt) if mask_prompt else 1  # index of the first counted TARGET token in seq
        for k in range(first, len(seq)):
            total -= logp[k - 1, seq[k]]
            count += 1
    return total / count, count


@pytest.mark.parametrize("mask_prompt", [True, False])
def test_masked_loss_equals_hand_computation(mask_prompt):
    data = _data(mask_prompt=mask_prompt)
    cfg, params = _model(data)
    task = instruct.build_sft_task(cfg, data, seed=0)
    x, y = instruct.make_batch(data.encoded["train"], np.arange(4), data.buckets, mask_prompt, data.eos_id)
    loss, _ = jax.jit(task.loss)(params, (jnp.asarray(x), jnp.asarray(y)), None)
    want, count = _hand_loss(cfg, params, data, SPLITS["train"], mask_prompt)
    assert int((y >= 0).sum()) == count
    # float32 logits and log-softmax over ~40 ids, summed over < 200 tokens: relative error ~1e-6.
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_mask_prompt_false_counts_the_prompt_and_padding_never_counts():
    on, off = _data(mask_prompt=True), _data(mask_prompt=False)
    enc = on.encoded["train"]
    x, y_on = instruct.make_batch(enc, np.arange(4), on.buckets, True, on.eos_id)
    _, y_off = instruct.make_batch(enc, np.arange(4), on.buckets, False, on.eos_id)
    real = enc.lengths_N - 1  # targets of each example
    assert (y_off >= 0).sum(axis=1).tolist() == real.tolist()
    assert (y_on >= 0).sum(axis=1).tolist() == (enc.lengths_N - enc.prompt_N).tolist()
    # Padding: every position past an example's end is ignored, whatever the mask.
    for i, n in enumerate(real):
        assert np.all(y_off[i, n:] == -1) and np.all(x[i, n:] == on.eos_id)
    # The same examples padded to a longer bucket give the same loss (padding adds nothing).
    cfg, params = _model(off)
    task = instruct.build_sft_task(cfg, off, seed=0)
    pick = np.flatnonzero(enc.lengths_N - 1 <= 64)  # the short examples: bucket 64
    assert pick.size
    short = instruct.make_batch(enc, pick, off.buckets, False, off.eos_id)
    long = instruct.make_batch(enc, pick, off.buckets, False, off.eos_id, T=100)
    assert long[0].shape[1] > short[0].shape[1]
    loss = jax.jit(task.loss)
    np.testing.assert_allclose(float(loss(params, long, None)[0]), float(loss(params, short, None)[0]),
                               rtol=1e-6)


def test_compact_template_counts_the_answer_after_the_equals_sign():
    data = _data(template="compact")
    assert data.template.prompt("Reverse the word.", "abc") == "Reverse the word.\nabc\n="
    assert data.template.prompt("Say hi.") == "Say hi.\n="
    x, y = instruct.make_batch(data.encoded["train"], np.array([1]), data.buckets, True, data.eos_id)
    tok = data.tokenizer
    counted = [int(t) for t in y[0] if t != -1]
    assert tok.decode(counted[:-1]) == "cba" and counted[-1] == data.eos_id  # the answer, then EOS
    first = int(np.flatnonzero(y[0] != -1)[0])
    assert tok.decode([int(x[0, first])]) == "="  # the first counted target follows the "="


def test_bucketing_bounds_the_shapes():
    splits = instruct_data.split_records(instruct_data.embedded_records(40, seed=1), seed=0)
    data = _data(max_length=100, splits={**splits, "train": splits["train"] + RECORDS * 10})  # short and long
    assert data.buckets == (16, 32, 64, 100)
    batches = instruct.SFTBatches(data, seed=0)
    shapes = set()
    for bs in (1, 2, 3, 8):
        for _ in range(20):
            x, y = batches.train_batch(2, bs, slice(None))
            assert x.shape == y.shape == (2, bs, x.shape[-1]) and x.dtype == np.int32
            shapes.add(x.shape[-1])
    assert shapes <= set(data.buckets) and len(shapes) >= 2
    assert batches.eval_batch("val", 3, 4, slice(None))[0].shape[-1] in data.buckets


def test_truncation_is_counted():
    long = Record("Copy.", "", "y" * 80)
    short = Record("Hi.", "", "yo")  # 39 tokens with the template and eos
    splits = {"train": [long, long, short], "val": [short], "test": [Record("Copy.", "q" * 80, "q")]}
    data = _data(max_length=40, splits=splits)
    assert data.encoded["train"].n_truncated == 2 and data.encoded["val"].n_truncated == 0
    assert data.encoded["test"].n_no_response == 1  # its prompt alone fills the 41 tokens
    assert data.encoded["train"].lengths_N.tolist() == [41, 41, 39]
    assert data.summary()["truncated"] == {"train": 2, "val": 0, "test": 1}
    assert "max_length 40: truncated 2/0/1" in instruct.describe(data)


def test_a_small_kind_gives_all_its_distinct_examples_when_more_are_asked():
    # add has 100 x 10 distinct prompts; the other kinds give what is asked
    assert instruct_data.kind_counts(2500) == {"reverse": 2500, "sort": 2500, "add": 1000, "uppercase": 2500}
    records = instruct_data.embedded_records(1200, seed=5)
    adds = [r for r in records if r.kind == "add"]
    assert len(adds) == len({r.key() for r in adds}) == 1000 and len(records) == 3 * 1200 + 1000
    assert all(int(r.output) == sum(int(t) for t in r.input.split(" + ")) for r in adds)
    _, source = instruct_data.resolve_records("embedded", None, n_per_kind=1200, seed=5)
    assert "add 1000" in source and "reverse 1200" in source


def test_held_out_splits_are_disjoint_by_content():
    data = instruct.load_sft_data("embedded", n_per_kind=50, split_seed=4)
    seen = {r.key() for r in data.records["train"]}
    assert not seen & {r.key() for s in ("val", "test") for r in data.records[s]}
    records = instruct_data.embedded_records(200, seed=3)
    assert len({r.key() for r in records}) == len(records) == 800
    assert instruct_data.embedded_records(200, seed=3) == records  # seeded
    splits = instruct_data.split_records(records, seed=7)
    keys = {s: {r.key() for r in splits[s]} for s in instruct_data.SPLITS}
    assert not (keys["train"] & keys["val"]) and not (keys["train"] & keys["test"]) and not (keys["val"] & keys["test"])
    assert [len(splits[s]) for s in instruct_data.SPLITS] == [680, 80, 40]
    # Records sharing a prompt share a split.
    dup = [Record("A", str(i), "x") for i in range(40)] + [Record("A", "0", "other answer")]
    parts = instruct_data.split_records(dup, seed=1)
    holder = [s for s in parts if any(r.input == "0" for r in parts[s])]
    assert len(holder) == 1 and sum(r.input == "0" for r in parts[holder[0]]) == 2


def test_exact_match_scoring():
    m = instruct.exact_match(["cba", "5", "HI", "7"], ["cba", "6", " HI\n", "7 "], ["reverse", "add", "upper", None])
    assert m == {"test_exact_match": 0.75, "test_exact_match_add": 0.0, "test_exact_match_reverse": 1.0,
                 "test_exact_match_upper": 1.0}


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("   \n", "is empty"),
    ("[]", "holds no records"),
    ('[{"instruction": "a", "output": "b"}, {"instruction": "c"}]', "record 1 has no 'output' field"),
    ('[{"instruction": "a", "output": 3}]', "record 0: 'output' must be a string"),
    ('[{"instruction": " ", "output": "b"}]', "record 0: 'instruction' is empty"),
    ('[{"instruction": "a", "output": "b"}, "x"]', "record 1 is a str"),
    ('[{"instruction": "a", "output": "b"', "is not valid JSON"),
    ('{"instruction": "a", "output": "b"}\n{"output": "b"}\n', "line 2 has no 'instruction' field"),
    ('{"instruction": "a", "output": "b"}\nnot json\n', "line 2 is not valid JSON"),
])
def test_dataset_validation_errors(tmp_path, content, message):
    path = tmp_path / "data.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        instruct_data.resolve_records(str(path))
    assert str(path) in str(info.value)


def test_jsonl_and_json_files_and_the_instruction_data_copy(tmp_path, monkeypatch):
    rows = [{"instruction": "a", "input": "i", "output": "b"}, {"instruction": "c", "output": "d"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "d.json").write_text(json.dumps(rows))
    want = [Record("a", "i", "b"), Record("c", "", "d")]
    assert instruct_data.resolve_records(str(tmp_path / "d.jsonl"))[0] == want
    records, source = instruct_data.resolve_records(str(tmp_path / "d.json"))
    assert records == want and "instruction-data" not in source
    # A local copy is recognized by sha256 (the real file's hash stands in for this one's here).
    monkeypatch.setattr(instruct_data, "INSTRUCTION_DATA_SHA256", hashlib.sha256((tmp_path / "d.json").read_bytes()).hexdigest())
    assert instruct_data.resolve_records(str(tmp_path / "d.json"))[1].startswith("instruction-data (local copy")
    # Offline: a clear error naming the path form; a cached verified copy needs no network.
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"could not download .*--dataset=/path/to/instruction-data.json"):
        instruct_data.instruction_data_records(str(cache), url="http://127.0.0.1:9/x.json", timeout=2)
    assert not cache.exists() or not any(cache.iterdir())
    cache.mkdir()
    (cache / "instruction-data.json").write_bytes((tmp_path / "d.json").read_bytes())
    monkeypatch.setattr(instruct_data, "INSTRUCTION_DATA_SHA256", hashlib.sha256((tmp_path / "d.json").read_bytes()).hexdigest())
    records, source = instruct_data.resolve_records("instruction-data", str(cache), url="http://127.0.0.1:9/x.json")
    assert records == want and str(cache) in source


def test_task_rejects_a_model_that_does_not_fit():
    data = _data(max_length=64)
    cfg, _ = _model(data, block_size=32)
    with pytest.raises(DataError, match="block_size"):
        instruct.build_sft_task(cfg, data, seed=0)
    with pytest.raises(DataError, match="ids but the model only"):
        instruct.build_sft_task(cfg.replace(vocab_size=5, block_size=64), data, seed=0)
    with pytest.raises(DataError, match="not in the char vocabulary"):
        instruct.prepare_sft({**SPLITS, "test": [Record("Ünknown", "", "ö")]}, data.tokenizer, "short")


def test_batch_source_resume_is_exact():
    records = instruct_data.embedded_records(10, seed=0)
    data = _data(max_length=100, splits=instruct_data.split_records(records, seed=0))  # 34 train examples
    a = instruct.SFTBatches(data, seed=5)
    for _ in range(3):
        a.train_batch(2, 5, slice(None))
    state = json.loads(json.dumps(a.state_dict()))  # as the checkpoint stores it
    b = instruct.SFTBatches(data, seed=5)
    b.load_state_dict({"iter_num": 3, **state})
    for _ in range(6):  # crosses epoch boundaries (34 examples, 10 a batch)
        xa, ya = a.train_batch(2, 5, slice(None))
        xb, yb = b.train_batch(2, 5, slice(None))
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert a.state_dict()["sft_batches"]["epoch"] >= 2
    # A process's rows are rows of the global batch.
    c = instruct.SFTBatches(data, seed=5)
    full = c.eval_batch("val", 2, 4, slice(None))
    np.testing.assert_array_equal(c.eval_batch("val", 2, 4, slice(2, 4))[1], full[1][:, 2:4])


def test_tiny_sft_training_lowers_the_loss_and_finish_writes_responses(tmp_path):
    records = instruct_data.embedded_records(30, seed=0)
    data = _data(max_length=100, splits=instruct_data.split_records(records, seed=0))
    cfg, _ = _model(data, block_size=100)
    cfg = cfg.replace(n_embd=32)
    task = instruct.build_sft_task(cfg, data, seed=0)
    opt = optax.adamw(3e-3)
    state = create_train_state(task.init_params(jax.random.key(0)), opt)
    step = jax.jit(make_train_step(task.loss, opt))
    evaluate = jax.jit(make_eval_step(task.loss))
    val = task.batches.eval_batch("val", 2, 8, slice(None))
    before = float(evaluate(state.params, val)["loss"])
    for _ in range(40):
        state, _ = step(state, task.batches.train_batch(1, 8, slice(None)), jax.random.key(1))
    after = float(evaluate(state.params, val)["loss"])
    assert after < before - 0.5, (before, after)
    instruct.save_sft_config(str(tmp_path), data)  # what the loop's start writes (Task.start)
    metrics = instruct.finish(cfg, state.params, data, str(tmp_path), batch_size=8)
    rows = [json.loads(line) for line in (tmp_path / "responses.jsonl").read_text().splitlines()]
    assert len(rows) == metrics["test_examples"] == len(data.records["test"])
    assert set(rows[0]) == {"instruction", "input", "expected", "generated", "kind"}
    hits = np.mean([r["expected"].strip() == r["generated"].strip() for r in rows])
    assert metrics["test_exact_match"] == pytest.approx(hits)
    assert set(metrics) >= {f"test_exact_match_{k}" for k in instruct_data.EMBEDDED_KINDS}
    assert np.isfinite(metrics["test_loss"])
    template, eos_id, saved = instruct.read_sft_config(str(tmp_path))
    assert template == data.template and eos_id == data.eos_id and saved["examples"]["test"] == len(rows)


# ------------------------------------------------------------------------- sample.py --instruction

def _sample(capsys, monkeypatch, *args: str):
    """sample.py's main in this process (its bad input in a real process is pinned by
    tests/test_sample_cli.py): (exit code, stdout, stderr)."""
    return run_script(capsys, "sample.py", *args)


def test_sample_instruction_applies_the_saved_template(tmp_path, capsys, monkeypatch):
    data = _data()
    cfg, params = _model(data, seed=3)
    params = jax.tree_util.tree_map(lambda x: x * 6.0 if x.ndim == 2 else x, params)  # livelier output
    with Checkpointer(tmp_path / CHECKPOINTS) as ckpt:
        ckpt.save(1, create_train_state(params, optax.adamw(1e-3)), {"model_config": cfg.to_dict(), "iter_num": 1})
    data.tokenizer.save(tmp_path / "tokenizer.json")
    instruct.save_sft_config(str(tmp_path), data)
    code, out, err = _sample(capsys, monkeypatch, f"--out_dir={tmp_path}", "--instruction=Reverse the word.",
                             "--input=abc", "--temperature=0", "--num_samples=2", "--max_new_tokens=12")
    assert code == 0, err
    want = instruct.respond(cfg, params, data.tokenizer, data.template, data.eos_id, [("Reverse the word.", "abc")],
                            12)[0]
    assert out == (want + "\n" + "-" * 40 + "\n") * 2
    plain = tmp_path / "plain"
    plain.mkdir()
    cases = [
        ([f"--out_dir={tmp_path}", "--input=abc"], "--input goes with --instruction"),
        ([f"--out_dir={tmp_path}", "--instruction= "], "--instruction is empty"),
        ([f"--out_dir={tmp_path}", "--instruction=x", "--start=y"], "exclude each other"),
        (["--init_from=gpt2", "--instruction=x"], "--init_from=resume"),
        ([f"--out_dir={plain}", "--instruction=x"], "sft.json is missing"),
    ]
    for args, message in cases:
        code, _, err = _sample(capsys, monkeypatch, *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
