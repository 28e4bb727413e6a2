"""The sharded store's command line, run as `python -m jaxgpt.data.store`:

    python -m jaxgpt.data.store --source=corpus/ --out_dir=out/shards --tokenizer=gpt2

learns or loads the tokenizer, runs `prepare_sharded` and prints one summary line.
"""

from __future__ import annotations

import os
import time
from typing import Dict, Sequence

from jaxgpt.cli import CLIError, Option, parse_args
from jaxgpt.data.sources import open_source
from jaxgpt.data.store import DEFAULT_SHARD_TOKENS, DEFAULT_VAL_FRACTION
from jaxgpt.data.store_prepare import DEFAULT_BPE_TRAIN_CHARS, learn_tokenizer, prepare_sharded
from jaxgpt.data.tokenizers import DEFAULT_BPE_VOCAB_SIZE, load_tokenizer
from jaxgpt.files import check_folder_target


def _cli_options() -> Dict[str, Option]:
    return {
        "source": Option("", "a folder of .txt files (recursive, one document each), a folder saved by "
                             "Dataset.save_to_disk, a .jsonl/.parquet/.csv file, or a Hugging Face dataset name "
                             "(hf:NAME skips the local lookup)"),
        "out_dir": Option("", "where the shards, tokenizer.json and manifest.json go"),
        "tokenizer": Option("gpt2", "gpt2 | char (vocabulary of the whole source) | bpe (trained on the first "
                                    "bpe_train_chars characters of the train documents) | a tokenizer.json path"),
        "bpe_vocab_size": Option(DEFAULT_BPE_VOCAB_SIZE, "bpe vocabulary size (eot included)"),
        "bpe_train_chars": Option(DEFAULT_BPE_TRAIN_CHARS, "characters of the source bpe is trained on"),
        "shard_tokens": Option(DEFAULT_SHARD_TOKENS, "tokens per shard file (a split's last shard is shorter)"),
        "val_fraction": Option(None, f"split by documents: every (1/f)-th document is val (default "
                                     f"{DEFAULT_VAL_FRACTION}; 0 = no val)", type=float),
        "val_shards": Option(None, "split by shard instead: the first N shards are val", type=int),
        "text_field": Option("text", "dataset column holding the text"),
        "split": Option("train", "dataset split to read"),
        "dataset_config": Option(None, "dataset configuration name (load_dataset's name=)", type=str),
        "revision": Option(None, "dataset revision (pin it for a reproducible store)", type=str),
        "data_files": Option(None, "data_files for a datasets builder such as json or parquet", type=str),
        "cache_dir": Option(None, "datasets cache directory", type=str),
        "num_workers": Option(None, "encoding processes (default: all CPU cores; 0 or 1: this process)", type=int),
        "force": Option(False, "delete a store of other inputs in out_dir instead of refusing"),
        "verify": Option(True, "check existing shards' sha256 before keeping them"),
        "progress": Option(True, "progress bar on stderr"),
    }


def main(argv: Sequence[str]) -> None:
    """python -m jaxgpt.data.store --source=... --out_dir=... [--tokenizer=gpt2|char|bpe|FILE] ..."""
    options = _cli_options()
    opts = parse_args(options, argv, prog="-m jaxgpt.data.store",
                      summary="Tokenize a large corpus into sharded token files (resumable; see jaxgpt/data/store.py).")
    for key in ("source", "out_dir"):
        if not opts[key]:
            raise CLIError(f"--{key} is required (see --help)")
    if opts["val_fraction"] is not None and opts["val_shards"] is not None:
        raise CLIError("pass --val_fraction or --val_shards, not both")
    # the numbers prepare_sharded checks, here before the tokenizer's pass over the source (minutes for bpe)
    for key, low in (("shard_tokens", 1), ("bpe_train_chars", 1), ("val_shards", 1), ("num_workers", 0)):
        if opts[key] is not None and opts[key] < low:
            raise CLIError(f"--{key} must be >= {low}, got {opts[key]}")
    if opts["val_fraction"] is not None and not 0 <= opts["val_fraction"] < 1:
        raise CLIError(f"--val_fraction must be in [0, 1), got {opts['val_fraction']}")
    check_folder_target(opts["out_dir"], f"--out_dir={opts['out_dir']}", error=CLIError)  # before a long tokenizer pass
    src = open_source(opts["source"], text_field=opts["text_field"], split=opts["split"],
                      dataset_config=opts["dataset_config"], revision=opts["revision"], data_files=opts["data_files"],
                      cache_dir=opts["cache_dir"])
    kind = opts["tokenizer"]
    if kind in ("gpt2", "char", "bpe"):
        val_fraction = None if opts["val_shards"] is not None else (
            DEFAULT_VAL_FRACTION if opts["val_fraction"] is None else opts["val_fraction"])
        tokenizer = learn_tokenizer(src, kind, vocab_size=opts["bpe_vocab_size"] if kind == "bpe" else None,
                                    max_chars=opts["bpe_train_chars"], val_fraction=val_fraction,
                                    progress=opts["progress"])
    elif os.path.isfile(kind):
        tokenizer = load_tokenizer(kind)
    else:
        raise CLIError(f"--tokenizer must be gpt2, char, bpe or a tokenizer.json file, got {kind!r}")
    t0 = time.perf_counter()
    data = prepare_sharded(src, opts["out_dir"], tokenizer, shard_tokens=opts["shard_tokens"],
                           val_fraction=opts["val_fraction"], val_shards=opts["val_shards"],
                           num_workers=opts["num_workers"], progress=opts["progress"], force=opts["force"],
                           verify=opts["verify"])
    seconds = time.perf_counter() - t0
    total = len(data.train) + len(data.val)
    print(f"{data.out_dir}: {data.train.num_shards} train shards ({len(data.train):,} tokens), {data.val.num_shards} val "
          f"shards ({len(data.val):,} tokens), {data.meta['documents']:,} documents, {tokenizer.name} vocabulary "
          f"{tokenizer.vocab_size}, {seconds:.1f} s ({total / max(seconds, 1e-9):,.0f} tokens/s); "
          f"fingerprint {data.meta['fingerprint'][:16]}")
