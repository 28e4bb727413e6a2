"""Tokenizers: round trips, GPT-2 ids, save/load, chunked encoding == whole encoding, errors."""

import base64
import json
import random

import pytest

from jaxgpt.tokenizers import (
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

SHAKESPEARE_PATH = "/work/shared/data/tinyshakespeare.txt"


@pytest.fixture(scope="module")
def shakespeare():
    with open(SHAKESPEARE_PATH, encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def gpt2():
    return build_tokenizer("gpt2")


@pytest.fixture(scope="module")
def bpe(shakespeare):
    return build_tokenizer("bpe", shakespeare[:300_000], vocab_size=1024)


# ---- char ----------------------------------------------------------------------------------------

def test_char_vocab_and_round_trip(shakespeare):
    tok = build_tokenizer("char", shakespeare)
    assert tok.name == "char" and tok.vocab_size == 65 and tok.eot_id is None
    assert tok.chars[:2] == "\n " and tok.chars == "".join(sorted(set(shakespeare)))
    ids = tok.encode(shakespeare)
    assert len(ids) == len(shakespeare) and min(ids) == 0 and max(ids) == 64
    assert tok.decode(ids) == shakespeare
    assert tok.encode("hi") == [tok.chars.index("h"), tok.chars.index("i")]


def test_char_unseen_characters_error_names_them_once_in_order(shakespeare):
    tok = build_tokenizer("char", shakespeare)
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


def test_gpt2_shakespeare_round_trip_and_count(gpt2, shakespeare):
    ids = gpt2.encode(shakespeare)
    assert len(ids) == 338_025  # nanoGPT's shakespeare prepare.py: 301,966 train + 36,059 val
    assert gpt2.decode(ids) == shakespeare


def test_gpt2_out_of_range_decode(gpt2):
    with pytest.raises(ValueError, match="out of range"):
        gpt2.decode([50257])


# ---- bpe -----------------------------------------------------------------------------------------

def test_bpe_size_eot_and_round_trip(bpe, shakespeare):
    assert bpe.name == "bpe" and bpe.vocab_size == 1024 and bpe.eot_id == 1023
    assert bpe.encoding._pat_str == BPE_SPLIT_PATTERN
    ids = bpe.encode(shakespeare)
    assert max(ids) < 1023 and len(ids) < len(shakespeare) / 2  # it learned merges
    assert bpe.decode(ids) == shakespeare
    assert bpe.encode("x<|endoftext|>", allow_special=True)[-1] == 1023
    text = "héllo € 日本 🙂"  # byte-level: characters never seen still round-trip
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_training_is_deterministic_and_default_size(shakespeare):
    a = build_tokenizer("bpe", shakespeare[:200_000], vocab_size=600)
    b = BPETokenizer.train(shakespeare[:200_000], 600, chunk_chars=5_000)  # other chunking, same counts
    assert a == b and a.ranks == b.ranks
    assert build_tokenizer("bpe", shakespeare).vocab_size == DEFAULT_BPE_VOCAB_SIZE == 4096


def test_bpe_vocab_size_errors():
    with pytest.raises(ValueError, match="257"):
        build_tokenizer("bpe", "hello world", vocab_size=256)
    with pytest.raises(TokenizerError, match="too small.*at most"):
        build_tokenizer("bpe", "hello world hello", vocab_size=5000)
    with pytest.raises(ValueError, match="pass text="):
        build_tokenizer("bpe")


# ---- save / load ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["char", "gpt2", "bpe"])
def test_save_load_round_trip(kind, tmp_path, shakespeare, gpt2, bpe):
    tok = {"char": lambda: build_tokenizer("char", shakespeare), "gpt2": lambda: gpt2, "bpe": lambda: bpe}[kind]()
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    loaded = load_tokenizer(path)
    assert type(loaded) is type(tok) and loaded == tok
    assert (loaded.name, loaded.vocab_size, loaded.eot_id) == (tok.name, tok.vocab_size, tok.eot_id)
    sample = shakespeare[:20_000]
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
    with pytest.raises(TokenizerError, match="sorted unique"):
        tokenizer_from_dict({**d, "chars": "ba"})
    with pytest.raises(ValueError, match="unknown tokenizer kind 'sentencepiece'"):
        build_tokenizer("sentencepiece", "abc")


# ---- chunked encoding ----------------------------------------------------------------------------

def test_safe_chunks_encode_like_the_whole_text(gpt2, bpe, shakespeare):
    text = shakespeare[:100_000]
    pieces = safe_chunks(text, 3_000)
    assert "".join(pieces) == text and 20 < len(pieces) < 40
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
