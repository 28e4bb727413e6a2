import os
import pathlib

import pytest

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
