"""Calibration: fitted on held-out rows it keeps the order and lowers the logloss of a miscalibrated
model; stored in the artifact (validated), applied by every serving path exactly as the exporter's
fitted map applied to the oracle's probability (tests/naive.py)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from adrank.core.artifact import BadManifest, read_artifact
from adrank.core.calibration import Calibration
from exporter import calibrate as C
from exporter.export import export_params
from service.app import create_app
from service.ranker import Ranker
from service.settings import ModelSpec, Settings
from tests.service.helpers import (
    ADMIN,
    ADMIN_TOKEN,
    SCHEMA,
    preprocessor,
    random_params,
    random_request,
    ranker_loader,
    reference_scores,
)


def miscalibrated(n: int, seed: int):
    """Raw scores of an over-confident, biased model: the true click logit is 0.5 z - 1."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(0.5 * z - 1.0)))).astype(np.float64)
    return z, y


@pytest.mark.parametrize("method", C.METHODS)
def test_a_map_fitted_on_validation_rows_lowers_held_out_logloss_and_keeps_the_order(method):
    z, y = miscalibrated(20_000, 0)
    zt, yt = miscalibrated(20_000, 1)  # held out
    f = C.fit(method, z, y)
    p_raw = C._sigmoid(zt)
    p_cal = f.predict(p_raw)
    raw, cal = C.logloss(yt, p_raw), C.logloss(yt, p_cal)
    assert cal < raw - 0.1, (raw, cal)  # 0.78 -> 0.45 or so: the raw scores are far off
    order = np.argsort(zt)
    assert np.all(np.diff(p_cal[order]) >= 0)  # monotone: the ranking by score is unchanged
    served = Calibration.from_manifest(f.section(len(y), 0, 0))(zt)
    np.testing.assert_allclose(served, p_cal, rtol=1e-12, atol=1e-15)  # the core applies the same map
    if method == "platt":  # the likelihood's optimum: the generating a, b within sampling error
        assert f.params["a"] == pytest.approx(0.5, abs=0.03) and f.params["b"] == pytest.approx(-1.0, abs=0.05)


def test_calibrating_a_calibrated_model_changes_little():
    rng = np.random.default_rng(3)
    z = rng.normal(0, 1.5, 20_000)
    y = (rng.random(len(z)) < 1 / (1 + np.exp(-z))).astype(np.float64)
    f = C.fit_platt(z, y)
    assert f.params["a"] == pytest.approx(1.0, abs=0.06) and f.params["b"] == pytest.approx(0.0, abs=0.05)


def _export(tmp_path, section, target="binary", name="m.adrk"):
    pre = preprocessor()
    params = random_params("dplr", pre.vocab.n_features, SCHEMA.m, seed=4)
    export_params(params, {"kind": "dplr", "rank": 2}, pre, tmp_path / name, calibration=section)
    return params, tmp_path / name


@pytest.mark.parametrize("method", C.METHODS)
def test_every_serving_path_reports_the_fitted_map_of_the_oracle_probability(tmp_path, method):
    z, y = miscalibrated(5_000, 5)
    fitted = C.fit(method, z, y)
    params, path = _export(tmp_path, C.calibration_section(method, z, y))
    _, plain_path = _export(tmp_path, None, name="plain.adrk")
    assert read_artifact(path).manifest["calibration"]["method"] == method
    req = random_request(np.random.default_rng(6), 12)
    oracle = reference_scores("dplr", params, req)  # sigmoid of naive.py's raw scores
    want = dict(zip(oracle, fitted.predict(np.array(list(oracle.values()))), strict=True))

    got = dict(Ranker.load(path).rank(req["context"], req["ads"]))
    plain = Ranker.load(plain_path).rank(req["context"], req["ads"])
    assert [i for i, _ in Ranker.load(path).rank(req["context"], req["ads"])] == [i for i, _ in plain]
    for i, s in got.items():
        assert s == pytest.approx(want[i], abs=2e-6)  # float32 kernels, as in test_reload

    settings = Settings(models=(ModelSpec("m", path),), gc_freeze=False, admin_token=ADMIN_TOKEN)
    with TestClient(create_app(settings, loader=ranker_loader()), headers=ADMIN) as c:
        assert c.put("/v1/ads", json={"ads": req["ads"]}).status_code == 200
        bodies = [c.post("/v1/rank", json=req).json(),  # the fast path
                  c.post("/v1/rank", json={**req, "routing_key": "k"}).json(),  # the generic parser
                  c.post("/v1/rank", json={"context": req["context"],
                                           "ads": [{"id": a["id"]} for a in req["ads"]]}).json(),  # catalog
                  c.post("/v1/rank", json={"context": req["context"], "all_ads": True, "top_k": 5}).json()]
        for body in bodies:
            assert body["ads"]
            for ad in body["ads"]:
                assert ad["score"] == pytest.approx(want[ad["id"]], abs=2e-6)
                assert ad["ctr"] == ad["score"]
        # by value: eCPM = bid x calibrated CTR x 1000, on the scanner's path and on the catalog's kernel
        bids = {a["id"]: 0.5 + i for i, a in enumerate(req["ads"])}
        by_value = [c.post("/v1/rank", json={**req, "rank_by": "ecpm",
                                             "ads": [{**a, "bid": bids[a["id"]]} for a in req["ads"]]}).json(),
                    c.post("/v1/rank", json={**req, "rank_by": "ecpm", "reserve": 0.0,
                                             "ads": [{**a, "bid": bids[a["id"]]} for a in req["ads"]]}).json()]
        assert c.put("/v1/ads/bids", json={"bids": bids}).status_code == 200
        by_value.append(c.post("/v1/rank", json={"context": req["context"], "all_ads": True, "top_k": 5,
                                                 "rank_by": "ecpm"}).json())
        for body in by_value:
            assert body["ads"]
            for ad in body["ads"]:
                assert ad["ctr"] == pytest.approx(want[ad["id"]], abs=2e-6)
                assert ad["ecpm"] == pytest.approx(bids[ad["id"]] * want[ad["id"]] * 1000, rel=1e-5)
            ecpm = [ad["ecpm"] for ad in body["ads"]]
            assert ecpm == sorted(ecpm, reverse=True)
        info = c.get("/v1/models").json()["models"][0]["calibration"]
        assert info["method"] == method and info["rows"] == 5_000
        assert info["logloss_calibrated"] < info["logloss_raw"]


@pytest.mark.parametrize("section, message", [
    ({"method": "platt", "a": 0.0, "b": 0.0}, "a' must be > 0"),
    ({"method": "platt", "a": 1.0}, "'b' must be a finite number"),
    ({"method": "isotonic", "x": [0.2, 0.1], "y": [0.1, 0.2]}, "strictly increasing"),
    ({"method": "isotonic", "x": [0.1, 0.2], "y": [0.3, 0.2]}, "non-decreasing"),
    ({"method": "isotonic", "x": [0.1], "y": [0.3]}, ">= 2"),
    ({"method": "spline"}, "method must be one of"),
])
def test_a_bad_calibration_is_never_written(tmp_path, section, message):
    with pytest.raises(BadManifest, match=message):
        _export(tmp_path, section)
    assert not (tmp_path / "m.adrk").exists()


# --- end to end: train, prune without fine-tuning, export --calibrate, held-out logloss ----------
def _cli(*args) -> None:
    from adrank.cli import main

    assert main(list(args)) == 0


def _test_split_metrics(run, data_dir, dataset, artifact, cache) -> tuple[float, float]:
    """(logloss, AUC) of the artifact's served probabilities on the run's *test* split."""
    import json

    from adrank.core.train_config import default_split
    from training.data import prepare
    from training.metrics import auc

    cfg = json.loads((run / "config.json").read_text())
    data = prepare(dataset, data_dir, seed=cfg["split_seed"], min_count=cfg["min_count"], max_rows=cfg["max_rows"],
                   cache_dir=cache, progress=False, split=cfg.get("split") or default_split(dataset))
    X, y = data.split("test")
    p = Ranker.load(artifact).predict_encoded(np.asarray(X))
    return C.logloss(np.asarray(y), p), auc(np.asarray(y), p)


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["synthetic", pytest.param("criteo", marks=pytest.mark.data)])
def test_a_pruned_model_without_fine_tuning_is_calibrated_on_held_out_rows(tmp_path, monkeypatch, dataset):
    """The issue's case: a pruned FwFM without fine-tuning ranks well but is miscalibrated; a map
    fitted on the validation split lowers the logloss on the test split (never seen by either fit)
    and leaves the AUC as it was (Platt: a strictly increasing map)."""
    import torch

    torch.set_num_threads(1)
    monkeypatch.setenv("ADRANK_CACHE", str(tmp_path / "cache"))
    if dataset == "criteo":
        from tests.conftest import sample_path

        data = sample_path("criteo")
    else:
        data = tmp_path / "gen"
        _cli("generate", "--out", str(data), "--rows", "20000", "--vocab", "2000", "--fields", "8",
             "--context-fields", "4", "--quiet")
    common = ["--dataset", dataset, "--data", str(data), "--quiet"]
    _cli("train", *common, "--out", str(tmp_path / "fw"), "--model", "fwfm", "--epochs", "3")
    _cli("train", *common, "--out", str(tmp_path / "pr"), "--model", "pruned", "--rank", "1", "--prune-from",
         str(tmp_path / "fw"), "--no-finetune")
    raw_art, cal = tmp_path / "raw.adrk", {}
    _cli("export", str(tmp_path / "pr"), "--out", str(raw_art), "--quiet")
    for method in C.METHODS:  # --data defaults to the raw data the run recorded
        _cli("export", str(tmp_path / "pr"), "--out", str(tmp_path / f"{method}.adrk"), "--calibrate", method,
             "--quiet")
        cal[method] = _test_split_metrics(tmp_path / "pr", data, dataset, tmp_path / f"{method}.adrk",
                                          tmp_path / "cache")
    raw = _test_split_metrics(tmp_path / "pr", data, dataset, raw_art, tmp_path / "cache")
    print(f"{dataset}: test (logloss, AUC) raw {raw}, calibrated {cal}")
    assert cal["platt"][0] < raw[0] and cal["isotonic"][0] < raw[0], (raw, cal)
    assert cal["platt"][1] == pytest.approx(raw[1], abs=1e-12)
    fitted = read_artifact(tmp_path / "platt.adrk").manifest["calibration"]["fitted_on"]
    assert fitted["logloss_calibrated"] < fitted["logloss_raw"]
