import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import launch  # noqa: E402

# Tests never read or write the user's settings, presets, calibration profiles or tokenised
# data cache; launched processes inherit this.
os.environ["LLMPLAN_CONFIG_DIR"] = tempfile.mkdtemp(prefix="llmplan-test-config-")
os.environ["LLMPLAN_CACHE_DIR"] = tempfile.mkdtemp(prefix="llmplan-test-cache-")
# The oracles are transformers' own PyTorch code: never a kernel swapped in from a hub (none
# can be fetched here, and a hub kernel is not the reference the planner is checked against).
os.environ["USE_HUB_KERNELS"] = "NO"
os.environ["HF_HUB_OFFLINE"] = "1"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: skipped (with the reason) on a machine without one."""
    marked = [item for item in items if "gpu" in item.keywords]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (bench/gpu.sh runs it on a lent GPU)")
    for item in marked:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def run_tiny():
    """Memoised `llmplan launch` runs keyed by their arguments (shared references)."""
    cache: dict = {}

    def run(*args: str):
        if args not in cache:
            cache[args] = launch(*args)[0]
        return cache[args]
    return run
