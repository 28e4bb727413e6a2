"""Sample text from a trained jaxgpt run or a GPT-2 checkpoint (nanoGPT's sample.py).

    python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3
    python sample.py --init_from=gpt2 --start=FILE:prompt.txt --max_new_tokens=100
    python sample.py --init_from=/path/to/hf_gpt2_dir --temperature=0 --num_samples=1
    python sample.py --out_dir=out-sft --instruction="Reverse the word." --input=jax --temperature=0 --num_samples=1

Weights: init_from=resume (default) reads `<out_dir>/checkpoints` and `<out_dir>/tokenizer.json`;
gpt2, gpt2-medium, gpt2-large, gpt2-xl or a local Hugging Face GPT-2 directory (config.json +
model.safetensors) use the GPT-2 tokenizer. The prompt defaults to "\\n" for a char tokenizer and
to <|endoftext|> for tokenizers that have it.

--instruction (and optional --input) asks an instruction fine-tuned run (finetune.py's SFT task):
the prompt template saved in <out_dir>/sft.json is applied, and each response stops at the run's
end-of-response token (jaxgpt.finetune.instruct).

All samples are generated as one batch by one compiled loop (jaxgpt.sample.decode). The first sample
is printed as its tokens arrive (turn off with --stream=False); the others are printed when the
batch is done. Timing goes to stderr: time to the first token (compilation and prefill included)
and the decode speed in tokens/s over all samples. --temperature=0 is greedy decoding.

sample.py is a thin script over this module's main (like train.py over jaxgpt.train.loop).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import jax
import numpy as np

from jaxgpt.cli import CLIError, Option, main_guard, parse_args
from jaxgpt.data.tokenizers import build_tokenizer
from jaxgpt.finetune.instruct import read_sft_config, respond
from jaxgpt.model.pretrained import HUB_NAMES as PRETRAINED_NAMES, load_pretrained
from jaxgpt.sample.decode import generate_stream
from jaxgpt.train.run_dir import TOKENIZER_FILE, RunDir, note_if_being_written, what_the_run_is

SEPARATOR = "-" * 40

OPTIONS: Dict[str, Option] = {
    "init_from": Option("resume", "resume (the run in out_dir) | gpt2 | gpt2-medium | gpt2-large | gpt2-xl "
                                  "| a Hugging Face GPT-2 directory"),
    "out_dir": Option("out", "run directory for init_from=resume"),
    "which": Option("latest", "checkpoint to resume from", choices=("latest", "best")),
    "start": Option(None, 'prompt text, or FILE:path to read it (default "\\n", or <|endoftext|> for '
                          "tokenizers that have it)", type=str),
    "num_samples": Option(10, "samples, generated as one batch"),
    "max_new_tokens": Option(500, "tokens generated per sample"),
    "temperature": Option(0.8, "1.0 = no change, < 1 = less random, 0 = greedy"),
    "top_k": Option(200, "keep only the top_k most likely tokens (None = no top-k filter)", type=int,
                    optional=True),
    "top_p": Option(1.0, "nucleus sampling: keep the smallest set of tokens with probability >= top_p "
                         "(1.0 = off)"),
    "window_stride": Option(1, "past block_size: re-read the last block_size - window_stride + 1 tokens once "
                               "every window_stride tokens (1 = nanoGPT's exact window, a full forward "
                               "per token; larger is faster with a shorter context)"),
    "seed": Option(1337, "random seed"),
    "compute_dtype": Option("float32", "activations and matmuls", choices=("float32", "bfloat16")),
    "stop_at_eot": Option(False, "end a sample at the tokenizer's end-of-text token, if it has one"),
    "stream": Option(True, "print the first sample while it is generated"),
    "instruction": Option(None, "ask an instruction fine-tuned run (out_dir with sft.json): the instruction text",
                          type=str),
    "input": Option(None, "with --instruction: the optional input the instruction applies to", type=str),
}


def _check_options(opts: Dict[str, Any]) -> None:
    if opts["num_samples"] < 1:
        raise CLIError(f"--num_samples must be >= 1, got {opts['num_samples']}")
    if opts["max_new_tokens"] < 1:
        raise CLIError(f"--max_new_tokens must be >= 1, got {opts['max_new_tokens']}")
    if not opts["temperature"] >= 0 or opts["temperature"] == float("inf"):
        raise CLIError(f"--temperature must be a finite number >= 0, got {opts['temperature']}")
    top_k = opts["top_k"]
    if top_k is not None and top_k < 1:
        raise CLIError(f"--top_k must be an integer >= 1 or None, got {top_k!r}")
    if not 0.0 < opts["top_p"] <= 1.0:
        raise CLIError(f"--top_p must be in (0, 1], got {opts['top_p']}")
    if opts["window_stride"] < 1:
        raise CLIError(f"--window_stride must be >= 1, got {opts['window_stride']}")
    if opts["instruction"] is None:
        if opts["input"] is not None:
            raise CLIError("--input goes with --instruction (the instruction it is the input of)")
        return
    if not opts["instruction"].strip():
        raise CLIError("--instruction is empty: give the instruction text")
    if opts["start"] is not None:
        raise CLIError("--start and --instruction exclude each other (the instruction's prompt is the template)")
    if opts["init_from"] != "resume":
        raise CLIError("--instruction asks an instruction fine-tuned run: use --init_from=resume with its --out_dir")


def _read_start(start: Optional[str]) -> Optional[str]:
    if start is None or not start.startswith("FILE:"):
        return start
    path = start[len("FILE:"):]
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise CLIError(f"cannot read prompt file {path!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise CLIError(f"prompt file {path!r} is not UTF-8 text: {exc.reason}") from None


def _load(opts: Dict[str, Any]):
    """(GPTConfig, params, tokenizer) for --init_from."""
    source = opts["init_from"]
    if source == "resume":
        from jaxgpt.train.checkpoint import load_inference_params  # orbax takes ~1 s to import; keeps --help fast

        out_dir = opts["out_dir"]
        if not os.path.isdir(out_dir):
            raise CLIError(f"no run directory at {out_dir!r} (train one with train.py, or pass --out_dir)")
        run_dir = RunDir(out_dir)
        if not os.path.isfile(run_dir.tokenizer_path):
            raise CLIError(f"{out_dir!r} has no {TOKENIZER_FILE}: is it a train.py run directory?")
        config, params = load_inference_params(out_dir, opts["which"])  # a classifier: says what to use
        note_if_being_written(out_dir)
        if getattr(config, "model", "gpt") == "gpt":  # a --model=bigram run's table has neither
            config = config.replace(compute_dtype=opts["compute_dtype"], dropout=0.0)
        tokenizer = run_dir.read_tokenizer()
    else:
        if source not in PRETRAINED_NAMES and not os.path.isdir(source):
            raise CLIError(f"--init_from must be resume, one of {list(PRETRAINED_NAMES)} or a Hugging Face "
                           f"GPT-2 directory; {source!r} is none of these")
        config, params = load_pretrained(source, compute_dtype=opts["compute_dtype"], dropout=0.0)
        tokenizer = build_tokenizer("gpt2")
    if tokenizer.vocab_size > config.vocab_size:
        raise CLIError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only {config.vocab_size}")
    return config, params, tokenizer


def _check_instruction_run(out_dir: str) -> None:
    """--instruction asks an SFT run: any other kind of run is refused, saying what it is and what uses it."""
    if not os.path.isdir(out_dir):
        raise CLIError(f"no run directory at {out_dir!r} (fine-tune one with finetune.py --task=sft, or pass --out_dir)")
    task = RunDir(out_dir).task()
    if task in ("classify", "lm"):
        raise CLIError(what_the_run_is(out_dir, task))


def _encode_prompt(tokenizer, start: Optional[str]) -> List[int]:
    if start is None:  # nanoGPT's defaults
        return [tokenizer.eot_id] if tokenizer.eot_id is not None else tokenizer.encode("\n")
    if start == "":
        raise CLIError("--start is empty: give some prompt text (or leave --start out for the default)")
    ids = tokenizer.encode(start, allow_special=True)  # char tokenizer: ValueError naming unseen chars
    if not ids:
        raise CLIError(f"--start={start!r} encodes to no tokens")
    return ids


class _TextStream:
    """Prints a growing token list as text, holding back a partial UTF-8 character."""

    def __init__(self, decode):
        self.decode, self.ids, self.shown = decode, [], ""

    def add(self, ids: Sequence[int]) -> None:
        self.ids.extend(ids)
        text = self.decode(self.ids)
        if text.endswith("\ufffd") or not text.startswith(self.shown):
            return  # wait for the rest of a multi-byte character
        print(text[len(self.shown):], end="", flush=True)
        self.shown = text

    def finish(self) -> None:
        text = self.decode(self.ids)
        tail = text[len(self.shown):] if text.startswith(self.shown) else "\n" + text
        print(tail, flush=True)


def main(argv: Sequence[str]) -> None:
    opts = parse_args(OPTIONS, argv, prog="sample.py", summary=__doc__.strip().split("\n\n")[0])
    _check_options(opts)
    start = _read_start(opts["start"])
    if opts["instruction"] is not None:
        _check_instruction_run(opts["out_dir"])
        template, eos_id = read_sft_config(opts["out_dir"])[:2]  # before loading: a plain run fails fast
        config, params, tokenizer = _load(opts)
        _ask(opts, config, params, tokenizer, template, eos_id)
        return
    config, params, tokenizer = _load(opts)
    if opts["init_from"] == "resume" and RunDir(opts["out_dir"]).task() == "sft":
        print(f"note: {opts['out_dir']} is an instruction fine-tuning run: --instruction=TEXT (and --input=...) asks "
              "it in its prompt template and stops at its end marker", file=sys.stderr)
    prompt = _encode_prompt(tokenizer, start)
    eos_id = tokenizer.eot_id if opts["stop_at_eot"] else None
    B, N = opts["num_samples"], opts["max_new_tokens"]
    if opts["window_stride"] > config.block_size:
        raise CLIError(f"--window_stride must be <= the model's block_size {config.block_size}, "
                       f"got {opts['window_stride']}")

    def decode(ids) -> str:
        # A model vocabulary padded past the tokenizer's (e.g. 50304) may emit ids it cannot decode.
        return tokenizer.decode([int(i) for i in ids if 0 <= int(i) < tokenizer.vocab_size and i != eos_id])

    t0 = time.perf_counter()
    steps = generate_stream(config, params, [prompt] * B, N, rng=jax.random.key(opts["seed"]),
                            temperature=opts["temperature"], top_k=opts["top_k"],
                            top_p=opts["top_p"] if opts["top_p"] < 1.0 else None, eos_id=eos_id,
                            window_stride=opts["window_stride"])
    stream = _TextStream(decode) if opts["stream"] else None
    if stream is not None:
        print(start or "", end="", flush=True)
    columns, t_first = [], None
    for step_B in steps:
        if t_first is None:
            t_first = time.perf_counter() - t0
        columns.append(np.asarray(step_B))
        if stream is not None:
            stream.add([int(step_B[0])])
    elapsed = time.perf_counter() - t0
    new_BN = np.stack(columns, axis=1)

    for i in range(B):
        if i == 0 and stream is not None:
            stream.finish()
        else:
            print((start or "") + decode(new_BN[i]))
        print(SEPARATOR, flush=True)
    decode_s = max(elapsed - t_first, 1e-9)
    n_after_first = B * (new_BN.shape[1] - 1)
    print(f"{B} x {new_BN.shape[1]} tokens in {elapsed:.2f} s: first token after {t_first:.2f} s "
          f"(compilation and prefill), then {n_after_first / decode_s:.1f} tokens/s", file=sys.stderr)


def _ask(opts: Dict[str, Any], config, params, tokenizer, template, eos_id: int) -> None:
    """Print num_samples responses to --instruction/--input, each ended at eos."""
    B = opts["num_samples"]
    responses = respond(config, params, tokenizer, template, eos_id, [(opts["instruction"], opts["input"] or "")] * B,
                        opts["max_new_tokens"], batch_size=B, temperature=opts["temperature"],
                        top_k=opts["top_k"], rng=jax.random.key(opts["seed"]))
    for text in responses:
        print(text)
        print(SEPARATOR, flush=True)


if __name__ == "__main__":
    main_guard(main)
