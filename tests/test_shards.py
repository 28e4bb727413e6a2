"""jaxgpt.data.store: sharded token stores (prepare_sharded, ShardedTokens, ShardedBatchSampler).

Everything runs on generated text under tmp_path; the `datasets` checks use local datasets and
run with the Hugging Face hub switched off (HF_HUB_OFFLINE), so nothing touches the network.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import jaxgpt.data.store as shards
from jaxgpt.data import store_cli, store_encode, store_write
from jaxgpt.data.corpus import BatchSampler, DataError
from jaxgpt.data.sources import open_source
from jaxgpt.data.store import ShardedBatchSampler, ShardedSplit, ShardedTokens, batch_sampler
from jaxgpt.data.store_encode import is_val_document
from jaxgpt.data.store_prepare import learn_tokenizer, prepare_sharded
from jaxgpt.data.tokenizers import build_tokenizer, load_tokenizer
from helpers import REPO, one_line_exit_2, run_main, snapshot

SHARD = 600  # tokens per shard: ~20 train shards of the generated corpus
FRAC = 0.1
N_DOCS = 240
WORDS = ("the a river stone light small old quiet garden window north market bread letter"
         " walks finds keeps opens carries under beside before after slowly again").split()


def _document(rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(1, 6)):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 11))]
        sentences.append(" ".join(words).capitalize() + rng.choice(".!?"))
    return "\n".join(sentences) + ("\n" if rng.random() < 0.5 else "")


def _write_corpus(root, n_docs: int, seed: int = 0) -> list:
    """n_docs .txt files in nested folders (one empty, one non-ASCII); returns their texts in the
    order the folder source reads them (sorted relative paths)."""
    rng = random.Random(seed)
    files = {}
    for i in range(n_docs):
        rel = os.path.join(f"part{i % 3}", "deep" if i % 5 == 0 else "", f"doc{i:04d}.txt")
        text = "" if i == 7 else _document(rng) + ("Café déjà vu — naïve.\n" if i == 11 else "")
        files[rel.replace(os.sep, "/")] = text
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    with open(os.path.join(root, "notes.md"), "w") as f:  # not a .txt file: not a document
        f.write("ignored")
    return [files[k] for k in sorted(files)]


def _expected(texts, tok, frac=FRAC, eot=True):
    train, val = [], []
    for i, text in enumerate(texts):
        ids = tok.encode(text) + ([tok.eot_id] if eot and tok.eot_id is not None and text else [])
        (val if frac and is_val_document(i, frac) else train).extend(ids)
    return np.array(train), np.array(val)


def _store(out) -> dict:
    """name -> bytes of everything prepare_sharded leaves (the lock file aside); no leftovers allowed."""
    names = sorted(n for n in os.listdir(out) if n != shards.LOCK_FILE)
    assert not any(".tmp" in n for n in names) and shards.PROGRESS_DIR not in names, names
    return {n: open(os.path.join(out, n), "rb").read() for n in names}


def _inodes(out) -> dict:
    return {n: os.stat(os.path.join(out, n)).st_ino for n in os.listdir(out) if n.endswith(".bin")}


@pytest.fixture(scope="module")
def gpt2():
    return build_tokenizer("gpt2")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return str(root), _write_corpus(root, N_DOCS)


@pytest.fixture(scope="module")
def reference(corpus, gpt2, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    data = prepare_sharded(corpus[0], out, gpt2, shard_tokens=SHARD, val_fraction=FRAC, num_workers=1, progress=False)
    return data, _store(out)


def _prepare(corpus_root, out, tok, **kw):
    kw = {"shard_tokens": SHARD, "val_fraction": FRAC, "num_workers": 1, "progress": False, **kw}
    return prepare_sharded(corpus_root, out, tok, **kw)


# ----------------------------------------------------------------------------------------- writing

def test_round_trip_shard_sizes_and_manifest(corpus, gpt2, reference):
    root, texts = corpus
    data, files = reference
    train, val = _expected(texts, gpt2)
    np.testing.assert_array_equal(data.train.to_array(), train)
    np.testing.assert_array_equal(data.val.to_array(), val)
    assert data.train.dtype == np.uint16 and data.val.dtype == np.uint16

    manifest = json.loads(files["manifest.json"])
    for split, tokens in (("train", train), ("val", val)):
        entries = manifest[split]["shards"]
        sizes = [e["tokens"] for e in entries]
        assert sizes[:-1] == [SHARD] * (len(sizes) - 1) and 0 < sizes[-1] <= SHARD and sum(sizes) == len(tokens)
        assert [e["file"] for e in entries] == [f"{split}_{k:06d}.bin" for k in range(len(entries))]
        for e in entries:
            assert shards.hashlib.sha256(files[e["file"]]).hexdigest() == e["sha256"]
            assert len(files[e["file"]]) == 2 * e["tokens"]
    assert data.train.num_shards >= 10 and data.val.num_shards >= 2
    assert manifest["documents"] == N_DOCS and manifest["val_documents"] == N_DOCS // 10
    assert manifest["split"] == {"by": "documents", "val_fraction": FRAC}
    assert manifest["tokenizer"]["kind"] == "gpt2" and manifest["eot_id"] == gpt2.eot_id == 50256
    assert manifest["source"]["kind"] == "folder" and f"{N_DOCS} .txt files" in manifest["source"]["description"]
    assert manifest["fingerprint"] == data.meta["fingerprint"] and len(manifest["fingerprint"]) == 64
    assert load_tokenizer(os.path.join(data.out_dir, "tokenizer.json")) == gpt2 == data.tokenizer
    assert data.meta["train_tokens"] == len(train) and data.meta["source_sha256"] == manifest["source_sha256"]
    json.dumps(data.meta)  # goes into checkpoints as data_meta.json
    # every 10th document is val: docs 9, 19, ...; exactly floor(n f) of them
    assert [i for i in range(40) if is_val_document(i, FRAC)] == [9, 19, 29, 39]
    assert sum(is_val_document(i, 0.01) for i in range(1000)) == 10


def test_char_tokenizer_has_no_eot_and_learns_whole_source(corpus, tmp_path):
    root, texts = corpus
    tok = learn_tokenizer(open_source(root), "char")
    assert set(tok.chars) == set("".join(texts)) and tok.eot_id is None
    data = _prepare(root, tmp_path / "char", tok, val_fraction=0.0, shard_tokens=5000)
    assert data.val.num_shards == 0 and len(data.val) == 0
    assert tok.decode(data.train.to_array()) == "".join(texts)  # documents simply concatenated


def test_output_independent_of_num_workers(corpus, gpt2, reference, tmp_path):
    # two spawned workers, small work units so both get some: byte-identical to the in-process run
    _prepare(corpus[0], tmp_path / "w2", gpt2, num_workers=2, batch_chars=2000)
    assert _store(tmp_path / "w2") == reference[1]


def test_val_shards_splits_by_shard(corpus, gpt2, tmp_path):
    root, texts = corpus
    data = _prepare(root, tmp_path / "vs", gpt2, val_fraction=None, val_shards=2)
    train, val = _expected(texts, gpt2, frac=0)
    stream = np.concatenate([train, val]) if len(val) else train
    assert data.val.num_shards == 2 and list(data.val.counts) == [SHARD, SHARD]
    np.testing.assert_array_equal(np.concatenate([data.val.to_array(), data.train.to_array()]), stream)
    assert data.meta["split_by"] == "shards" and data.manifest["split"] == {"by": "shards", "val_shards": 2}
    with pytest.raises(DataError, match="val_shards=99 leaves none for train"):
        _prepare(root, tmp_path / "vs99", gpt2, val_fraction=None, val_shards=99)
    with pytest.raises(ValueError, match="not both"):
        _prepare(root, tmp_path / "both", gpt2, val_fraction=0.1, val_shards=1)


# ------------------------------------------------------------------------------------------ resume

@pytest.mark.parametrize("crash", ["shard_renamed_record_missing", "mid_shard"])
def test_resume_after_crash_is_byte_identical_and_skips_done_shards(crash, corpus, gpt2, reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_write, real_call = store_write.write_record, store_encode.DocumentEncoder.__call__
    calls = []

    def failing_write(path, obj):
        if crash == "shard_renamed_record_missing" and path.endswith(os.path.join("progress", "train_000006.json")):
            raise RuntimeError("simulated crash")
        real_write(path, obj)

    def failing_encode(self, labels, texts):
        calls.append(1)
        if crash == "mid_shard" and len(calls) == 30:
            raise RuntimeError("simulated crash")
        return real_call(self, labels, texts)

    monkeypatch.setattr(store_write, "write_record", failing_write)
    monkeypatch.setattr(store_encode.DocumentEncoder, "__call__", failing_encode)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _prepare(corpus[0], out, gpt2, batch_chars=500)
    monkeypatch.undo()
    assert not os.path.exists(out / "manifest.json")
    with pytest.raises(DataError, match="unfinished preparation"):
        ShardedTokens(out)
    # litter a kill -9 would leave: half-written temporary files
    (out / "train_000042.bin.tmp99999").write_bytes(b"\0" * 10)
    (out / "progress" / "train_000042.json.tmp99999").write_text("{")
    kept = {n: ino for n, ino in _inodes(out).items() if n < "train_000006.bin" and n.startswith("train")}
    assert len(kept) >= 4

    _prepare(corpus[0], out, gpt2)
    assert _store(out) == reference[1]
    after = _inodes(out)
    assert all(after[n] == ino for n, ino in kept.items()), "complete shards were rewritten"


def test_resume_split_by_shards(corpus, gpt2, tmp_path, monkeypatch):
    fresh = _prepare(corpus[0], tmp_path / "fresh", gpt2, val_fraction=None, val_shards=3)
    real_write = store_write.write_record

    def failing_write(path, obj):
        if path.endswith(os.path.join("progress", "all_000007.json")):  # the 8th shard of the one stream
            raise RuntimeError("simulated crash")
        real_write(path, obj)

    monkeypatch.setattr(store_write, "write_record", failing_write)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _prepare(corpus[0], tmp_path / "out", gpt2, val_fraction=None, val_shards=3)
    monkeypatch.undo()
    assert {"val_000002.bin", "train_000004.bin"} <= set(_inodes(tmp_path / "out"))
    data = _prepare(corpus[0], tmp_path / "out", gpt2, val_fraction=None, val_shards=3)
    assert _store(tmp_path / "out") == _store(fresh.out_dir)
    assert data.corpus.sha256 == data.meta["source_sha256"] == fresh.manifest["source_sha256"]


def test_resume_after_kill_9(corpus, gpt2, reference, tmp_path):
    """A real SIGKILL in the middle of a preparation (a slowed-down encoder in a subprocess)."""
    out = tmp_path / "killed"
    script = tmp_path / "slow_prepare.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from jaxgpt.data import store_encode, store_prepare
        assert "datasets" not in sys.modules  # imported lazily, only for dataset sources
        real = store_encode.DocumentEncoder.__call__
        def slow(self, labels, texts):
            time.sleep(0.03)
            return real(self, labels, texts)
        store_encode.DocumentEncoder.__call__ = slow
        from jaxgpt.data.tokenizers import build_tokenizer
        store_prepare.prepare_sharded({corpus[0]!r}, {str(out)!r}, build_tokenizer("gpt2"), shard_tokens={SHARD},
                               val_fraction={FRAC}, num_workers=1, progress=False, batch_chars=300)
        print("finished")
    """))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    progress = out / "progress"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if progress.is_dir() and sum(n.startswith("train_") for n in os.listdir(progress)) >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    assert len(_inodes(out)) < len([n for n in reference[1] if n.endswith(".bin")])
    _prepare(corpus[0], out, gpt2)
    assert _store(out) == reference[1]


def test_damaged_store_is_detected_and_repaired(corpus, gpt2, reference, tmp_path):
    out = tmp_path / "store"
    shutil.copytree(reference[0].out_dir, out)
    ShardedTokens(out)  # intact
    # corrupt one val shard (same size), delete one train shard
    path = out / "val_000001.bin"
    raw = bytearray(path.read_bytes())
    raw[3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"shard val_000001\.bin .* is corrupt \(sha256"):
        ShardedTokens(out)
    assert len(ShardedTokens(out, verify=False).val) == len(reference[0].val)  # sizes still agree
    (out / "train_000004.bin").write_bytes(b"\0\0")
    with pytest.raises(DataError, match=r"shard train_000004\.bin .* has 2 bytes, expected"):
        ShardedTokens(out, verify=False)
    os.remove(out / "train_000003.bin")
    with pytest.raises(DataError, match=r"shard train_000003\.bin .* is missing"):
        ShardedTokens(out)
    before = _inodes(out)
    _prepare(corpus[0], out, gpt2)  # rewrites the damaged shards (and those after them in their split)
    assert _store(out) == reference[1]
    after = _inodes(out)
    assert after["train_000002.bin"] == before["train_000002.bin"] and after["val_000000.bin"] == before["val_000000.bin"]
    # an intact store: a rerun only verifies it
    _prepare(corpus[0], out, gpt2)
    assert _inodes(out) == after


def test_refuses_to_mix_inputs_unless_forced(gpt2, tmp_path):
    root = tmp_path / "small"
    _write_corpus(root, 40, seed=1)
    out = tmp_path / "out"
    _prepare(root, out, gpt2, shard_tokens=200)
    stored = _store(out)
    with pytest.raises(DataError, match=r"other inputs \(shard_tokens 200 -> 300\).*force=True"):
        _prepare(root, out, gpt2, shard_tokens=300)
    with pytest.raises(DataError, match=r"other inputs \(eot_id 50256 -> None; tokenizer \(eot_id, kind, sha256, vocab_size\)\)"):
        _prepare(root, out, learn_tokenizer(open_source(root), "char"), shard_tokens=200)
    (root / "part0" / "zzz.txt").write_text("A new document.\n")
    with pytest.raises(DataError, match=r"other inputs \(source \(bytes, files, listing_sha256\)\)"):
        _prepare(root, out, gpt2, shard_tokens=200)
    assert _store(out) == stored  # nothing touched
    data = _prepare(root, out, gpt2, shard_tokens=200, force=True)
    texts = [text for _, text, _ in open_source(root).documents()]
    assert "A new document.\n" in texts
    train, val = _expected(texts, gpt2)
    np.testing.assert_array_equal(data.train.to_array(), train)
    np.testing.assert_array_equal(data.val.to_array(), val)
    fresh = tmp_path / "fresh"
    _prepare(root, fresh, gpt2, shard_tokens=200)
    assert _store(out) == _store(fresh)


def test_source_errors(gpt2, tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        prepare_sharded(str(tmp_path / "missing"), tmp_path / "o", gpt2, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"has no \.txt files"):
        prepare_sharded(tmp_path / "empty", tmp_path / "o", gpt2, progress=False)
    blank = tmp_path / "blank"
    blank.mkdir()
    for i in range(20):
        (blank / f"{i}.txt").write_text("")
    with pytest.raises(DataError, match="has no text"):
        prepare_sharded(blank, tmp_path / "o2", gpt2, val_fraction=0.1, progress=False)
    with pytest.raises(DataError, match=r"3 documents: too few for val_fraction=0\.1"):
        prepare_sharded(_small(tmp_path / "three", 3), tmp_path / "o3", gpt2, val_fraction=0.1, progress=False)
    one = tmp_path / "one.txt"
    one.write_text("hello")
    with pytest.raises(DataError, match=r"jaxgpt\.data\.corpus\.prepare"):
        open_source(one)
    bad = _small(tmp_path / "bad", 12)
    (bad / "x.txt").write_bytes(b"ok \xff")
    with pytest.raises(DataError, match=r"x\.txt is not UTF-8"):
        prepare_sharded(bad, tmp_path / "o4", gpt2, val_fraction=0.1, progress=False)
    with pytest.raises(DataError, match=r"cannot encode document 0\.txt: characters not in the char vocabulary"):
        prepare_sharded(_small(tmp_path / "chars", 12), tmp_path / "o5", build_tokenizer("char", "xyz"),
                        val_fraction=0.1, progress=False)


def _small(root, n):
    root.mkdir()
    for i in range(n):
        (root / f"{i}.txt").write_text(f"Document number {i}.\n")
    return root


# ----------------------------------------------------------------------------------------- sampler

def _synthetic_split():
    counts = [50, 7, 120, 64]  # shard 1 is shorter than block_size + 1: never drawn
    return ShardedSplit([np.arange(n, dtype=np.uint32) + 1000 * k for k, n in enumerate(counts)]), counts


def test_sampler_windows_are_slices_of_one_shard():
    split, counts = _synthetic_split()
    T = 16
    sampler = ShardedBatchSampler(split, seed=3)
    x_ABT, y_ABT = sampler.sample_accum(50, 40, T)
    assert x_ABT.shape == (50, 40, T) and x_ABT.dtype == np.int32
    x, y = x_ABT.reshape(-1, T), y_ABT.reshape(-1, T)
    shard, offset = x[:, 0] // 1000, x[:, 0] % 1000
    np.testing.assert_array_equal(x, x[:, :1] + np.arange(T))  # contiguous
    np.testing.assert_array_equal(y, x + 1)  # targets: the next token, same shard
    assert np.all(offset + T + 1 <= np.array(counts)[shard])  # never past the shard's end
    assert 1 not in shard
    # shard chosen in proportion to its window starts (50-16, 0, 120-16, 64-16)
    freq = np.bincount(shard, minlength=4) / len(shard)
    np.testing.assert_allclose(freq, np.array([34, 0, 104, 48]) / 186, atol=0.03)
    with pytest.raises(DataError, match="no shard with block_size\\+1 = 121 tokens"):
        sampler.sample(2, 120)


def test_sampler_determinism_state_dict_and_rows():
    split, _ = _synthetic_split()
    a, b = ShardedBatchSampler(split, seed=7), ShardedBatchSampler(split, seed=7)
    for _ in range(3):
        np.testing.assert_array_equal(a.sample(8, 10)[0], b.sample(8, 10)[0])
    state = json.loads(json.dumps(a.state_dict()))
    want = [a.sample_accum(2, 8, 10) for _ in range(2)]
    c = ShardedBatchSampler(split, seed=0)
    c.load_state_dict(state)
    for x_y in want:
        got = c.sample_accum(2, 8, 10)
        np.testing.assert_array_equal(got[0], x_y[0])
        np.testing.assert_array_equal(got[1], x_y[1])
    # processes keep their rows of the same global batch
    whole = ShardedBatchSampler(split, seed=5).sample(8, 10)[0]
    halves = [ShardedBatchSampler(split, seed=5, process_index=p, process_count=2).sample(8, 10)[0] for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves), whole)
    np.testing.assert_array_equal(ShardedBatchSampler(split, seed=5).sample(8, 10, rows=slice(2, 5))[0], whole[2:5])


def test_single_shard_sampler_equals_batch_sampler(reference):
    tokens = reference[0].train.shards[0]
    ours, theirs = ShardedBatchSampler([tokens], seed=11), BatchSampler(tokens, seed=11)
    for got, want in ((ours.sample(4, 32), theirs.sample(4, 32)), (ours.sample_accum(3, 4, 32), theirs.sample_accum(3, 4, 32))):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    assert ours.state_dict() == theirs.state_dict()


def test_sampler_on_a_store(reference):
    data = reference[0]
    sampler = batch_sampler(data.train, seed=1, name="train")
    assert isinstance(sampler, ShardedBatchSampler) and isinstance(batch_sampler(np.arange(9), 0), BatchSampler)
    x, y = sampler.sample(4, 64)
    stream = data.train.to_array()
    for row_x, row_y in zip(x, y):
        starts = [i for i in range(len(stream) - 64) if np.array_equal(stream[i:i + 64], row_x)]
        assert starts and any(np.array_equal(stream[i + 1:i + 65], row_y) for i in starts)


# ---------------------------------------------------------------------------------------- datasets

@pytest.fixture
def offline_hf(tmp_path, monkeypatch):
    """The datasets library, offline, with its caches under tmp_path."""
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(key, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_home" / "datasets"))
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_home" / "datasets", raising=False)
    datasets.disable_progress_bars()
    return datasets


def test_saved_dataset_and_jsonl_sources(offline_hf, corpus, gpt2, reference, tmp_path):
    datasets = offline_hf
    texts = corpus[1]
    ds = datasets.Dataset.from_dict({"body": texts, "n": list(range(len(texts)))})
    ds.save_to_disk(str(tmp_path / "saved"))
    data = _prepare(tmp_path / "saved", tmp_path / "o1", gpt2, text_field="body")
    np.testing.assert_array_equal(data.train.to_array(), reference[0].train.to_array())
    np.testing.assert_array_equal(data.val.to_array(), reference[0].val.to_array())
    assert data.manifest["source"]["kind"] == "saved_dataset" and data.meta["documents"] == len(texts)
    assert data.meta["source_sha256"] == reference[0].meta["source_sha256"]  # the same documents' content
    # shards equal the folder's; only the manifest (source) differs
    assert {k: v for k, v in _store(tmp_path / "o1").items() if k.endswith(".bin")} == \
        {k: v for k, v in reference[1].items() if k.endswith(".bin")}

    with pytest.raises(DataError, match=r"no column 'text' \(columns: \['body', 'n'\]\): pass text_field="):
        _prepare(tmp_path / "saved", tmp_path / "o2", gpt2)
    datasets.DatasetDict({"train": ds, "test": ds.select(range(5))}).save_to_disk(str(tmp_path / "dict"))
    small = _prepare(tmp_path / "dict", tmp_path / "o3", gpt2, text_field="body", split="test", val_fraction=0.0)
    np.testing.assert_array_equal(small.train.to_array(), _expected(texts[:5], gpt2, frac=0)[0])
    with pytest.raises(DataError, match=r"has splits \['train', 'test'\], not 'validation'"):
        _prepare(tmp_path / "dict", tmp_path / "o4", gpt2, text_field="body", split="validation")

    # a .jsonl file, streamed through datasets.load_dataset("json")
    with open(tmp_path / "docs.jsonl", "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}) + "\n")
    streamed = _prepare(tmp_path / "docs.jsonl", tmp_path / "o5", gpt2)
    np.testing.assert_array_equal(streamed.train.to_array(), reference[0].train.to_array())
    assert streamed.meta["documents"] == len(texts) and streamed.manifest["source"]["kind"] == "datasets"


def test_hub_name_offline_is_a_clear_error(offline_hf, gpt2, tmp_path):
    with pytest.raises(DataError, match=r"cannot fetch the Hugging Face dataset 'someone/no-such-corpus' \(offline.*"
                                        r"save_to_disk\(DIR\)\) and pass DIR as the source"):
        prepare_sharded("someone/no-such-corpus", tmp_path / "o", gpt2, progress=False)
    assert not os.path.exists(tmp_path / "o")


# --------------------------------------------------------------------------------------------- CLI

def test_cli(corpus, tmp_path, capsys, monkeypatch):
    store_cli.main([f"--source={corpus[0]}", f"--out_dir={tmp_path / 'cli'}", "--tokenizer=char", "--shard_tokens=4000",
                 "--val_fraction=0.05", "--num_workers=1", "--progress=False"])
    line = capsys.readouterr().out
    assert "train shards" in line and f"{N_DOCS:,} documents" in line
    data = ShardedTokens(tmp_path / "cli")
    assert data.tokenizer.name == "char" and data.meta["val_fraction"] == 0.05

    from jaxgpt.cli import main_guard

    monkeypatch.setattr(sys, "argv", ["shards", f"--source={tmp_path / 'nowhere'}", f"--out_dir={tmp_path / 'x'}"])
    with pytest.raises(SystemExit) as exit_info:
        main_guard(store_cli.main)
    assert exit_info.value.code == 2 and capsys.readouterr().err.strip().endswith("no such file or folder")


def test_cli_refusals_leave_out_dir_as_it_was(corpus, tmp_path, capsys):
    """Issue 26.11 and 26.20: an out_dir that is a file said "File exists"; a first preparation that failed
    on bad input (a .txt that is not UTF-8, a source of empty files) left a partial out_dir. And numbers
    the preparation refuses are refused before the tokenizer's pass over the source."""
    bad, empty = tmp_path / "bad", tmp_path / "empty"
    bad.mkdir(), empty.mkdir()
    (bad / "a.txt").write_text("Some text.\n" * 50)
    (bad / "b.txt").write_bytes(b"\xff\xfe\x00binary")  # sorted after a.txt: found while encoding
    (empty / "e.txt").write_text("")
    a_file, mine = tmp_path / "a_file", tmp_path / "mine"
    a_file.write_text("mine")
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    before = snapshot(mine)
    common = ["--tokenizer=gpt2", "--val_fraction=0", "--num_workers=0", "--progress=False"]
    for source, out, expected in ((bad, a_file, f"--out_dir={a_file} is a file, not a directory"),
                                  (bad, a_file / "sub", f"--out_dir={a_file / 'sub'}: {a_file} is a file, not a"),
                                  (bad, tmp_path / "new", "b.txt is not UTF-8 text"),
                                  (bad, mine, "b.txt is not UTF-8 text"),
                                  (empty, tmp_path / "new", "has no text (1 documents, all empty)")):
        one_line_exit_2(run_main(capsys, store_cli.main, f"--source={source}", f"--out_dir={out}", *common), expected)
    assert not (tmp_path / "new").exists() and snapshot(mine) == before and a_file.read_text() == "mine"
    one_line_exit_2(run_main(capsys, store_cli.main, f"--source={tmp_path / 'nowhere'}", f"--out_dir={tmp_path / 'x'}",
                             "--shard_tokens=0"), "--shard_tokens must be >= 1, got 0")


def test_cli_module_with_worker_processes(corpus, reference, tmp_path):
    """`python -m jaxgpt.data.store` with spawned workers (they must import the module, not __main__)."""
    proc = subprocess.run([sys.executable, "-m", "jaxgpt.data.store", f"--source={corpus[0]}", f"--out_dir={tmp_path / 'm'}",
                           f"--shard_tokens={SHARD}", f"--val_fraction={FRAC}", "--num_workers=2", "--progress=False"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert _store(tmp_path / "m") == reference[1]


# --------------------------------------------------------------------------------- in training

def test_train_py_trains_and_resumes_on_a_sharded_store(corpus, tmp_path):
    """The shared loop reads a store as --dataset (windows from its shards), and resumes on it."""
    from jaxgpt.train.metrics import read_metrics
    from jaxgpt.train.loop import config_from_argv, train

    store = tmp_path / "store"
    _prepare(corpus[0], store, build_tokenizer("char", "".join(corpus[1])), shard_tokens=5_000)
    common = [f"--dataset={store}", "--tokenizer=char", "--n_layer=1", "--n_head=2", "--n_embd=32",
              "--block_size=32", "--batch_size=4", "--eval_iters=2", "--eval_interval=10", "--log_interval=5",
              "--num_samples=0", "--progress=False", "--warmup_iters=2"]
    out = tmp_path / "run"
    first = train(config_from_argv([f"--out_dir={out}", *common, "--max_iters=10"]))
    second = train(config_from_argv([f"--out_dir={out}", "--init_from=resume", "--max_iters=20", "--progress=False"]))
    assert second["iters"] == 20 and second["best_val_loss"] < first["best_val_loss"] + 0.5
    evals = [e for e in read_metrics(str(out / "metrics.jsonl")) if "val_loss" in e]
    assert [e["iter"] for e in evals] == [0, 10, 20] and evals[-1]["val_loss"] < evals[0]["val_loss"]
    with pytest.raises(ValueError, match="--tokenizer=char"):  # the store fixes the tokenizer
        train(config_from_argv([f"--out_dir={tmp_path / 'other'}", *common, "--tokenizer=gpt2"]))
    assert not (tmp_path / "other").exists()
