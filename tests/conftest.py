import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import launch  # noqa: E402


@pytest.fixture(scope="session")
def run_tiny():
    """Memoised `llmplan launch` runs keyed by their arguments (shared references)."""
    cache: dict = {}

    def run(*args: str):
        if args not in cache:
            cache[args] = launch(*args)[0]
        return cache[args]
    return run
