"""Versions and traffic with real processes: a split set through one uvicorn worker reaches the
other, and a kept version, the split and the shadow survive kill -9 of the whole server."""

from __future__ import annotations

import os
import time

import httpx
import numpy as np
import pytest

from tests.service.helpers import ADMIN, Server, make_artifact, random_request, reference_scores


def _by_worker(url: str, want_workers: int, timeout: float = 30) -> dict[int, dict]:
    """GET /v1/models/dplr/traffic answered by each worker (fresh connections spread over them)."""
    seen: dict[int, dict] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < want_workers and time.monotonic() < deadline:
        with httpx.Client(base_url=url) as h:
            pid = h.get("/v1/models").json()["worker"]
            seen[pid] = h.get("/v1/models/dplr/traffic", headers=ADMIN).json()
    return seen


@pytest.mark.slow
def test_a_split_reaches_every_worker_and_survives_kill9(tmp_path):
    a, b = tmp_path / "a.adrk", tmp_path / "b.adrk"
    make_artifact(a, "dplr", seed=1)
    pb = make_artifact(b, "dplr", seed=2)
    env = {**os.environ, "ADRANK_LOG_POLL": "0.05"}
    state = tmp_path / "state"
    req = random_request(np.random.default_rng(0), 4)
    args = [f"dplr={a}", "--model-dir", str(tmp_path), "--workers", "2", "--run-dir", str(tmp_path / "run")]
    srv = Server(args, env, state_dir=state)
    try:
        r = httpx.post(srv.url + "/v1/models/dplr/reload", json={"path": str(b), "keep": True}, timeout=60,
                       headers=ADMIN)
        assert r.status_code == 200, r.text
        v1, v2 = r.json()["current_version"], r.json()["version"]
        split = {"weights": {v1: 1.0, v2: 1.0}, "shadow": v2, "shadow_fraction": 0.5}
        r = httpx.put(srv.url + "/v1/models/dplr/traffic", json=split, timeout=30, headers=ADMIN)
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 30
        while True:  # the other worker applies the log entries within its poll interval
            seen = _by_worker(srv.url, 2)
            if len(seen) == 2 and all(t["traffic"] == split for t in seen.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(seen) == 2, "both workers should have answered"
        assert all(t["traffic"] == split and [v["version"] for v in t["versions"]] == [v1, v2]
                   for t in seen.values()), seen
        keyed = {}
        for i in range(40):  # fresh connections: both workers route each key alike
            with httpx.Client(base_url=srv.url) as h:
                body = h.post("/v1/rank", json={**req, "routing_key": f"k{i % 8}"}).json()
                assert keyed.setdefault(i % 8, body["version"]) == body["version"]
    finally:
        srv.kill()  # kill -9 of the supervisor and its workers
        srv.stop()
    with Server(args, env, state_dir=state) as again:
        t = httpx.get(again.url + "/v1/models/dplr/traffic", headers=ADMIN).json()
        assert t["traffic"] == split and [v["version"] for v in t["versions"]] == [v1, v2]
        for i, v in keyed.items():
            assert httpx.post(again.url + "/v1/rank", json={**req, "routing_key": f"k{i}"}).json()["version"] == v
        body = httpx.post(again.url + "/v1/rank", json={**req, "version": v2}).json()
        want = reference_scores("dplr", pb, req)
        assert body["version"] == v2 and all(ad["score"] == pytest.approx(want[ad["id"]], abs=2e-6)
                                             for ad in body["ads"])
