"""`jaxgpt export`: each kind of run written as a Hugging Face directory, loaded back with transformers,
and compared with jaxgpt (logits, greedy tokens, tokenization); and every refusal (one line, exit 2,
--to as it was). Run directories are built with the library from random tiny weights (2 layers, width 32),
each once per module."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import safetensors.numpy
import torch
import transformers  # slow to import: once, here

from jaxgpt.data.tokenizers import CharTokenizer, build_tokenizer, load_tokenizer
from jaxgpt.export.cli import JAXGPT_TOKENIZER_FILE, PROVENANCE_FILE, export_run, main
from jaxgpt.export.tokenizer import PAD_TOKEN, hf_tokenizer_files, sft_chat_template
from jaxgpt.files import atomic_directory
from jaxgpt.finetune.classify import classifier_init, classifier_logits, encode_texts
from jaxgpt.finetune.config import FinetuneConfig
from jaxgpt.finetune.instruct import END_CHAR, TEMPLATES
from jaxgpt.model.config import GPTConfig
from jaxgpt.model.gpt import GPT
from jaxgpt.sample.decode import generate
from jaxgpt.train.checkpoint import Checkpointer
from jaxgpt.train.run_dir import RunDir
from jaxgpt.train.step import create_train_state
from helpers import REPO, digest, one_line_exit_2, run_main

SHAKESPEARE = (REPO / "jaxgpt" / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20_000]
CHAR = CharTokenizer.from_text(SHAKESPEARE)
TINY = dict(block_size=32, n_layer=2, n_head=2, n_embd=32)
LLAMA = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu")
# Both sides compute in float32 (eps 1.2e-7) with different summation orders over widths 32-128 and two
# blocks, on logits of size ~5: the rounding differences measured are ~2e-5; 1e-4 leaves room.
LOGITS_ATOL = 1e-4
LABELS = ["ham", "spam", "eggs"]
# ordinary Shakespeare lines and a character it lacks ('#': jaxgpt and Hugging Face both read it as '?')
TEXTS = ["First Citizen:", "Speak, speak.", "You are all resolved #rather", "No"]


def random_params(init, seed: int):
    """The params `init` would make (shapes only: nothing is compiled), drawn at random: N(0, 0.3^2) for
    every weight and bias, 1 + N(0, 0.3^2) for norm scales. Logits with clear winners (GPT-2's init
    is nearly uniform, so greedy decoding would hinge on rounding); LoRA's b is not zero."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        base = 1.0 if getattr(path[-1], "key", None) == "scale" else 0.0
        return jnp.asarray(base + 0.3 * rng.standard_normal(leaf.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, jax.eval_shape(init))


def gpt_params(config: GPTConfig, seed: int):
    return random_params(lambda: GPT(config).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"], seed)


def save_checkpoints(out, config: GPTConfig, params_by_step, val_loss_by_step=None):
    """What train.py and finetune.py leave for export to read: orbax steps and the tokenizer."""
    val_loss_by_step = val_loss_by_step or {}
    with Checkpointer(RunDir(str(out)).checkpoint_dir) as ckpt:
        for step, params in params_by_step.items():
            ckpt.save(step, create_train_state(params, optax.adamw(1e-3)),
                      {"model_config": config.to_dict(), "iter_num": step}, val_loss=val_loss_by_step.get(step))
    CHAR.save(RunDir(str(out)).tokenizer_path)


def export(capsys, run, to, *args):
    return run_main(capsys, main, f"--out_dir={run}", f"--to={to}", *args, prog="jaxgpt export")


def hf_logits(model, ids, **kwargs) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(ids)), **kwargs).logits.numpy()


# ------------------------------------------------------------------------------ language models

@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    """A GPT-2 style char run with two checkpoints: step 5 (val loss 1.0, the best) and step 10 (latest)."""
    out = tmp_path_factory.mktemp("char") / "run"
    config = GPTConfig(vocab_size=CHAR.vocab_size, **TINY)
    params = {5: gpt_params(config, 1), 10: gpt_params(config, 2)}
    save_checkpoints(out, config, params, {5: 1.0, 10: 2.0})
    return out, config, params


@pytest.fixture(scope="module")
def char_export(char_run, tmp_path_factory):
    out, _, _ = char_run
    to = tmp_path_factory.mktemp("char_hf") / "hf"
    main([f"--out_dir={out}", f"--to={to}"])
    return to


def check_language_model(to, config, params, architecture):
    """Loaded by transformers' Auto classes: the same logits as jaxgpt, and the same greedy tokens."""
    model = transformers.AutoModelForCausalLM.from_pretrained(to).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(to)
    assert type(model).__name__ == architecture
    ids = [CHAR.encode(SHAKESPEARE[:config.block_size])]
    forward = jax.jit(GPT(config).apply)  # one compile, not one per op
    expected = np.asarray(forward({"params": params}, jnp.asarray(ids)))
    np.testing.assert_allclose(hf_logits(model, ids), expected, rtol=0, atol=LOGITS_ATOL)
    prompt = tokenizer("ROMEO:", return_tensors="pt")
    assert prompt["input_ids"][0].tolist() == CHAR.encode("ROMEO:")
    with torch.no_grad():
        hf_tokens = model.generate(**prompt, max_new_tokens=24, do_sample=False)[0].tolist()
    tokens = np.asarray(generate(config, params, [CHAR.encode("ROMEO:")], 24, temperature=0))[0].tolist()
    assert hf_tokens == tokens
    assert tokenizer.decode(hf_tokens) == CHAR.decode(tokens)
    return model, tokenizer


def test_char_run_exports_as_gpt2_with_its_logits_greedy_tokens_and_tokenizer(char_run, char_export):
    _, config, params = char_run
    model, tokenizer = check_language_model(char_export, config, params[10], "GPT2LMHeadModel")  # latest
    assert model.config.bos_token_id is None and model.config.eos_token_id is None  # a char vocabulary has none
    sample = SHAKESPEARE[:2000]
    assert tokenizer(sample)["input_ids"] == CHAR.encode(sample)
    assert tokenizer.decode(CHAR.encode(sample)) == sample
    assert load_tokenizer(char_export / JAXGPT_TOKENIZER_FILE) == CHAR  # jaxgpt's own description beside it
    provenance = json.loads((char_export / PROVENANCE_FILE).read_text())
    assert provenance["step"] == 10 and provenance["kind"] == "GPT2LMHeadModel"
    assert sorted(os.listdir(char_export)) == ["config.json", "jaxgpt_export.json", "jaxgpt_tokenizer.json",
                                               "model.safetensors", "tokenizer.json", "tokenizer_config.json"]


def test_which_best_exports_the_best_checkpoint(capsys, char_run, tmp_path):
    out, _, params = char_run
    code, stdout, err = export(capsys, out, tmp_path / "best", "--which=best")
    assert code == 0, err
    assert "from step 5" in stdout
    state = safetensors.numpy.load_file(str(tmp_path / "best" / "model.safetensors"))
    np.testing.assert_array_equal(state["transformer.wte.weight"], np.asarray(params[5]["wte"]["embedding"]))
    assert json.loads((tmp_path / "best" / PROVENANCE_FILE).read_text())["step"] == 5


def test_llama_style_run_exports_as_llama(capsys, tmp_path):
    # RoPE with its own base, an untied head and muP (folded into the weights on export)
    config = GPTConfig(vocab_size=CHAR.vocab_size, bias=False, tie_embeddings=False, rope_theta=500.0, mup=True,
                       mup_base_width=16, **LLAMA, **TINY)
    params = gpt_params(config, 3)
    save_checkpoints(tmp_path / "run", config, {4: params})
    code, _, err = export(capsys, tmp_path / "run", tmp_path / "hf")
    assert code == 0, err
    model, _ = check_language_model(tmp_path / "hf", config, params, "LlamaForCausalLM")
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_config["rope_theta"] == 500.0 and not model.config.tie_word_embeddings


@pytest.mark.parametrize("kind", ["gpt2", "bpe"])
def test_byte_level_tokenizers_encode_as_jaxgpt(tmp_path, kind):
    tokenizer = build_tokenizer(kind, text=SHAKESPEARE if kind == "bpe" else None,
                                vocab_size=400 if kind == "bpe" else None)
    for name, text in hf_tokenizer_files(tokenizer, model_max_length=64).items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in (SHAKESPEARE[:3000], "  Héllo,\tworld!\n\n\n  it's 12345 日本語 🙂   ", " lead", "trail  \r\n"):
        ids = tokenizer.encode(text)
        assert hf(text)["input_ids"] == ids, text[:40]
        assert hf.decode(ids) == text
    assert hf.eos_token == hf.bos_token == "<|endoftext|>" and hf.eos_token_id == tokenizer.eot_id


def test_an_sft_run_gets_its_template_as_chat_template_and_its_end_of_response_as_eos(tmp_path):
    tokenizer = CharTokenizer(CHAR.chars + END_CHAR)
    files = hf_tokenizer_files(tokenizer, model_max_length=64, eos_id=tokenizer.vocab_size - 1,
                               chat_template=sft_chat_template(TEMPLATES["alpaca"]))
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf.eos_token == END_CHAR and hf.eos_token_id == tokenizer.vocab_size - 1
    instruction = "Reverse the word.\n  {input} jax  "  # newlines, spaces and braces pass through
    prompt = hf.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False,
                                    add_generation_prompt=True)
    assert prompt == TEMPLATES["alpaca"].prompt(instruction)
    turn = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ho"}]
    assert hf.apply_chat_template(turn, tokenize=False) == TEMPLATES["alpaca"].prompt("Hi") + "Ho" + END_CHAR


# ------------------------------------------------------------------------------ classifiers

def build_classifier_run(out, trainable: str, pooling: str = "last"):
    """A finetune.py classification run's files: its options, labels, tokenizer and checkpoint."""
    cfg = FinetuneConfig(out_dir=str(out), task="classify", init_from="scratch", trainable=trainable, lora_rank=4,
                         lora_alpha=8.0, pooling=pooling, **TINY)
    config = cfg.gpt_config(CHAR.vocab_size)
    params = random_params(lambda: classifier_init(config, len(LABELS), trainable, 4, jax.random.key(0)), 6)
    save_checkpoints(out, config, {8: params})
    RunDir(str(out)).write_run_config(cfg.run_options())
    RunDir(str(out)).write_data_meta({"labels": LABELS})
    return config, params


@pytest.fixture(scope="module", params=["all", "lora"])
def classifier(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(f"classifier_{request.param}")
    config, params = build_classifier_run(base / "run", request.param)
    main([f"--out_dir={base / 'run'}", f"--to={base / 'hf'}"])
    return request.param, base, config, params


def test_classifier_exports_as_gpt2_sequence_classification(classifier):
    trainable, base, config, params = classifier
    model = transformers.AutoModelForSequenceClassification.from_pretrained(base / "hf").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(base / "hf")
    assert type(model).__name__ == "GPT2ForSequenceClassification"
    assert model.config.id2label == dict(enumerate(LABELS))
    assert model.config.label2id == {label: i for i, label in enumerate(LABELS)}
    # a char vocabulary has no <|endoftext|>: padding gets its own id, past the characters
    assert tokenizer.pad_token == PAD_TOKEN and model.config.pad_token_id == CHAR.vocab_size
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    encoded = encode_texts(CHAR, TEXTS, config.block_size)
    T = batch["input_ids"].shape[1]
    np.testing.assert_array_equal(batch["input_ids"].numpy()[batch["attention_mask"].numpy() == 1],
                                  encoded.tokens_NT[:, :T][np.arange(T)[None] < encoded.lengths_N[:, None]])
    mask = np.arange(config.block_size)[None] < encoded.lengths_N[:, None]
    scale = 8.0 / 4

    @jax.jit  # one compile, not one per op
    def jaxgpt_logits(p):
        return classifier_logits(GPT(config), p, encoded.tokens_NT, mask, "last", scale)

    expected = np.asarray(jaxgpt_logits(params))
    np.testing.assert_allclose(hf_logits(model, batch["input_ids"], attention_mask=batch["attention_mask"]),
                               expected, rtol=0, atol=LOGITS_ATOL)
    if trainable == "lora":  # the adapters matter: without them the logits are another model's
        without = np.asarray(jaxgpt_logits({k: v for k, v in params.items() if k != "lora"}))
        assert np.abs(without - expected).max() > 100 * LOGITS_ATOL
        assert json.loads((base / "hf" / PROVENANCE_FILE).read_text())["lora_merged"] is True


# ------------------------------------------------------------------------------ refusals

def refused(capsys, run, to, expected, *args):
    """One line, exit 2, and --to's folder byte for byte as it was (nothing beside it either)."""
    parent = to.parent
    before = digest(parent) if parent.exists() else None
    line = one_line_exit_2(export(capsys, run, to, *args), expected)
    assert (digest(parent) if parent.exists() else None) == before
    return line


def test_what_cannot_be_exported_is_refused_in_one_line(capsys, tmp_path):
    config = GPTConfig(vocab_size=CHAR.vocab_size, pos_emb="rope", **TINY)  # layernorm, gelu: neither GPT-2 nor Llama
    save_checkpoints(tmp_path / "neox", config, {1: gpt_params(config, 7)})
    line = refused(capsys, tmp_path / "neox", tmp_path / "out" / "hf", "--norm=layernorm cannot be exported as Llama")
    assert "GPT-2 needs pos_emb=learned" in line
    config = GPTConfig(vocab_size=CHAR.vocab_size, mlp="relu2", **TINY)  # squared ReLU: no HF GPT-2 activation
    save_checkpoints(tmp_path / "relu2", config, {1: gpt_params(config, 7)})
    refused(capsys, tmp_path / "relu2", tmp_path / "out" / "hf", "--mlp=relu2 cannot be exported as GPT-2")
    config = GPTConfig(vocab_size=CHAR.vocab_size, logit_softcap=30.0, **TINY)
    save_checkpoints(tmp_path / "softcap", config, {1: gpt_params(config, 7)})
    refused(capsys, tmp_path / "softcap", tmp_path / "out" / "hf", "--logit_softcap=30.0 cannot be exported")
    build_classifier_run(tmp_path / "mean", "all", pooling="mean")
    refused(capsys, tmp_path / "mean", tmp_path / "out" / "hf", "--pooling=mean cannot be exported")


def test_bad_destinations_and_runs_are_refused_before_anything_is_written(capsys, tmp_path, char_run):
    out = char_run[0]
    (tmp_path / "file").write_text("x")
    refused(capsys, out, tmp_path / "file", "is a file, not a directory")
    refused(capsys, out, tmp_path / "file" / "hf", "is a file, not a directory")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    refused(capsys, out, tmp_path / "full", "exists and is not empty: pass --overwrite=True")
    refused(capsys, out, out, "holds the run directory", "--overwrite=True")
    refused(capsys, out, out.parent, "holds the run directory", "--overwrite=True")
    refused(capsys, tmp_path / "nowhere", tmp_path / "hf", "no run directory at --out_dir")
    refused(capsys, tmp_path / "full", tmp_path / "hf", "has no tokenizer.json or no checkpoint")
    refused(capsys, out, tmp_path / "hf", "--to is required", "--to=")


def test_overwrite_replaces_a_folder_whole(capsys, tmp_path, char_run):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "old.txt").write_text("old")
    code, _, err = export(capsys, char_run[0], tmp_path / "hf", "--overwrite=True")
    assert code == 0, err
    assert "old.txt" not in os.listdir(tmp_path / "hf") and (tmp_path / "hf" / "model.safetensors").is_file()
    assert os.listdir(tmp_path) == ["hf"]  # no temporary folder left beside it
    (tmp_path / "empty").mkdir()  # an empty folder needs no --overwrite
    code, _, err = export(capsys, char_run[0], tmp_path / "empty")
    assert code == 0, err


def test_python_m_jaxgpt_export(char_run, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-m", "jaxgpt.export", f"--out_dir={char_run[0]}",
                             f"--to={tmp_path / 'hf'}", "--which=best"],
                            capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr
    assert "exported GPT2LMHeadModel from step 5" in result.stdout
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "gpt2"


def test_a_write_that_fails_leaves_to_as_it_was(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "old.txt").write_text("old")
    with pytest.raises(OSError):
        with atomic_directory(str(tmp_path / "hf")) as tmp:
            (pathlib.Path(tmp) / "config.json").write_text("{}")
            raise OSError("disk full")
    assert os.listdir(tmp_path) == ["hf"] and os.listdir(tmp_path / "hf") == ["old.txt"]


def test_a_chunks_classifier_exports_and_says_long_texts_are_read_by_their_head(classifier):
    _, base, config, _ = classifier  # finetune.py's default --long_text, chunks: a Hugging Face model has no windows
    exported = export_run(str(base / "run"), "latest")
    assert json.loads(exported.files[PROVENANCE_FILE])["long_text"] == "chunks"
    assert f"a text longer than {config.block_size} tokens is read by its head" in exported.description
