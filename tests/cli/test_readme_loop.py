"""The README's ML-engineer loop, run verbatim: train (with --test-out), export, evaluate on the
held-out rows, inspect, serve.

The commands are read from the README itself, so the README cannot drift from what runs.  They
run in a scratch directory whose ``../shared/data/criteo/criteo_dac_train_head.txt.gz`` is the
real Criteo sample when present, else a generated file in Criteo's format (label, I1-I13,
C1-C26).  The one change: ``adrank serve`` gets a free ``--port`` (a fixed port collides with
other test runs on the machine).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import SAMPLES
from tests.service.helpers import Server
from tests.training.test_splits import criteo_like

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def readme_loop() -> list[list[str]]:
    """The commands of the README's ML-engineer loop block (continuation lines joined)."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"A typical ML-engineer loop.*?```bash\n(.*?)```", text, re.S).group(1)
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_readme_ml_loop_runs_verbatim(tmp_path, monkeypatch):
    data = tmp_path / "shared" / "data" / "criteo" / "criteo_dac_train_head.txt.gz"
    data.parent.mkdir(parents=True)
    if SAMPLES["criteo"].exists():
        os.symlink(SAMPLES["criteo"], data)
    else:
        criteo_like(data)
    work = tmp_path / "repo"
    work.mkdir()
    monkeypatch.chdir(work)
    env = {**os.environ, "ADRANK_CACHE": str(tmp_path / "cache")}
    commands = readme_loop()
    assert [c[:2] for c in commands] == [["adrank", "train"], ["adrank", "train"], ["adrank", "export"],
                                         ["adrank", "export"], ["adrank", "evaluate"], ["adrank", "inspect"],
                                         ["adrank", "serve"]]
    outputs = []
    for argv in commands[:-1]:
        r = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{shlex.join(argv)} failed:\n{r.stderr[-3000:]}"
        outputs.append(r.stdout)
    # the held-out file is exactly the run's test split: evaluating the exported artifact on it
    # through the serving kernels reproduces the run's own test metrics
    held_out = work / "held-out.txt.gz"
    lines = gzip.open(held_out, "rt").read().splitlines()
    source = gzip.open(data, "rt").read().splitlines()
    assert lines == source[int(len(source) * 0.9):]  # the last 10% of the file, in order
    run_metrics = json.loads((work / "runs" / "criteo-dplr2" / "metrics.json").read_text())
    evaluated = json.loads(outputs[4])
    assert evaluated["rows"] == len(lines)
    assert evaluated["auc"] == pytest.approx(run_metrics["test"]["auc"], abs=1e-4)
    assert evaluated["logloss"] == pytest.approx(run_metrics["test"]["logloss"], abs=1e-5)
    assert "kind       dplr" in outputs[5] and "importance" in outputs[5]
    with Server(commands[-1][2:], env) as srv:
        cols = lines[0].split("\t")
        ctx = {f"I{i}": int(v) if v else None for i, v in enumerate(cols[1:14], 1)}
        ctx.update({f"C{i}": v or None for i, v in enumerate(cols[14:27], 1)})
        ads = [{"id": f"ad{i}", "features": {f"C{j}": v or None for j, v in enumerate(ln.split("\t")[27:], 14)}}
               for i, ln in enumerate(lines[1:6])]
        with httpx.Client(base_url=srv.url, timeout=10) as h:
            for model in ("dplr", "pruned"):
                body = h.post("/v1/rank", json={"model": model, "context": ctx, "ads": ads}).json()
                assert body["model"] == model and len(body["ads"]) == 5, body
