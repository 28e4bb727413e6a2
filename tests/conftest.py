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
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    # Prepared data and downloads go to a temporary cache, never the user's ~/.cache.
    os.environ["JAXGPT_CACHE_DIR"] = str(tmp_path_factory.mktemp("jaxgpt_cache"))
    yield


@pytest.fixture(scope="session")
def shakespeare_path() -> str:
    assert SHAKESPEARE.exists(), f"Tiny Shakespeare copy expected at {SHAKESPEARE}"
    return str(SHAKESPEARE)
