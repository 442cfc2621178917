"""Shared fixtures: where the real samples live (skip cleanly when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ADRANK_SHARED_DATA", REPO.parent / "shared" / "data"))

SAMPLES = {
    "criteo": SHARED_DATA / "criteo" / "criteo_dac_train_head.txt.gz",
    "avazu": SHARED_DATA / "avazu" / "avazu_train_head.csv.gz",
    "movielens": SHARED_DATA / "movielens" / "ml-1m",
}


def sample_path(name: str) -> Path:
    """Path of a real sample, or skip the test with a clear message when it is absent."""
    p = SAMPLES[name]
    if not p.exists():
        pytest.skip(f"real {name} sample not found at {p} (set ADRANK_SHARED_DATA)")
    return p


@pytest.fixture
def criteo_path() -> Path:
    return sample_path("criteo")


@pytest.fixture
def avazu_path() -> Path:
    return sample_path("avazu")


@pytest.fixture
def movielens_path() -> Path:
    return sample_path("movielens")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: torch's thread pool only spins on the shared 2-core machine (10-40x slower).
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
