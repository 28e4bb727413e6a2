"""The suite's fixtures and session setup; what the test files share besides fixtures is in helpers.py."""

import os
import pathlib
import tempfile

import pytest

# Before jax is imported anywhere: a persistent compilation cache shared by this process and the
# subprocesses the tests start, so identical tiny models compile once per session, not per test.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jaxgpt_xla_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Cheaper CPU code generation for this process and the subprocesses, notebook kernels and workers
# it starts: XLA's compile time, not run time, dominates the suite's tiny models (a tiny train step
# compiled in about a third of the time). Only LLVM's optimization effort changes, not the HLO:
# every test still runs the same programs, and a comparison between two runs sees the same flags.
_CHEAP_CODEGEN = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_CHEAP_CODEGEN}".strip()

# After the environment above: these import jax (through jaxgpt).
from helpers import TINY, shared_build  # noqa: E402
from jaxgpt.data.corpus import resolve_corpus  # noqa: E402
from jaxgpt.train.loop import config_from_argv, train  # noqa: E402

# The suite needs nothing outside the repository: text comes from the embedded stdlib corpus
# (the running interpreter's own source files), from generators in the tests, or from tmp_path.
CORPUS_CHARS = 300_000


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    # Prepared data and downloads go to a temporary cache, never the user's ~/.cache.
    os.environ["JAXGPT_CACHE_DIR"] = str(tmp_path_factory.mktemp("jaxgpt_cache"))
    yield


@pytest.fixture(scope="session")
def corpus_text() -> str:
    """300k characters of the embedded stdlib corpus: real, learnable text every install has."""
    return resolve_corpus("stdlib").text[:CORPUS_CHARS]


@pytest.fixture(scope="session")
def corpus_path(corpus_text, tmp_path_factory) -> str:
    """corpus_text as a .txt file, for the CLIs' --dataset=PATH."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(corpus_text, encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, corpus_text) -> pathlib.Path:
    """A finished train.py run shared by the whole session (read it, or copy it to change it):
    <dir>/corpus.txt and <dir>/run, helpers.TINY settings, 20 iterations, checkpoints at 10
    and 20, no samples."""

    def build(path):
        corpus = path / "corpus.txt"
        corpus.write_text(corpus_text, encoding="utf-8")
        train(config_from_argv([f"--out_dir={path / 'run'}", f"--dataset={corpus}", *TINY, "--num_samples=0",
                                "--max_iters=20"]))

    return shared_build(tmp_path_factory, "tiny_run", build)


# The few longest tests first, so that under `-n 2` neither worker is left running one of them
# alone at the end (pytest-xdist hands out tests in collection order). Order only: every test runs.
_LONGEST_FIRST = ("tests/test_train_sharded.py", "tests/test_sweep.py", "tests/test_sharding.py",
                  "tests/test_notebooks.py", "tests/test_bench.py", "tests/test_finetune_cli.py")


def pytest_collection_modifyitems(session, config, items):
    def rank(item):
        path = item.nodeid.split("::", 1)[0]
        return _LONGEST_FIRST.index(path) if path in _LONGEST_FIRST else len(_LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file is kept
