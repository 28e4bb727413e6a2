"""Tokenizers: round trips, GPT-2 ids, save/load, chunked encoding == whole encoding, errors."""

import base64
import json
import random

import pytest

from jaxgpt.data.tokenizers import (
    BPE_SPLIT_PATTERN,
    DEFAULT_BPE_VOCAB_SIZE,
    BPETokenizer,
    CharTokenizer,
    TokenizerError,
    build_tokenizer,
    load_tokenizer,
    safe_chunks,
    tokenizer_from_dict,
)


@pytest.fixture(scope="module")
def text(corpus_text):
    """300k characters of the embedded stdlib corpus (tests/conftest.py)."""
    return corpus_text


@pytest.fixture(scope="module")
def gpt2():
    return build_tokenizer("gpt2")


@pytest.fixture(scope="module")
def bpe(text):
    return build_tokenizer("bpe", text[:300_000], vocab_size=1024)


# ---- char ----------------------------------------------------------------------------------------

def test_char_vocab_and_round_trip(text):
    tok = build_tokenizer("char", text)
    assert tok.name == "char" and tok.eot_id is None
    assert tok.chars == "".join(sorted(set(text))) and tok.vocab_size == len(set(text))
    ids = tok.encode(text)
    assert len(ids) == len(text) and min(ids) == 0 and max(ids) == tok.vocab_size - 1
    assert tok.decode(ids) == text
    assert tok.encode("hi") == [tok.chars.index("h"), tok.chars.index("i")]


def test_char_unseen_characters_error_names_them_once_in_order(text):
    tok = build_tokenizer("char", text)
    with pytest.raises(ValueError) as err:
        tok.encode("héllo € é")
    assert str(err.value) == "characters not in the char vocabulary: 'é', '€'"


def test_char_decode_rejects_out_of_range_ids():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match="out of range.*3"):
        tok.decode([0, 3])
    assert tok.decode([2, 0]) == "ca"


def test_char_empty_text_and_wrong_vocab_size():
    with pytest.raises(TokenizerError, match="empty"):
        build_tokenizer("char", "")
    with pytest.raises(ValueError, match="vocab_size=10.*char"):
        build_tokenizer("char", "abc", vocab_size=10)
    assert build_tokenizer("char", "cab", vocab_size=3).chars == "abc"


# ---- gpt2 ----------------------------------------------------------------------------------------

def test_gpt2_known_ids(gpt2):
    assert gpt2.name == "gpt2" and gpt2.vocab_size == 50257 and gpt2.eot_id == 50256
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode("<|endoftext|>", allow_special=True) == [50256]
    ordinary = gpt2.encode("<|endoftext|>")  # as text when not allowed
    assert 50256 not in ordinary and gpt2.decode(ordinary) == "<|endoftext|>"
    assert gpt2.encode("a<|endoftext|>b", allow_special=True) == [64, 50256, 65]


def test_gpt2_round_trip_and_compression(gpt2, text):
    ids = gpt2.encode(text)
    assert gpt2.decode(ids) == text and len(text) / 8 < len(ids) < len(text) / 2


def test_gpt2_out_of_range_decode(gpt2):
    with pytest.raises(ValueError, match="out of range"):
        gpt2.decode([50257])


# ---- bpe -----------------------------------------------------------------------------------------

def test_bpe_size_eot_and_round_trip(bpe, text):
    assert bpe.name == "bpe" and bpe.vocab_size == 1024 and bpe.eot_id == 1023
    assert bpe.encoding._pat_str == BPE_SPLIT_PATTERN
    ids = bpe.encode(text)
    assert max(ids) < 1023 and len(ids) < len(text) / 2  # it learned merges
    assert bpe.decode(ids) == text
    assert bpe.encode("x<|endoftext|>", allow_special=True)[-1] == 1023
    text = "héllo € 日本 🙂"  # byte-level: characters never seen still round-trip
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_training_is_deterministic_and_default_size(text):
    a = build_tokenizer("bpe", text[:200_000], vocab_size=600)
    b = BPETokenizer.train(text[:200_000], 600, chunk_chars=5_000)  # other chunking, same counts
    assert a == b and a.ranks == b.ranks
    assert build_tokenizer("bpe", text).vocab_size == DEFAULT_BPE_VOCAB_SIZE == 4096


def test_bpe_vocab_size_errors():
    with pytest.raises(ValueError, match="257"):
        build_tokenizer("bpe", "hello world", vocab_size=256)
    with pytest.raises(TokenizerError, match="too small.*at most"):
        build_tokenizer("bpe", "hello world hello", vocab_size=5000)
    with pytest.raises(ValueError, match="pass text="):
        build_tokenizer("bpe")


# ---- save / load ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["char", "gpt2", "bpe"])
def test_save_load_round_trip(kind, tmp_path, text, gpt2, bpe):
    tok = {"char": lambda: build_tokenizer("char", text), "gpt2": lambda: gpt2, "bpe": lambda: bpe}[kind]()
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    loaded = load_tokenizer(path)
    assert type(loaded) is type(tok) and loaded == tok
    assert (loaded.name, loaded.vocab_size, loaded.eot_id) == (tok.name, tok.vocab_size, tok.eot_id)
    sample = text[:20_000]
    assert loaded.encode(sample) == tok.encode(sample)
    d = json.loads(path.read_text(encoding="utf-8"))
    assert d["kind"] == kind
    if kind == "bpe":
        assert [base64.b64decode(r) for r in d["ranks"]] == bpe.ranks
        assert path.stat().st_size < 30_000  # "a small JSON file"


def test_load_errors(tmp_path):
    with pytest.raises(TokenizerError, match="cannot read"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not valid JSON"):
        load_tokenizer(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(TokenizerError, match="format"):
        load_tokenizer(tmp_path / "other.json")
    d = CharTokenizer.from_text("ab").to_dict()
    with pytest.raises(TokenizerError, match="unknown tokenizer kind 'zz'"):
        tokenizer_from_dict({**d, "kind": "zz"})
    with pytest.raises(TokenizerError, match="unique characters"):
        tokenizer_from_dict({**d, "chars": "aba"})
    assert tokenizer_from_dict({**d, "chars": "bac"}).encode("c") == [2]  # an extended vocabulary keeps its order
    with pytest.raises(ValueError, match="unknown tokenizer kind 'sentencepiece'"):
        build_tokenizer("sentencepiece", "abc")


# ---- chunked encoding ----------------------------------------------------------------------------

def test_safe_chunks_encode_like_the_whole_text(gpt2, bpe, text):
    text = text[:100_000]
    pieces = safe_chunks(text, 3_000)
    # Indented code has few safe cut points (a line starting in column 0), so pieces run long.
    assert "".join(pieces) == text and len(pieces) >= 3
    assert all(len(p) >= 3_000 for p in pieces[:-1])
    for tok in (gpt2, bpe):
        assert [i for ids in tok.encode_batch(pieces) for i in ids] == tok.encode(text)


def test_safe_chunks_on_adversarial_whitespace(gpt2, bpe):
    # Runs of spaces/tabs/CR/newlines, digits and punctuation near line ends are where a careless
    # cut changes the regex pre-tokens; every chunking must give the whole-text ids.
    rng = random.Random(0)
    alphabet = ["a", "bc", " ", "  ", "\n", "\n\n", "\t", "\r\n", ".", "1", "23", "é", "'s", " x"]
    for _ in range(30):
        text = "".join(rng.choice(alphabet) for _ in range(300))
        for size in (1, 7, 50):
            pieces = safe_chunks(text, size)
            assert "".join(pieces) == text
            for tok in (gpt2, bpe):
                assert [i for ids in tok.encode_batch(pieces) for i in ids] == tok.encode(text)
    assert safe_chunks("", 5) == [] and safe_chunks("no newline", 2) == ["no newline"]
    with pytest.raises(ValueError):
        safe_chunks("abc", 0)
