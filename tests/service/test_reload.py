"""Hot reload: swap in one step, refuse bad artifacts (old keeps serving), admin token, SIGHUP,
following reloads made by a sibling worker, and reloads under concurrent traffic."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.models import ModelLoadError, ModelRegistry, bump_all
from service.settings import ModelSpec, Settings
from tests.service.helpers import Server, make_artifact, random_request, ranker_loader, reference_scores


def _app(path, **kw):
    return create_app(Settings(models=(ModelSpec("dplr", path),), gc_freeze=False, **kw), loader=ranker_loader())


def _version(client, name="dplr"):
    return {m["name"]: m["version"] for m in client.get("/v1/models").json()["models"]}[name]


def _check_scores(body, versions, req):
    """The reply's scores equal the reference of the version the reply names."""
    want = reference_scores("dplr", versions[body["version"]], req)
    for a in body["ads"]:
        assert a["score"] == pytest.approx(want[a["id"]], abs=2e-6)


def test_reload_same_path_new_path_and_refusals(tmp_path):
    path = tmp_path / "m.adrk"
    p1 = make_artifact(path, "dplr", seed=1)
    req = random_request(np.random.default_rng(0), 6)
    with TestClient(_app(path)) as c:
        v1 = _version(c)
        _check_scores(c.post("/v1/rank", json=req).json(), {v1: p1}, req)
        p2 = make_artifact(path, "dplr", seed=2)  # replaced atomically at the same path
        r = c.post("/v1/models/dplr/reload")
        assert r.status_code == 200, r.text
        v2 = r.json()["version"]
        assert v2 != v1 and r.json()["previous_version"] == v1 and _version(c) == v2
        _check_scores(c.post("/v1/rank", json=req).json(), {v2: p2}, req)

        other = tmp_path / "other.adrk"
        p3 = make_artifact(other, "dplr", seed=3)
        r = c.post("/v1/models/dplr/reload", json={"path": str(other)})
        assert r.status_code == 200 and r.json()["path"] == str(other)
        v3 = r.json()["version"]
        _check_scores(c.post("/v1/rank", json=req).json(), {v3: p3}, req)

        bad = tmp_path / "bad.adrk"
        data = bytearray(other.read_bytes())
        data[-1] ^= 0xFF
        bad.write_bytes(bytes(data))
        truncated = tmp_path / "truncated.adrk"
        truncated.write_bytes(other.read_bytes()[:100])
        for p, code in ((bad, "checksum_mismatch"), (truncated, "truncated"), (tmp_path / "none", "not_found")):
            r = c.post("/v1/models/dplr/reload", json={"path": str(p)})
            assert r.status_code == 422, r.text
            assert r.json()["error"] == code and r.json()["version"] == v3
            assert _version(c) == v3
            _check_scores(c.post("/v1/rank", json=req).json(), {v3: p3}, req)

        assert c.post("/v1/models/nope/reload").status_code == 404
        r = c.post("/v1/models/dplr/reload", content=b"{bad", headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["error"] == "invalid_json"


def test_admin_token_and_disabled(tmp_path):
    path = tmp_path / "m.adrk"
    make_artifact(path, "dplr")
    with TestClient(_app(path, admin_token="s3cret")) as c:
        assert c.post("/v1/models/dplr/reload").status_code == 401
        r = c.post("/v1/models/dplr/reload", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        assert c.post("/v1/models/dplr/reload", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    with TestClient(_app(path, admin_enabled=False)) as c:
        assert c.post("/v1/models/dplr/reload").status_code == 404
        assert c.get("/readyz").status_code == 200


def test_registry_follows_sibling_worker(tmp_path):
    """Two registries sharing a run dir stand for two workers: a reload in one reaches the other;
    a refused artifact is never propagated; bump_all (SIGHUP) makes both re-read."""
    path, run = tmp_path / "m.adrk", tmp_path / "run"
    make_artifact(path, "dplr", seed=1)
    loader = ranker_loader()
    a = ModelRegistry([ModelSpec("dplr", path)], loader=loader, run_dir=run)
    b = ModelRegistry([ModelSpec("dplr", path)], loader=loader, run_dir=run)
    a.load_all()
    b.load_all()
    v1 = a.get("dplr").version
    assert b.get("dplr").version == v1 and b.sync_from_state() == []

    new = tmp_path / "new.adrk"
    make_artifact(new, "dplr", seed=2)
    v2 = a.reload("dplr", new).version
    assert b.sync_from_state() == ["dplr"] and b.get("dplr").version == v2
    assert a.sync_from_state() == []  # its own write is not reloaded again

    with pytest.raises(ModelLoadError) as err:
        a.reload("dplr", tmp_path / "missing.adrk")
    assert err.value.code == "not_found"
    assert b.sync_from_state() == [] and b.get("dplr").version == v2

    make_artifact(new, "dplr", seed=3)  # replaced in place (atomically), then SIGHUP
    bump_all(run)
    assert a.sync_from_state() == ["dplr"] and b.sync_from_state() == ["dplr"]
    assert a.get("dplr").version == b.get("dplr").version not in (v1, v2)


@pytest.mark.slow
def test_reload_under_concurrent_traffic_and_sighup(tmp_path):
    pa, pb = tmp_path / "a.adrk", tmp_path / "b.adrk"
    versions = {}
    params_a, params_b = make_artifact(pa, "dplr", seed=1), make_artifact(pb, "dplr", seed=2)
    env = {**os.environ, "ADRANK_RUN_DIR": ""}
    with Server([f"dplr={pa}"], env) as srv:
        rng = np.random.default_rng(1)
        req = random_request(rng, 50)
        failures, replies, stop = [], [], threading.Event()

        def hammer():
            with httpx.Client(base_url=srv.url, timeout=10) as h:
                while not stop.is_set():
                    r = h.post("/v1/rank", json=req)
                    if r.status_code != 200:
                        failures.append((r.status_code, r.text))
                    else:
                        replies.append(r.json())

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for i in range(6):
                target, params = (pb, params_b) if i % 2 == 0 else (pa, params_a)
                r = httpx.post(srv.url + "/v1/models/dplr/reload", json={"path": str(target)}, timeout=30)
                assert r.status_code == 200, r.text
                versions[r.json()["version"]] = params
                time.sleep(0.1)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not failures, failures[:3]
        assert len(replies) > 20 and {b["version"] for b in replies} <= set(versions)
        for body in replies[:: max(1, len(replies) // 20)]:
            _check_scores(body, versions, req)

        # SIGHUP: the served path (a.adrk after the last reload) is replaced, then re-read
        before = httpx.get(srv.url + "/v1/models").json()["models"][0]["version"]
        params_c = make_artifact(pa, "dplr", seed=4)
        os.kill(srv.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = httpx.get(srv.url + "/v1/models").json()["models"][0]["version"]
            if now != before:
                break
            time.sleep(0.1)
        assert now != before
        _check_scores(httpx.post(srv.url + "/v1/rank", json=req).json(), {now: params_c}, req)
        assert srv.proc.poll() is None  # SIGHUP reloads; it does not stop the server


def test_reload_all_without_run_dir_keeps_good_models(tmp_path):
    """SIGHUP with no shared run dir (uvicorn started directly): every model re-read in place;
    one that now fails stays on its old version while the others move on."""
    good, bad = tmp_path / "good.adrk", tmp_path / "bad.adrk"
    make_artifact(good, "dplr", seed=1)
    make_artifact(bad, "fm", seed=1)
    reg = ModelRegistry([ModelSpec("good", good), ModelSpec("bad", bad)], loader=ranker_loader())
    reg.load_all()
    v_good, v_bad = reg.get("good").version, reg.get("bad").version
    make_artifact(good, "dplr", seed=2)
    bad.write_bytes(b"garbage" * 20)
    reg.request_reload_all()
    assert reg.get("good").version != v_good and reg.get("bad").version == v_bad
