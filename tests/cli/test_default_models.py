"""The embedded default models (adrank/cli/defaults): what `adrank serve` with no artifact serves.

Fast: the shipped files verify, stay small, record the command and parameters that built them,
and the serving kernels score them like an evaluator of the artifact's semantics written
independently of the kernels; `adrank serve` with no artifact serves them.
Slow: `adrank default-models` rebuilds them. Where the build environment (torch build, CPU
capability) is the one recorded in default.json, the rebuild is the same bytes; elsewhere
training may differ in the last bits, so the rebuild must have the same vocabularies and
structure and weights close to the shipped ones. The rebuilt models score like tests/naive.py on
their torch parameters, and the shipped ones like the rebuilt ones.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import numpy as np
import pytest

from adrank.cli.default_model import COMMAND, MODELS, PARAMS, SHIPPED, shipped
from adrank.core.artifact import read_artifact
from adrank.core.preprocess import PAD
from service.link import sigmoid
from service.ranker import Ranker
from tests import naive
from tests.exporter.test_export import artifact_score
from tests.service.helpers import ADRANK, Server

REPO = Path(__file__).resolve().parents[2]

INFO = json.loads((SHIPPED / "default.json").read_text())


def random_rows(art, n_rows: int, seed: int) -> np.ndarray:
    """Encoded rows over each field's whole id range (missing and rare ids included), multi-valued
    fields with 1..max values."""
    rng = np.random.default_rng(seed)
    schema, ids = art.schema, art.arrays["vocab_id_offsets"]
    offs = schema.slot_offsets
    X = np.full((n_rows, schema.n_slots), PAD, dtype=np.int32)
    for r in range(n_rows):
        for f, fld in enumerate(schema.fields):
            lo, hi = int(ids[f]), int(ids[f + 1])
            cnt = rng.integers(1, min(fld.max_values, hi - lo) + 1)
            X[r, offs[f] : offs[f] + cnt] = rng.choice(np.arange(lo, hi), size=cnt, replace=False)
    return X


def data_rows(data_dir, n: int) -> list[dict]:
    """The first ``n`` raw rows of an `adrank generate` data set as {field: raw value}."""
    with gzip.open(data_dir / "data.tsv.gz", "rt") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        rows = [dict(zip(header, fh.readline().rstrip("\n").split("\t"), strict=True)) for _ in range(n)]
    schema = json.loads((data_dir / "schema.json").read_text())
    multi = {f["name"] for f in schema["fields"] if f["type"] == "multi"}
    return [{k: ([x for x in v.split("|") if x] if k in multi else (v or None)) for k, v in r.items()
             if k != schema.get("label", "label")} for r in rows]


# --- the shipped files ----------------------------------------------------------------------
def test_shipped_models_verify_are_small_and_record_how_they_were_built():
    info = shipped()
    assert list(info["models"]) == [name for name, _, _ in MODELS]
    assert INFO["command"] == COMMAND and INFO["params"] == PARAMS
    for name, kind, rho in MODELS:
        art = read_artifact(info["models"][name])  # the checksum is verified
        assert art.nbytes < 1_000_000, "the repository carries no large binaries"
        assert art.version == INFO["models"][name]["version"]
        assert (art.kind, art.manifest["rank"]) == (kind, rho)
        assert art.manifest["source"] == {"built_by": COMMAND, "params": PARAMS, "model": name,
                                          "test": INFO["models"][name]["test"]}
        assert INFO["models"][name]["test"]["auc"] > 0.6  # learned something from the planted model


@pytest.mark.parametrize("name", [name for name, _, _ in MODELS])
def test_shipped_models_score_like_the_artifact_semantics(name):
    path = SHIPPED / f"{name}.adrk"
    art, ranker = read_artifact(path), Ranker.load(path, name=name)
    X = random_rows(art, 40, seed=1)
    want = np.array([artifact_score(art, x) for x in X])
    np.testing.assert_allclose(ranker.predict_encoded(X), sigmoid(want), rtol=1e-5, atol=1e-6)
    example = INFO["example"]
    got = dict(ranker.rank(example["context"], example["ads"]))
    rows = ranker.preprocessor.encode_rows([{**example["context"], **ad["features"]} for ad in example["ads"]])
    for ad, x in zip(example["ads"], rows, strict=True):
        assert got[ad["id"]] == pytest.approx(float(sigmoid(np.array([artifact_score(art, x)]))[0]), abs=1e-6)


def test_scripts_run_installs_the_serving_extra_only():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def closure(extra: str) -> set[str]:
        out = set()
        for req in extras[extra]:
            name = re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0].lower()
            out |= closure(req[req.index("[") + 1 : req.index("]")]) if name == "adrank" else {name}
        return out

    assert "torch" not in closure("serve") and "torch" in closure("train")
    installs = [line for line in (REPO / "scripts/run").read_text().splitlines() if "pip install" in line]
    assert installs and all('-e ".[serve]"' in line and "-c constraints.txt" in line for line in installs)


# `adrank` with torch, training and the exporter unimportable, as in the serving install
WITHOUT_TORCH = [sys.executable, "-c", """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "training", "exporter"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
sys.meta_path.insert(0, Block())
from adrank.cli import main
sys.exit(main())
"""]


def test_serve_without_an_artifact_serves_the_shipped_models_without_torch(tmp_path):
    env = {**os.environ}
    env.pop("ADRANK_MODELS", None)
    with Server([], env, command=WITHOUT_TORCH) as srv:
        models = httpx.get(srv.url + "/v1/models").json()
        assert models["default"] == "dplr"
        assert {m["name"]: m["version"] for m in models["models"]} == {
            name: INFO["models"][name]["version"] for name, _, _ in MODELS}
        for name, _, _ in MODELS:
            body = httpx.post(srv.url + "/v1/rank", json={**INFO["example"], "model": name}).json()
            local = Ranker.load(SHIPPED / f"{name}.adrk", name=name)
            assert [(a["id"], a["score"]) for a in body["ads"]] == local.rank(
                INFO["example"]["context"], INFO["example"]["ads"])
        log = srv.stop()
    assert "serving the embedded default models" in log and "curl -s http://127.0.0.1:" in log


# --- the rebuild ----------------------------------------------------------------------------
@pytest.mark.slow
def test_default_models_command_rebuilds_the_shipped_files(tmp_path):
    torch = pytest.importorskip("torch")
    from adrank.cli.default_model import build_environment
    from training.checkpoint import load

    out, work = tmp_path / "out", tmp_path / "work"
    r = subprocess.run([*ADRANK, "default-models", "--out", str(out), "--work", str(work)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr, "no progress-bar redraws in a log that is not a terminal"
    assert "training dplr" in r.stderr and "training pruned" in r.stderr
    rebuilt = json.loads((out / "default.json").read_text())
    assert rebuilt["example"] == INFO["example"] and rebuilt["params"] == INFO["params"]
    same_build = build_environment() == INFO["built_with"]
    rows = data_rows(work / "data", 100)
    for name, kind, rho in MODELS:
        mine, theirs = read_artifact(out / f"{name}.adrk"), read_artifact(SHIPPED / f"{name}.adrk")
        if same_build:  # the same code on the same inputs: bit for bit
            assert (out / f"{name}.adrk").read_bytes() == (SHIPPED / f"{name}.adrk").read_bytes(), name
        assert {k: v for k, v in mine.manifest.items() if k != "source"} == \
            {k: v for k, v in theirs.manifest.items() if k != "source"}
        assert set(mine.arrays) == set(theirs.arrays)
        for key, a in mine.arrays.items():
            if a.dtype.kind in "iub":  # vocabularies, pair lists: exact
                assert np.array_equal(a, theirs.arrays[key]), (name, key)
            else:  # trained weights: torch's CPU kernels may round differently elsewhere
                np.testing.assert_allclose(a, theirs.arrays[key], rtol=1e-3, atol=1e-4, err_msg=f"{name} {key}")
        # the oracle on the rebuilt model's own torch parameters
        model, _, pre = load(work / "runs" / name)
        with torch.no_grad():
            params = {k: (v.detach().numpy() if hasattr(v, "detach") else np.asarray(v))
                      for k, v in model.export_arrays().items()}
        X = pre.encode_rows(rows)
        want = sigmoid(naive.scores(kind, X, pre.schema.slot_offsets, params, rho))
        got_mine = Ranker.load(out / f"{name}.adrk").predict_encoded(X)
        got_shipped = Ranker.load(SHIPPED / f"{name}.adrk").predict_encoded(X)
        np.testing.assert_allclose(got_mine, want, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(got_shipped, got_mine, rtol=0 if same_build else 1e-3,
                                   atol=0 if same_build else 1e-3, err_msg=name)
