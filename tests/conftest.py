import os
import pathlib
import tempfile

import pytest

# Before jax is imported anywhere: a persistent compilation cache shared by this process and the
# subprocesses the tests start, so identical tiny models compile once per session, not per test.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jaxgpt_xla_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

REPO = pathlib.Path(__file__).resolve().parents[1]

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
    from jaxgpt.data import resolve_corpus

    return resolve_corpus("stdlib").text[:CORPUS_CHARS]


@pytest.fixture(scope="session")
def corpus_path(corpus_text, tmp_path_factory) -> str:
    """corpus_text as a .txt file, for the CLIs' --dataset=PATH."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(corpus_text, encoding="utf-8")
    return str(path)
