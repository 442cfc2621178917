"""Shared fixtures: where the real samples live (skip cleanly when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import benchmarks

# ADRANK_SHARED_DATA moves them (read here only; the benchmarks take --shared-data)
SHARED_DATA = Path(os.environ.get("ADRANK_SHARED_DATA") or benchmarks.SHARED_DATA)

SAMPLES = {name: SHARED_DATA / rel for name, rel in benchmarks.SAMPLES.items()}


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
