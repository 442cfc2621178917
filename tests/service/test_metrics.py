"""Prometheus metrics: names, buckets, bounded labels; with 2 uvicorn workers the exposition
aggregates both and a reload (HTTP or SIGHUP to the supervisor) reaches both workers."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service import metrics
from service.app import create_app
from service.settings import ModelSpec, Settings
from tests.service.helpers import ADMIN, ADMIN_TOKEN, Server, make_artifact, ranker_loader

AD = {"id": "a", "features": {"C14": "c14-1"}}


def samples(text: str) -> list:
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def value(text: str, name: str, **labels) -> float:
    return sum(s.value for s in samples(text) if s.name == name
               and all(s.labels.get(k) == v for k, v in labels.items()))


def test_buckets_cover_a_tenth_of_a_millisecond_to_a_second():
    assert metrics.LATENCY_BUCKETS[0] == 0.0001 and metrics.LATENCY_BUCKETS[-1] == 1.0
    assert list(metrics.LATENCY_BUCKETS) == sorted(metrics.LATENCY_BUCKETS)
    assert metrics.REQUEST_DURATION._upper_bounds[0] == 0.0001


def test_counts_and_bounded_labels(tmp_path):
    path = tmp_path / "m.adrk"
    make_artifact(path, "dplr")
    app = create_app(Settings(models=(ModelSpec("dplr", path),), gc_freeze=False, admin_token=ADMIN_TOKEN,
                                model_dir=tmp_path), loader=ranker_loader())
    with TestClient(app, headers=ADMIN) as c:
        before = c.get("/metrics").text
        for _ in range(3):
            assert c.post("/v1/rank", json={"ads": [AD, {**AD, "id": "b"}]}).status_code == 200
        assert c.post("/v1/rank", json={"model": "user-typed-name-xyz", "ads": [AD]}).status_code == 404
        assert c.post("/v1/rank", content=b"{oops").status_code == 422
        after = c.get("/metrics").text
    d = lambda name, **kw: value(after, name, **kw) - value(before, name, **kw)  # noqa: E731
    assert d("adrank_requests_total", endpoint="/v1/rank", model="dplr", code="200") == 3
    # refused before the model is known: under the model the body names if served, else "unknown";
    # a body naming none is for the default model
    assert d("adrank_requests_total", endpoint="/v1/rank", model="unknown", code="404") == 1
    assert d("adrank_requests_total", endpoint="/v1/rank", model="dplr", code="422") == 1
    assert d("adrank_request_duration_seconds_count", endpoint="/v1/rank", model="dplr") == 4  # the 422 too
    assert d("adrank_model_inference_duration_seconds_count", model="dplr") == 3
    assert d("adrank_request_candidates_sum", model="dplr") == 6
    assert "user-typed-name-xyz" not in after  # never a label from request content
    version = app.state.svc.state.snapshot.model("dplr").version
    assert value(after, "adrank_model_info", model="dplr", version=version) == 1


def test_reloads_and_catalog_changes_are_counted(tmp_path):
    path, other = tmp_path / "m.adrk", tmp_path / "other.adrk"
    make_artifact(path, "dplr", seed=1)
    make_artifact(other, "dplr", seed=2)
    app = create_app(Settings(models=(ModelSpec("dplr", path),), gc_freeze=False, admin_token=ADMIN_TOKEN,
                                model_dir=tmp_path), loader=ranker_loader())
    with TestClient(app, headers=ADMIN) as c:
        before = c.get("/metrics").text
        assert c.put("/v1/ads", json={"ads": [AD, {**AD, "id": "b"}]}).status_code == 200
        assert c.put("/v1/ads", json={"ads": [{"id": "x", "features": {"nope": 1}}]}).status_code == 422
        assert c.post("/v1/models/dplr/reload", json={"path": str(other)}).status_code == 200
        assert c.post("/v1/models/dplr/reload", json={"path": str(tmp_path / "none")}).status_code == 422
        after = c.get("/metrics").text
        v2 = app.state.svc.state.snapshot.model("dplr").version
    d = lambda name, **kw: value(after, name, **kw) - value(before, name, **kw)  # noqa: E731
    assert d("adrank_model_loads_total", model="dplr", result="ok") == 1
    assert d("adrank_model_loads_total", model="dplr", result="refused") == 1
    assert d("adrank_model_load_duration_seconds_count", model="dplr") == 1
    assert d("adrank_catalog_updates_total", op="upsert", result="ok") == 1
    assert d("adrank_catalog_updates_total", op="upsert", result="refused") == 1
    assert d("adrank_catalog_updates_total", op="reload", result="ok") == 1
    assert value(after, "adrank_catalog_ads", model="dplr", version=v2) == 2  # catalog size per version
    assert value(after, "adrank_snapshot_published_timestamp_seconds") > time.time() - 60  # the snapshot's age
    assert value(after, "adrank_log_position") >= 3  # start-up intent, upsert, reload


def _info_by_pid(url: str, model: str) -> dict[str, dict[str, float]]:
    out: dict = {}
    for s in samples(httpx.get(url + "/metrics").text):
        if s.name == "adrank_model_info" and s.labels["model"] == model:
            out.setdefault(s.labels["pid"], {})[s.labels["version"]] = s.value
    return out


def _wait_all_workers_on(url: str, model: str, version: str, workers: int, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = _info_by_pid(url, model)
        served = {pid for pid, vs in info.items() if vs.get(version) == 1
                  and all(v == 0 for ver, v in vs.items() if ver != version)}
        if len(served) == workers or time.monotonic() > deadline:
            return info
        time.sleep(0.2)


@pytest.mark.slow
def test_two_workers_aggregate_and_reload_reaches_both(tmp_path):
    path, other = tmp_path / "m.adrk", tmp_path / "other.adrk"
    make_artifact(path, "dplr", seed=1)
    make_artifact(other, "dplr", seed=2)
    env = {**os.environ, "ADRANK_LOG_POLL": "0.05"}
    with Server([f"dplr={path}", "--workers", "2", "--run-dir", str(tmp_path / "run")], env) as srv:
        pids = set()
        for _ in range(60):  # fresh connections spread over the workers
            with httpx.Client(base_url=srv.url, headers=ADMIN) as h:
                assert h.post("/v1/rank", json={"ads": [AD]}).status_code == 200
                pids.add(h.get("/v1/models").json()["worker"])
        assert len(pids) == 2, "both workers should have accepted connections"
        text = httpx.get(srv.url + "/metrics").text
        assert value(text, "adrank_requests_total", endpoint="/v1/rank", model="dplr", code="200") == 60
        assert value(text, "adrank_request_duration_seconds_count", endpoint="/v1/rank", model="dplr") == 60
        assert value(text, "adrank_request_candidates_count", model="dplr") == 60

        r = httpx.post(srv.url + "/v1/models/dplr/reload", json={"path": str(other)}, timeout=30, headers=ADMIN)
        assert r.status_code == 200, r.text
        v2 = r.json()["version"]
        info = _wait_all_workers_on(srv.url, "dplr", v2, 2)
        assert {str(p) for p in pids} <= set(info) and all(vs[v2] == 1 for vs in info.values()), info

        make_artifact(other, "dplr", seed=3)  # replace the served file, then SIGHUP the supervisor
        os.kill(srv.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            versions = {m["version"] for m in [httpx.get(srv.url + "/v1/models").json()["models"][0]]}
            if v2 not in versions:
                break
            time.sleep(0.2)
        v3 = versions.pop()
        assert v3 != v2
        info = _wait_all_workers_on(srv.url, "dplr", v3, 2)
        assert sum(vs.get(v3) == 1 for vs in info.values()) == 2, info
        assert srv.proc.poll() is None
