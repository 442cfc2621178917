"""Training under torchrun (2 processes, DDP over gloo) reaches the quality of one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from training.generate import generate

pytestmark = pytest.mark.slow


def _train(cmd_prefix, data, cache, out) -> dict:
    cmd = [*cmd_prefix, "train", "--dataset", "synthetic", "--data", str(data), "--model", "fwfm",
           "--epochs", "8", "--min-count", "3", "--cache-dir", str(cache), "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_processes_match_one(tmp_path):
    generate(tmp_path / "gen", rows=12000, vocab=300, fields=8, context_fields=4, signal=2.5, progress=False)
    one = _train([sys.executable, "-m", "adrank.cli"], tmp_path / "gen", tmp_path / "cache", tmp_path / "one")
    two = _train(["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "adrank.cli"],
                 tmp_path / "gen", tmp_path / "cache", tmp_path / "two")
    assert one["test"]["auc"] > 0.7  # both learned the planted signal ...
    assert abs(two["test"]["logloss"] - one["test"]["logloss"]) < 0.01  # ... equally well
    assert abs(two["test"]["auc"] - one["test"]["auc"]) < 0.01
    assert not list(tmp_path.glob("two/.*tmp*"))  # rank 0 alone wrote, atomically
