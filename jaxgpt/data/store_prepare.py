"""`prepare_sharded`: a source tokenized into a sharded token store, resumably, as named steps
(check the arguments, choose the tokenizer, fingerprint the inputs, claim out_dir, keep what a
previous run finished, encode the rest, write the manifest); and `learn_tokenizer`, the tokenizer
a source gets when only its kind is named. The layout it writes is jaxgpt.data.store's. A store's
first preparation that fails on bad input (a ValueError, not a crash) removes what it made.
"""

from __future__ import annotations

import fractions
import hashlib
import json
import os
import shutil
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
from tqdm import tqdm  # the text bar: tqdm.auto warns in notebooks without ipywidgets

from jaxgpt.data.corpus import DataError
from jaxgpt.data.sources import DocumentSource, open_source
from jaxgpt.data.store import (
    DEFAULT_SHARD_TOKENS,
    DEFAULT_VAL_FRACTION,
    FORMAT,
    FORMAT_VERSION,
    LOCK_FILE,
    MANIFEST,
    PROGRESS_DIR,
    ShardedTokens,
    read_json_or_none,
    token_dtype,
    tokenizer_sha256,
)
from jaxgpt.data.store_encode import EncodeOptions, encode_source, exact_val_fraction, is_val_document
from jaxgpt.data.store_write import (
    Records,
    StorePlan,
    Stream,
    clear_store,
    foreign_records,
    manifest_intact,
    manifest_to_records,
    remove_tmp_files,
    valid_records,
    write_manifest,
    write_record,
)
from jaxgpt.data.tokenizers import (
    DEFAULT_BPE_VOCAB_SIZE,
    TOKENIZER_FILE,
    BPETokenizer,
    Tokenizer,
    TokenizerError,
    build_tokenizer,
    load_tokenizer,
)
from jaxgpt.files import FileLock, check_folder_target

DEFAULT_BPE_TRAIN_CHARS = 1 << 26
_BATCH_CHARS = 1 << 20  # characters per unit of work sent to a worker


def learn_tokenizer(
    source: DocumentSource,
    kind: str,
    *,
    vocab_size: Optional[int] = None,
    max_chars: int = DEFAULT_BPE_TRAIN_CHARS,
    val_fraction: Optional[float] = None,
    progress: bool = False,
) -> Tokenizer:
    """A tokenizer for `source`: gpt2 is fixed; char's vocabulary is every character of every
    document (a full pass, like jaxgpt.data.corpus.prepare's char); bpe is trained on the first `max_chars`
    characters of the documents (the val documents of `val_fraction` left out), joined by "\\n"."""
    if kind == "gpt2":
        return build_tokenizer("gpt2", vocab_size=vocab_size)
    if kind not in ("char", "bpe"):
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose gpt2, char or bpe")
    f = None if val_fraction is None else exact_val_fraction(val_fraction)
    chars: set = set()
    texts: List[str] = []
    taken = 0
    with tqdm(total=source.num_documents, unit="doc", desc=f"learning {kind} from {source.name}",
              disable=not progress) as bar:
        for i, (_, text, _) in enumerate(source.documents()):
            bar.update(1)
            if kind == "char":
                chars.update(text)
                continue
            if f is not None and is_val_document(i, f):
                continue
            texts.append(text[: max_chars - taken])
            taken += len(texts[-1])
            if taken >= max_chars:
                break
    if kind == "char":
        if not chars:
            raise DataError(f"source {source.location} has no text to build a char vocabulary from")
        return build_tokenizer("char", "".join(sorted(chars)), vocab_size)
    try:
        return BPETokenizer.train("\n".join(texts), DEFAULT_BPE_VOCAB_SIZE if vocab_size is None else vocab_size)
    except TokenizerError as e:
        raise DataError(f"cannot train bpe on {source.location}: {e}") from None


def _resolve_tokenizer(tokenizer: Union[Tokenizer, str], src: DocumentSource, val_fraction: Optional[float]) -> Tokenizer:
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    if isinstance(tokenizer, str) and tokenizer in ("gpt2", "char", "bpe"):
        return learn_tokenizer(src, tokenizer, val_fraction=val_fraction)
    if isinstance(tokenizer, (str, os.PathLike)) and os.path.isfile(tokenizer):
        try:
            return load_tokenizer(tokenizer)
        except TokenizerError as e:
            raise DataError(str(e)) from None
    raise ValueError(f"tokenizer must be a Tokenizer, gpt2, char, bpe or a tokenizer.json path, got {tokenizer!r}")


def _load_or_none(path: str) -> Optional[Tokenizer]:
    try:
        return load_tokenizer(path)
    except TokenizerError:
        return None


def _fingerprint(inputs: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def _describe_difference(old: Optional[Dict[str, Any]], new: Dict[str, Any]) -> str:
    if not old:
        return "unknown earlier inputs"
    parts = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            sub = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            parts.append(f"{key} ({', '.join(sub)})")
        else:
            parts.append(f"{key} {a!r} -> {b!r}")
    return "; ".join(parts) or "the fingerprint"


def _check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _split_spec(val_fraction: Optional[float],
                val_shards: Optional[int]) -> Tuple[Dict[str, Any], Optional[fractions.Fraction]]:
    """(the split as the manifest records it, the exact val fraction or None when split by shards)."""
    if val_fraction is not None and val_shards is not None:
        raise ValueError("pass val_fraction (split by documents) or val_shards (split by shard), not both")
    if val_shards is not None:
        return {"by": "shards", "val_shards": _check_positive("val_shards", val_shards)}, None
    frac = exact_val_fraction(DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction)
    return {"by": "documents", "val_fraction": float(frac)}, frac


def _worker_count(num_workers: Optional[int]) -> int:
    if num_workers is None:
        num_workers = os.cpu_count() or 1
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    return num_workers


def _check_documents(src: DocumentSource, frac: Optional[fractions.Fraction]) -> None:
    if src.num_documents == 0:
        raise DataError(f"source {src.location} has no documents")
    if frac and src.num_documents is not None and src.num_documents * frac < 1:
        raise DataError(f"source {src.location} has {src.num_documents} documents: too few for val_fraction="
                        f"{float(frac)} (needs >= {int(np.ceil(1 / frac))}); raise val_fraction or pass val_shards=")


def _plan(src: DocumentSource, tok: Tokenizer, out_dir: str, shard_tokens: int, split_spec: Dict[str, Any],
          frac: Optional[fractions.Fraction], eot: bool) -> StorePlan:
    """The store these inputs make: its fingerprint, streams, dtype and eot."""
    dtype = token_dtype(tok.vocab_size)
    eot_id = tok.eot_id if eot else None
    tok_info = {"kind": tok.name, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id, "sha256": tokenizer_sha256(tok)}
    inputs = {"format": FORMAT, "format_version": FORMAT_VERSION, "source": src.identity, "tokenizer": tok_info,
              "dtype": dtype.name, "shard_tokens": shard_tokens, "split": split_spec, "eot_id": eot_id}
    val_shards = split_spec.get("val_shards")
    streams = (Stream("all", val_shards),) if val_shards else (Stream("train"),) + ((Stream("val"),) if frac else ())
    return StorePlan(out_dir, _fingerprint(inputs), inputs, streams, shard_tokens, dtype, tok, eot_id, frac)


def _claim(plan: StorePlan, force: bool) -> Optional[Dict[str, Any]]:
    """The manifest of the complete store out_dir holds for these inputs, or None. A store (or the
    progress) of other inputs is refused, or deleted when force. Then records these inputs in
    progress/ and removes the temporaries a killed run left."""
    manifest = read_json_or_none(os.path.join(plan.out_dir, MANIFEST))
    previous = read_json_or_none(os.path.join(plan.progress_dir, "inputs.json"))
    held = [m for m in (manifest, previous) if m is not None]
    if any(m.get("fingerprint") != plan.fingerprint for m in held) or foreign_records(plan.progress_dir, plan.fingerprint):
        if not force:
            old = (manifest or previous or {}).get("inputs")
            raise DataError(f"{plan.out_dir} holds a sharded store of other inputs "
                            f"({_describe_difference(old, plan.inputs)}): pass force=True (--force=True) to delete "
                            "it and start over, or choose another out_dir")
        clear_store(plan.out_dir)
        manifest = None
    os.makedirs(plan.progress_dir, exist_ok=True)
    write_record(os.path.join(plan.progress_dir, "inputs.json"), {"fingerprint": plan.fingerprint, "inputs": plan.inputs})
    remove_tmp_files(plan.out_dir)
    return manifest


def _save_tokenizer(plan: StorePlan) -> None:
    tok_path = os.path.join(plan.out_dir, TOKENIZER_FILE)
    if _load_or_none(tok_path) != plan.tokenizer:
        plan.tokenizer.save(tok_path)


def _finished_or_encoded(src: DocumentSource, plan: StorePlan, verify: bool, options: EncodeOptions) -> Tuple[int, bytes]:
    """(documents, hash chain) of the whole source: from the done markers when every stream is
    finished, else by encoding what the good records do not cover."""
    records: Records = {s.name: valid_records(plan, s, verify) for s in plan.streams}
    done = {}
    for s in plan.streams:
        marker = read_json_or_none(s.done_path(plan.out_dir))
        if marker and marker.get("fingerprint") == plan.fingerprint and marker.get("shards") == len(records[s.name]):
            done[s.name] = marker
    if len(done) < len(plan.streams):
        return encode_source(src, plan, records, done, options)
    marker = next(iter(done.values()))
    return int(marker["documents"]), bytes.fromhex(marker["chain"])


def prepare_sharded(
    source: Union[str, os.PathLike, DocumentSource],
    out_dir: Union[str, os.PathLike],
    tokenizer: Union[Tokenizer, str],
    *,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    val_fraction: Optional[float] = None,
    val_shards: Optional[int] = None,
    num_workers: Optional[int] = None,
    progress: bool = True,
    force: bool = False,
    verify: bool = True,
    eot: bool = True,
    text_field: str = "text",
    split: str = "train",
    dataset_config: Optional[str] = None,
    revision: Optional[str] = None,
    data_files: Any = None,
    cache_dir: Optional[str] = None,
    batch_chars: int = _BATCH_CHARS,
    mp_context: str = "spawn",
) -> ShardedTokens:
    """Tokenizes `source` into out_dir/{train,val}_NNNNNN.bin + tokenizer.json + manifest.json
    (see jaxgpt.data.store's docstring for the layout, split, resume and fingerprint) and opens the result.

    tokenizer: a Tokenizer, or "gpt2" / "char" / "bpe" (learned from the source with defaults,
    see `learn_tokenizer`) / a tokenizer.json path. One of val_fraction (by documents; default
    DEFAULT_VAL_FRACTION) and val_shards (the first N shards are val). num_workers: encoding
    processes (default os.cpu_count(); 0 or 1 encodes in this process); the output does not depend
    on it. verify: check existing shards' sha256 before keeping them (their size is always checked).
    force: delete a store of other inputs in out_dir instead of refusing. mp_context: "spawn"
    (default: safe in a process that has started JAX threads), "forkserver" or "fork"."""
    shard_tokens = _check_positive("shard_tokens", shard_tokens)
    batch_chars = _check_positive("batch_chars", batch_chars)
    split_spec, frac = _split_spec(val_fraction, val_shards)
    options = EncodeOptions(_worker_count(num_workers), progress, batch_chars, mp_context)
    check_folder_target(os.fspath(out_dir), f"out_dir {os.fspath(out_dir)}", error=DataError)
    src = open_source(source, text_field=text_field, split=split, dataset_config=dataset_config, revision=revision,
                      data_files=data_files, cache_dir=cache_dir)
    _check_documents(src, frac)
    tok = _resolve_tokenizer(tokenizer, src, None if frac is None else float(frac))
    plan = _plan(src, tok, os.path.abspath(os.fspath(out_dir)), shard_tokens, split_spec, frac, eot)
    lock_path = os.path.join(plan.out_dir, LOCK_FILE)
    created, lock_existed = not os.path.exists(plan.out_dir), os.path.exists(lock_path)
    os.makedirs(plan.out_dir, exist_ok=True)
    busy = f"another prepare_sharded is writing to {plan.out_dir}: wait for it"
    try:
        with FileLock(lock_path, busy=busy.replace("{", "{{").replace("}", "}}"), error=DataError):
            return _write_store(src, plan, force, verify, options)
    except ValueError:  # bad input leaves nothing; a crash or an interruption leaves a store to resume
        if not lock_existed and os.path.exists(lock_path):  # after the lock's release: its file was this call's
            os.remove(lock_path)
        if created and not os.listdir(plan.out_dir):
            os.rmdir(plan.out_dir)
        raise


def _write_store(src: DocumentSource, plan: StorePlan, force: bool, verify: bool, options: EncodeOptions
                 ) -> ShardedTokens:
    """prepare_sharded's writing, under out_dir's lock. Bad input (a ValueError: DataError, a document
    that is not UTF-8...) found by a store's first preparation removes every file it made, leaving
    out_dir as it found it; a crash or an interruption leaves what it wrote, to resume, and so does
    any failure of a preparation that was already there."""
    before = set(os.listdir(plan.out_dir))
    first = MANIFEST not in before and PROGRESS_DIR not in before
    try:
        manifest = _claim(plan, force)
        if manifest is not None:
            if manifest_intact(plan, manifest, verify):
                _save_tokenizer(plan)
                shutil.rmtree(plan.progress_dir, ignore_errors=True)
                return ShardedTokens(plan.out_dir, verify=False)
            manifest_to_records(plan, manifest)  # damaged: repair from its records
        _save_tokenizer(plan)
        documents, chain = _finished_or_encoded(src, plan, verify, options)
        records = {s.name: valid_records(plan, s, False) for s in plan.streams}
        write_manifest(plan, src, records, documents, chain)
        return ShardedTokens(plan.out_dir, verify=False)
    except ValueError:
        if first:
            for name in set(os.listdir(plan.out_dir)) - before:
                path = os.path.join(plan.out_dir, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
        raise
