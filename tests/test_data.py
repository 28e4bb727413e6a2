"""Corpora, prepare() and BatchSampler. No network, and no file outside the repository is read:
Tiny Shakespeare is the copy the package ships (an edited one is a copy in tmp_path, never the
shipped file), and the prepare checks use the embedded corpus.
"""

import hashlib
import json
import os
import platform
import socket
import tomllib

import numpy as np
import pytest

import jaxgpt.data.corpus
from helpers import REPO
from jaxgpt.data.corpus import (
    SHAKESPEARE_CHARS,
    SHAKESPEARE_FILENAME,
    SHAKESPEARE_SHA256,
    STDLIB_HEADER,
    STDLIB_MODULES,
    BatchSampler,
    Corpus,
    DataError,
    _token_dtype,
    load_prepared,
    prepare,
    resolve_corpus,
    shakespeare_resource,
)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, corpus_text):
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(corpus_text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def text_corpus(text_file):
    return resolve_corpus(str(text_file))


@pytest.fixture(scope="module")
def prepared_char(text_corpus, tmp_path_factory):
    return prepare(text_corpus, "char", tmp_path_factory.mktemp("char"))


# ---- corpora -------------------------------------------------------------------------------------

def test_stdlib_corpus_is_deterministic_and_substantial():
    a, b = resolve_corpus("stdlib"), resolve_corpus("stdlib")
    assert a.text == b.text and a.sha256 == b.sha256 and len(a.sha256) == 64
    assert 1_000_000 < len(a.text) < 2_500_000
    assert a.name == "stdlib" and a.python_version == platform.python_version()
    assert platform.python_version() in a.description
    assert 20 <= len(STDLIB_MODULES) <= 45 and len(set(STDLIB_MODULES)) == len(STDLIB_MODULES)
    positions = [a.text.index(STDLIB_HEADER.format(path=m)) for m in STDLIB_MODULES]
    assert positions[0] == 0 and positions == sorted(positions)  # fixed, documented order
    assert "def dataclass(" in a.text and "class ArgumentParser(" in a.text


def test_local_file_and_folder(text_corpus, text_file, corpus_text, tmp_path):
    assert text_corpus.sha256 == hashlib.sha256(text_file.read_bytes()).hexdigest()
    assert text_corpus.text == corpus_text and text_corpus.name == "corpus"
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "b.txt").write_text("second\n")
    (folder / "a.txt").write_text("first")  # no trailing newline: one is added
    (folder / "notes.md").write_text("ignored")
    corpus = resolve_corpus(str(folder))
    assert corpus.text == "first\nsecond\n" and corpus.name == "books"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt files"):
        resolve_corpus(str(tmp_path / "empty"))
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        resolve_corpus(str(tmp_path / "latin1.txt"))


def test_unknown_dataset_names_it_and_the_choices():
    with pytest.raises(DataError, match=r"unknown dataset 'openwebtext'.*\['stdlib', 'shakespeare'\]"):
        resolve_corpus("openwebtext")


def test_shakespeare_ships_in_the_package_and_needs_no_network(no_network, tmp_path):
    cache = tmp_path / "cache"  # still accepted, no longer read or written
    corpus = resolve_corpus("shakespeare", cache)
    assert corpus.name == "shakespeare" and corpus.sha256 == SHAKESPEARE_SHA256
    assert len(corpus.text) == SHAKESPEARE_CHARS and corpus.text.startswith("First Citizen:\nBefore we proceed")
    assert len(set(corpus.text)) == 65  # nanoGPT's shakespeare_char vocabulary
    assert hashlib.sha256(corpus.text.encode("utf-8")).hexdigest() == SHAKESPEARE_SHA256
    shipped = os.path.join(os.path.dirname(jaxgpt.data.corpus.__file__), SHAKESPEARE_FILENAME)  # beside corpus.py
    assert corpus.source == shipped == str(shakespeare_resource())
    assert not cache.exists()


def test_shakespeare_is_package_data_so_a_wheel_has_it():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert SHAKESPEARE_FILENAME in pyproject["tool"]["setuptools"]["package-data"]["jaxgpt.data"]


def test_an_edited_shakespeare_is_refused_with_one_line(tmp_path, monkeypatch):
    edited = tmp_path / SHAKESPEARE_FILENAME
    data = shakespeare_resource().read_bytes()
    edited.write_bytes(data.replace(b"First Citizen:", b"First Citizen;", 1))
    monkeypatch.setattr(jaxgpt.data.corpus, "shakespeare_resource", lambda: edited)
    with pytest.raises(DataError) as err:
        resolve_corpus("shakespeare")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{edited} is not the Tiny Shakespeare jaxgpt ships (sha256 ")
    assert f"expected {SHAKESPEARE_SHA256}" in msg and "reinstall jaxgpt" in msg
    assert msg.endswith("e.g. --dataset=/path/to/edited.txt")
    assert resolve_corpus(str(edited)).text.startswith("First Citizen;")  # what the message offers works
    edited.unlink()
    with pytest.raises(DataError, match=r"Tiny Shakespeare is missing from the installed jaxgpt \(.*reinstall jaxgpt"):
        resolve_corpus("shakespeare")


# ---- prepare -------------------------------------------------------------------------------------

def test_prepare_char_files_dtypes_and_sizes(prepared_char, text_corpus):
    d = prepared_char
    out = d.out_dir
    text = text_corpus.text
    n_train = int(len(text) * 0.9)  # nanoGPT's split: data[:int(n*0.9)]
    assert sorted(os.listdir(out)) == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]
    assert (len(d.train), len(d.val)) == (n_train, len(text) - n_train)
    assert isinstance(d.train, np.memmap) and d.train.dtype == np.uint16 and d.val.dtype == np.uint16
    assert os.path.getsize(os.path.join(out, "train.bin")) == 2 * n_train
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta == d.meta
    assert meta["tokenizer_kind"] == "char" and meta["vocab_size"] == len(set(text)) and meta["dtype"] == "uint16"
    assert meta["source_sha256"] == text_corpus.sha256 and meta["format_version"] == 1
    assert (meta["train_tokens"], meta["val_tokens"], meta["val_fraction"]) == (n_train, len(text) - n_train, 0.1)
    assert d.tokenizer.decode(d.train[:200]) == text[:200]
    assert d.tokenizer.decode(d.val) == text[n_train:]
    again = load_prepared(out)
    assert again.meta == meta and np.array_equal(again.val, d.val) and again.tokenizer == d.tokenizer


def test_prepare_gpt2_counts_equal_whole_split_encodings(text_corpus, tmp_path):
    d = prepare(text_corpus, "gpt2", tmp_path, chunk_chars=20_000)  # chunked: must not change the ids
    n_train = int(len(text_corpus.text) * 0.9)
    train_ids = d.tokenizer.encode(text_corpus.text[:n_train])
    val_ids = d.tokenizer.encode(text_corpus.text[n_train:])
    assert (d.meta["train_tokens"], d.meta["val_tokens"]) == (len(train_ids), len(val_ids))
    assert d.train.tolist() == train_ids and d.val.tolist() == val_ids
    assert d.vocab_size == 50257 and d.meta["eot_id"] == 50256 and d.train.dtype == np.uint16


def test_prepare_bpe_on_stdlib_records_python(tmp_path):
    corpus = resolve_corpus("stdlib")
    d = prepare(corpus, "bpe", tmp_path, vocab_size=512, val_fraction=0.05, chunk_chars=100_000)
    assert d.vocab_size == 512 and d.meta["eot_id"] == 511 and d.meta["python_version"] == platform.python_version()
    n_train = int(len(corpus.text) * 0.95)
    assert d.meta["train_chars"] == n_train
    assert d.tokenizer.decode(d.val) == corpus.text[n_train:]  # chunked encoding lost nothing


def test_token_dtype_threshold():
    assert _token_dtype(65) == np.uint16 and _token_dtype(65535) == np.uint16
    assert _token_dtype(65536) == np.uint32 and _token_dtype(100_277) == np.uint32


def _age(out):
    for name in ("train.bin", "val.bin", "meta.json"):
        os.utime(os.path.join(out, name), ns=(0, 0))


def _mtime(out, name="train.bin"):
    return os.stat(os.path.join(out, name)).st_mtime_ns


def test_prepare_skips_when_up_to_date_and_redoes_on_change(tmp_path):
    corpus = Corpus.from_text("abcabd\n" * 400, "toy", "toy corpus", "memory")
    out = tmp_path / "toy"
    prepare(corpus, "char", out)
    _age(out)
    d = prepare(corpus, "char", out)
    assert _mtime(out) == 0 and _mtime(out, "meta.json") == 0  # skipped: nothing rewritten
    assert d.meta["vocab_size"] == 5
    d = prepare(corpus, "char", out, val_fraction=0.2)  # changed split -> redone
    assert _mtime(out) != 0 and d.meta["val_fraction"] == 0.2
    _age(out)
    changed = Corpus.from_text("abcabe\n" * 400, "toy", "toy corpus", "memory")
    d = prepare(changed, "char", out, val_fraction=0.2)  # changed source -> redone
    assert _mtime(out) != 0 and d.meta["source_sha256"] == changed.sha256
    _age(out)
    prepare(changed, "char", out, val_fraction=0.2, force=True)
    assert _mtime(out) != 0
    _age(out)
    prepare(changed, "bpe", out, vocab_size=260, val_fraction=0.2)  # changed tokenizer -> redone
    assert _mtime(out) != 0 and load_prepared(out).meta["tokenizer_kind"] == "bpe"
    _age(out)
    os.remove(out / "val.bin")  # incomplete output is never taken as up to date
    prepare(changed, "bpe", out, vocab_size=260, val_fraction=0.2)
    assert _mtime(out) != 0 and (out / "val.bin").exists()


def test_prepare_errors(tmp_path):
    empty = Corpus.from_text("", "nothing", "empty", "memory")
    with pytest.raises(DataError, match="'nothing'.*empty"):
        prepare(empty, "char", tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        prepare(resolve_corpus(str(tmp_path / "empty.txt")), "gpt2", tmp_path / "out")
    toy = Corpus.from_text("hello\n", "toy", "toy", "memory")
    with pytest.raises(ValueError, match="val_fraction"):
        prepare(toy, "char", tmp_path, val_fraction=1.0)
    with pytest.raises(ValueError, match="unknown tokenizer kind 'word'"):
        prepare(toy, "word", tmp_path)
    with pytest.raises(DataError, match="run prepare first"):
        load_prepared(tmp_path / "nowhere")


# ---- BatchSampler --------------------------------------------------------------------------------

def test_sampler_windows_are_shifted_contiguous_slices():
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = BatchSampler(tokens, seed=3).sample(16, 32)
    assert x.shape == y.shape == (16, 32) and x.dtype == y.dtype == np.int32
    assert np.array_equal(y, x + 1)  # y is x shifted by one
    assert np.array_equal(x, x[:, :1] + np.arange(32))  # each row is one window of the data
    assert x.min() >= 0 and y.max() <= 999
    # every valid start can occur, including the last one (start = n - block_size - 1)
    x, y = BatchSampler(np.arange(10, dtype=np.uint16), seed=0).sample(400, 8)
    assert set(x[:, 0].tolist()) == {0, 1} and y.max() == 9


def test_sampler_determinism(prepared_char):
    a, b, c = (BatchSampler(prepared_char.train, seed=s) for s in (7, 7, 8))
    for _ in range(3):
        xa, ya = a.sample(4, 64)
        xb, yb = b.sample(4, 64)
        xc, _ = c.sample(4, 64)
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb) and not np.array_equal(xa, xc)


def test_sampler_state_dict_resumes_identically(prepared_char):
    a = BatchSampler(prepared_char.train, seed=11)
    a.sample(8, 16)
    a.sample_accum(2, 3, 16)
    state = json.loads(json.dumps(a.state_dict()))  # survives JSON
    expected = [a.sample(8, 16), a.sample_accum(2, 4, 16), a.sample(5, 16)]
    b = BatchSampler(prepared_char.train, seed=999)
    b.load_state_dict(state)
    got = [b.sample(8, 16), b.sample_accum(2, 4, 16), b.sample(5, 16)]
    for (xe, ye), (xg, yg) in zip(expected, got):
        assert np.array_equal(xe, xg) and np.array_equal(ye, yg)
    assert b.seed == 11
    with pytest.raises(ValueError, match="state_dict"):
        b.load_state_dict({"bit_generator": "PCG64"})
    with pytest.raises(ValueError, match="MT19937"):
        b.load_state_dict({**state, "bit_generator": "MT19937"})


def test_sample_accum_shapes_and_single_step_equals_sample(prepared_char):
    x, y = BatchSampler(prepared_char.train, seed=5).sample_accum(3, 4, 16)
    assert x.shape == y.shape == (3, 4, 16) and x.dtype == np.int32
    assert np.array_equal(x[..., 1:], y[..., :-1])
    x1, y1 = BatchSampler(prepared_char.train, seed=5).sample_accum(1, 4, 16)
    xs, ys = BatchSampler(prepared_char.train, seed=5).sample(4, 16)
    assert np.array_equal(x1[0], xs) and np.array_equal(y1[0], ys)


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_process_slices_concatenate_to_the_global_batch(process_count, prepared_char):
    data = prepared_char.train
    gx, gy = BatchSampler(data, seed=2).sample(8, 16)
    gax, _ = BatchSampler(data, seed=2).sample_accum(2, 8, 16)
    parts, accum_parts = [], []
    for p in range(process_count):
        s = BatchSampler(data, seed=2, process_index=p, process_count=process_count)
        x, y = s.sample(8, 16)
        assert x.shape == (8 // process_count, 16)
        parts.append((x, y))
        accum_parts.append(BatchSampler(data, seed=2, process_index=p, process_count=process_count).sample_accum(2, 8, 16)[0])
    assert np.array_equal(np.concatenate([p[0] for p in parts]), gx)
    assert np.array_equal(np.concatenate([p[1] for p in parts]), gy)
    assert np.array_equal(np.concatenate(accum_parts, axis=1), gax)


def test_rows_argument_and_sampler_errors():
    tokens = np.arange(100, dtype=np.uint16)
    gx, _ = BatchSampler(tokens, seed=1).sample(6, 4)
    rx, _ = BatchSampler(tokens, seed=1).sample(6, 4, rows=slice(2, 5))
    assert np.array_equal(rx, gx[2:5])
    with pytest.raises(ValueError, match="not divisible by process_count=4"):
        BatchSampler(tokens, process_index=1, process_count=4).sample(6, 4)
    with pytest.raises(ValueError, match="not both"):
        BatchSampler(tokens, process_index=1, process_count=2).sample(6, 4, rows=slice(0, 3))
    with pytest.raises(ValueError, match="process_index"):
        BatchSampler(tokens, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="block_size"):
        BatchSampler(tokens).sample(2, 0)
    with pytest.raises(ValueError, match="1-D integer"):
        BatchSampler(np.zeros((4, 4), np.int32))


def test_too_short_split_says_how_many_tokens(tmp_path):
    with pytest.raises(DataError, match="val split has 10 tokens but block_size=10 needs at least 11"):
        BatchSampler(np.arange(10, dtype=np.uint16), name="val").sample(2, 10)
    x, _ = BatchSampler(np.arange(11, dtype=np.uint16)).sample(2, 10)  # exactly enough
    assert np.array_equal(x[0], np.arange(10))
    corpus = Corpus.from_text("abcdefghij" * 3, "tiny", "tiny", "memory")
    d = prepare(corpus, "char", tmp_path)  # 27 train / 3 val characters
    with pytest.raises(DataError, match="val split has 3 tokens"):
        BatchSampler(d.val, name="val").sample(1, 8)
    empty_val = prepare(corpus, "char", tmp_path / "noval", val_fraction=0.0).val
    assert len(empty_val) == 0
    with pytest.raises(DataError, match="has 0 tokens"):
        BatchSampler(empty_val, name="val").sample(1, 1)
