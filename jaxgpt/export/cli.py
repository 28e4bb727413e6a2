"""`jaxgpt export --out_dir=RUN --to=DIR` (also `python -m jaxgpt.export`): a trained or fine-tuned run
as a Hugging Face model directory that transformers loads with `from_pretrained` (and vLLM/TGI serve).

    jaxgpt export --out_dir=out-shakespeare-char --to=hf-shakespeare
    jaxgpt export --out_dir=out-finetune --to=hf-spam --which=best

What the run is decides what is written (jaxgpt.export.hf): a language model (train.py, finetune.py
--task=sft) as GPT2LMHeadModel or LlamaForCausalLM by its architecture switches; a classifier
(finetune.py --task=classify, --pooling=last) as GPT2ForSequenceClassification with its labels, its
LoRA adapters merged. The directory holds config.json, model.safetensors (float32), tokenizer.json and
tokenizer_config.json (jaxgpt.export.tokenizer), jaxgpt_tokenizer.json (jaxgpt's own description,
jaxgpt.data.tokenizers.load_tokenizer reads it) and jaxgpt_export.json (where it came from).

The checkpoint is picked as sample.py picks it (--which=latest | best). Everything is read and
converted before anything is written, and the directory is written beside --to and renamed into
place (jaxgpt.files.atomic_directory): a refused or killed export leaves --to as it was.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Dict, Optional, Sequence

from safetensors.numpy import save as safetensors_bytes

from jaxgpt.cli import CLIError, Option, main_guard, parse_args
from jaxgpt.data.tokenizers import Tokenizer
from jaxgpt.export import hf
from jaxgpt.export.tokenizer import hf_tokenizer_files, sft_chat_template
from jaxgpt.files import atomic_directory
from jaxgpt.finetune.classify import load_classifier
from jaxgpt.finetune.instruct import read_sft_config
from jaxgpt.model import lora
from jaxgpt.model.config import GPTConfig
from jaxgpt.model.families import DEFAULT_FAMILY
from jaxgpt.train.run_dir import TOKENIZER_FILE, RunDir, check_out_dir

__all__ = ["OPTIONS", "main", "export_run", "ExportedRun", "CONFIG_JSON", "WEIGHTS_FILE", "JAXGPT_TOKENIZER_FILE",
           "PROVENANCE_FILE"]

CONFIG_JSON = "config.json"
WEIGHTS_FILE = "model.safetensors"
JAXGPT_TOKENIZER_FILE = "jaxgpt_tokenizer.json"
PROVENANCE_FILE = "jaxgpt_export.json"
# A classifier's --long_text as a Hugging Face tokenizer's truncation side (head_tail and chunks have none: the
# exported model reads a long text's head; its texts within the block are read exactly as the run reads them).
_TRUNCATION_SIDE = {"head": "right", "tail": "left", "head_tail": "right", "chunks": "right"}

OPTIONS: Dict[str, Option] = {
    "out_dir": Option("out", "the run directory to export (train.py's or finetune.py's --out_dir)"),
    "to": Option(None, "the Hugging Face model directory to write (new, or an empty folder)", type=str),
    "which": Option("latest", "checkpoint to export (best: lowest val loss)", choices=("latest", "best")),
    "overwrite": Option(False, "replace a --to that is not empty"),
}


@dataclasses.dataclass(frozen=True)
class ExportedRun:
    """What an export writes: {file name: bytes or text}, and a one-line description."""
    files: Dict[str, Any]
    description: str


def _check_destination(out_dir: str, to: Optional[str], overwrite: bool) -> str:
    """--to as an absolute path, or CLIError: missing, a file, the run itself, not empty."""
    if not to:
        raise CLIError("--to is required: the directory to write the Hugging Face model into")
    check_out_dir(to, key="to")
    path, run = os.path.realpath(to), os.path.realpath(out_dir)
    if run == path or run.startswith(path.rstrip(os.sep) + os.sep):
        raise CLIError(f"--to={to} holds the run directory --out_dir={out_dir}: choose another --to")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise CLIError(f"--to={to} exists and is not empty: pass --overwrite=True to replace it, or choose "
                       "another --to")
    return path


def _check_run(out_dir: str) -> Dict[str, Any]:
    """The run's options (run_config.json; {} for a run that has only checkpoints and its tokenizer)."""
    run_dir = RunDir(out_dir)
    if not os.path.isdir(out_dir):
        raise CLIError(f"no run directory at --out_dir={out_dir!r}")
    if not os.path.isfile(run_dir.tokenizer_path) or not run_dir.checkpoint_steps():
        raise CLIError(f"--out_dir={out_dir!r} has no {TOKENIZER_FILE} or no checkpoint: is it a train.py or "
                       "finetune.py run directory?")
    options = run_dir.read_run_config() if os.path.isfile(run_dir.run_config_path) else {}
    model = options.get("model", DEFAULT_FAMILY)
    if model != DEFAULT_FAMILY:
        raise CLIError(f"--model={model} runs cannot be exported: only GPTs have a Hugging Face form")
    return options


def _check_vocabulary(tokenizer: Tokenizer, config: GPTConfig) -> None:
    if tokenizer.vocab_size > config.vocab_size:
        raise CLIError(f"the run's tokenizer has {tokenizer.vocab_size} ids but its model only {config.vocab_size}")


def _files(checkpoint: hf.HFCheckpoint, tokenizer: Tokenizer, tokenizer_files: Dict[str, str],
           provenance: Dict[str, Any]) -> Dict[str, Any]:
    return {CONFIG_JSON: json.dumps(checkpoint.config, indent=2, ensure_ascii=False),
            WEIGHTS_FILE: safetensors_bytes(checkpoint.state, metadata={"format": "pt"}),
            **tokenizer_files,
            JAXGPT_TOKENIZER_FILE: json.dumps(tokenizer.to_dict(), ensure_ascii=False),
            PROVENANCE_FILE: json.dumps(provenance, indent=2, ensure_ascii=False)}


def _language_model(out_dir: str, which: str, options: Dict[str, Any]) -> ExportedRun:
    from jaxgpt.train.checkpoint import best_checkpoint_step, load_inference_params  # orbax: ~1 s; keeps --help fast

    run_dir = RunDir(out_dir)
    tokenizer = run_dir.read_tokenizer()
    config, params = load_inference_params(out_dir, which)
    _check_vocabulary(tokenizer, config)
    step = best_checkpoint_step(out_dir) if which == "best" else run_dir.latest_step()
    eos_id, chat_template = tokenizer.eot_id, None
    if options.get("task") == "sft":  # responses end at the run's end-of-response token
        template, eos_id = read_sft_config(out_dir)[:2]
        chat_template = sft_chat_template(template)
    checkpoint = hf.language_model(params, config, bos_id=tokenizer.eot_id, eos_id=eos_id)
    kind = checkpoint.config["architectures"][0]
    tokenizer_files = hf_tokenizer_files(tokenizer, model_max_length=config.block_size, eos_id=eos_id,
                                         chat_template=chat_template)
    provenance = {"run": os.path.abspath(out_dir), "step": step, "which": which, "kind": kind}
    return ExportedRun(_files(checkpoint, tokenizer, tokenizer_files, provenance),
                       f"{kind} from step {step} of {out_dir}")


def _classifier(out_dir: str, which: str) -> ExportedRun:
    saved = load_classifier(out_dir, which)
    pooling = saved.options.get("pooling")
    if pooling != "last":
        raise CLIError(f"--pooling={pooling} cannot be exported: Hugging Face's sequence classifiers pool the "
                       "last token (finetune.py --pooling=last)")
    config, tokenizer = saved.model_config, saved.tokenizer
    _check_vocabulary(tokenizer, config)
    params = saved.params
    backbone = params["backbone"]
    if "lora" in params:
        backbone = lora.merge(backbone, params["lora"], saved.lora_scale)
    # a padding id no text holds: <|endoftext|> (texts are encoded without it), else the first id past the tokenizer
    pad_id = tokenizer.eot_id if tokenizer.eot_id is not None else tokenizer.vocab_size
    checkpoint = hf.classifier(backbone, params["head"], config, saved.labels, pad_id)
    long_text = saved.options.get("long_text", "head")
    tokenizer_files = hf_tokenizer_files(tokenizer, model_max_length=config.block_size, pad_id=pad_id,
                                         truncation_side=_TRUNCATION_SIDE[long_text])
    kind = checkpoint.config["architectures"][0]
    provenance = {"run": os.path.abspath(out_dir), "step": saved.step, "which": which, "kind": kind,
                  "labels": saved.labels, "long_text": long_text, "lora_merged": "lora" in params}
    reads = "" if long_text in ("head", "tail") else (f"; a text longer than {config.block_size} tokens is read by its "
                                                       f"head, not by --long_text={long_text} as the run read it")
    return ExportedRun(_files(checkpoint, tokenizer, tokenizer_files, provenance),
                       f"{kind} ({len(saved.labels)} labels {saved.labels}) from step {saved.step} of {out_dir}{reads}")


def export_run(out_dir: str, which: str = "latest") -> ExportedRun:
    """The files of a run's Hugging Face form, in memory (nothing is written): a classifier for a
    finetune.py --task=classify run, a language model otherwise."""
    options = _check_run(out_dir)
    if options.get("task") == "classify":
        return _classifier(out_dir, which)
    return _language_model(out_dir, which, options)


def write_export(exported: ExportedRun, to: str) -> None:
    """The files into a new folder beside `to`, renamed over `to` once complete."""
    with atomic_directory(to) as tmp:
        for name, content in exported.files.items():
            path = pathlib.Path(tmp, name)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")


def main(argv: Sequence[str]) -> None:
    opts = parse_args(OPTIONS, argv, prog="-m jaxgpt.export", summary=__doc__.strip().split("\n\n")[0])
    to = _check_destination(opts["out_dir"], opts["to"], opts["overwrite"])
    exported = export_run(opts["out_dir"], opts["which"])
    write_export(exported, to)
    print(f"exported {exported.description} -> {to}")


if __name__ == "__main__":
    main_guard(main)
