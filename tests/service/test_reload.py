"""Hot reload: publish model + catalog parts in one swap, refuse bad artifacts (the old version
keeps serving), refuse a schema change unless forced, never block on a FIFO, admin token, workers
sharing a state directory follow each other's reloads, SIGHUP, and 40 reloads under mixed traffic
where every reply's scores are those of the version it names."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import msgspec
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import ModelSpec, Settings
from service.state import ServingState, request_reload_all
from tests.service.helpers import (
    ADMIN,
    ADMIN_TOKEN,
    Server,
    make_artifact,
    random_request,
    ranker_loader,
    reference_scores,
)


def _app(path, **kw):
    kw = {"admin_token": ADMIN_TOKEN, "model_dir": path.parent, **kw}
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
    with TestClient(_app(path), headers=ADMIN) as c:
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
        fifo = tmp_path / "pipe.adrk"
        os.mkfifo(fifo)  # opened without blocking and refused: reloads never wedge on one
        head = c.get("/v1/state").json()["head"]
        for p, code in ((bad, "checksum_mismatch"), (truncated, "truncated"), (tmp_path / "none", "not_found"),
                        (fifo, "not_a_regular_file"), (tmp_path, "not_a_regular_file")):
            r = c.post("/v1/models/dplr/reload", json={"path": str(p)})
            assert r.status_code == 422, r.text
            assert r.json()["error"] == code and r.json()["version"] == v3
            assert _version(c) == v3
            _check_scores(c.post("/v1/rank", json=req).json(), {v3: p3}, req)
        assert c.get("/v1/state").json()["head"] == head  # a refused artifact is never recorded

        assert c.post("/v1/models/nope/reload").status_code == 404
        r = c.post("/v1/models/dplr/reload", content=b"{bad", headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["error"] == "invalid_json"


def test_a_schema_change_needs_force(tmp_path):
    """An artifact of another schema is refused (409, the old version serves on) unless forced; a
    forced switch recomputes the catalog for the new schema in the same swap."""
    from tests.service.state_helpers import synthetic_artifact

    path, other = tmp_path / "m.adrk", tmp_path / "other-schema.adrk"
    make_artifact(path, "dplr", seed=1)
    sm = synthetic_artifact(other, "dplr")  # fields c0.., i0.. instead of C1.., C14..
    req = random_request(np.random.default_rng(0), 6)
    with TestClient(_app(path), headers=ADMIN) as c:
        v1 = _version(c)
        assert c.put("/v1/ads", json={"ads": [{"id": "x", "features": {}}]}).status_code == 200
        r = c.post("/v1/models/dplr/reload", json={"path": str(other)})
        assert r.status_code == 409 and r.json()["error"] == "schema_changed", r.text
        assert "removed" in r.json()["message"] and "force" in r.json()["message"] and _version(c) == v1
        assert c.post("/v1/rank", json=req).status_code == 200  # clients of the served schema go on
        r = c.post("/v1/models/dplr/reload", json={"path": str(other), "force": True})
        assert r.status_code == 200 and _version(c) == r.json()["version"] != v1
        ctx = {f.name: "f0v1" for f in sm.schema.context_fields}
        got = c.post("/v1/rank", json={"context": ctx, "ads": [{"id": "x"}]})
        assert got.status_code == 200 and got.json()["version"] == _version(c)


def test_admin_token_and_disabled(tmp_path):
    path = tmp_path / "m.adrk"
    make_artifact(path, "dplr")
    with TestClient(_app(path, admin_token="s3cret")) as c:
        assert c.post("/v1/models/dplr/reload").status_code == 401
        r = c.post("/v1/models/dplr/reload", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        assert c.get("/v1/state").status_code == 401
        assert c.post("/v1/models/dplr/reload", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    with TestClient(_app(path, admin_enabled=False)) as c:
        assert c.post("/v1/models/dplr/reload").status_code == 404
        assert c.get("/readyz").status_code == 200


def test_workers_follow_each_others_reloads(tmp_path):
    """Two apps on one state directory stand for two workers: a reload in one reaches the other
    (catalog parts included); a refused artifact is never propagated; SIGHUP's log entry makes
    both re-read their path."""
    path, new = tmp_path / "m.adrk", tmp_path / "new.adrk"
    p1 = make_artifact(path, "dplr", seed=1)
    req = random_request(np.random.default_rng(2), 8)
    (tmp_path / "ads.jsonl").write_bytes(b"\n".join(msgspec.json.encode(a) for a in req["ads"]))
    kw = dict(state_dir=tmp_path / "state", log_poll=0.01, catalog=tmp_path / "ads.jsonl")
    by_id = {"context": req["context"], "ads": [{"id": a["id"]} for a in req["ads"]]}
    with TestClient(_app(path, **kw), headers=ADMIN) as a, TestClient(_app(path, **kw), headers=ADMIN) as b:
        v1 = _version(a)
        assert _version(b) == v1
        p2 = make_artifact(new, "dplr", seed=2)
        v2 = a.post("/v1/models/dplr/reload", json={"path": str(new)}).json()["version"]
        _eventually(lambda: _version(b) == v2)
        _check_scores(b.post("/v1/rank", json=by_id).json(), {v2: p2}, req)

        r = a.post("/v1/models/dplr/reload", json={"path": str(tmp_path / "missing.adrk")})
        assert r.status_code == 422 and r.json()["error"] == "not_found"
        time.sleep(0.2)
        assert _version(b) == v2

        p3 = make_artifact(new, "dplr", seed=3)  # replaced in place (atomically), then SIGHUP
        request_reload_all(Settings(models=(ModelSpec("dplr", path),), state_dir=tmp_path / "state"))
        _eventually(lambda: _version(a) == _version(b) not in (v1, v2))
        v3 = _version(a)
        for c in (a, b):
            _check_scores(c.post("/v1/rank", json=by_id).json(), {v3: p3}, req)
    assert v1 != v2 and p1 is not p2


def test_reload_all_keeps_good_models_when_one_fails(tmp_path):
    """SIGHUP in one process: every model re-read; one that now fails stays on its old version
    while the others move on."""
    good, bad = tmp_path / "good.adrk", tmp_path / "bad.adrk"
    make_artifact(good, "dplr", seed=1)
    make_artifact(bad, "fm", seed=1)
    st = ServingState(Settings(models=(ModelSpec("good", good), ModelSpec("bad", bad)), gc_freeze=False),
                      loader=ranker_loader())
    st.start(follow=False)
    v_good, v_bad = st.snapshot.models["good"].version, st.snapshot.models["bad"].version
    make_artifact(good, "dplr", seed=2)
    bad.write_bytes(b"garbage" * 20)
    st.reload_all()
    assert st.snapshot.models["good"].version != v_good and st.snapshot.models["bad"].version == v_bad
    st.stop()


def _eventually(check, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not converged in time"
        time.sleep(0.02)


@pytest.mark.slow
def test_40_reloads_under_mixed_traffic_never_tear_a_reply(tmp_path):
    """A real server alternating between two artifacts 40 times while three clients send inline,
    by-id, mixed and all_ads requests: no request fails, and every reply's scores are exactly those
    of the version its label names (catalog parts and model are swapped together).  Then SIGHUP
    re-reads the served path, and SIGTERM stops the server."""
    pa, pb = tmp_path / "a.adrk", tmp_path / "b.adrk"
    pa_params, pb_params = make_artifact(pa, "dplr", seed=1), make_artifact(pb, "dplr", seed=2)
    req = random_request(np.random.default_rng(1), 30)
    (tmp_path / "ads.jsonl").write_bytes(b"\n".join(msgspec.json.encode(a) for a in req["ads"]))
    ctx, inline = req["context"], req["ads"]
    bodies = {
        "inline": {"context": ctx, "ads": inline},
        "by_id": {"context": ctx, "ads": [{"id": a["id"]} for a in inline]},
        "mixed": {"context": ctx, "ads": [a if i % 2 else {"id": a["id"]} for i, a in enumerate(inline)]},
        "all": {"context": ctx, "all_ads": True, "top_k": 10},
    }
    env = {**os.environ}
    from adrank.core.artifact import read_artifact

    params = {read_artifact(pa).version: pa_params, read_artifact(pb).version: pb_params}  # label -> model
    with Server([f"dplr={pa}", "--catalog", str(tmp_path / "ads.jsonl")], env, state_dir=tmp_path / "state") as srv:
        expected: dict = {}

        def want(version):
            if version not in expected:
                ref = reference_scores("dplr", params[version], req)
                expected[version] = ref
            return expected[version]

        failures, checked, stop = [], [], threading.Event()

        def hammer(offset):
            try:
                drive(offset)
            except Exception as exc:  # noqa: BLE001 - a crashed client is a failure, not a silence
                failures.append(("client", repr(exc)))

        def drive(offset):
            kinds = list(bodies)
            with httpx.Client(base_url=srv.url, timeout=20, headers=ADMIN) as h:
                i = offset
                while not stop.is_set():
                    kind = kinds[i % len(kinds)]
                    i += 1
                    r = h.post("/v1/rank", json=bodies[kind])
                    if r.status_code != 200:
                        failures.append((kind, r.status_code, r.text[:200]))
                        continue
                    body = r.json()
                    ref = want(body["version"])
                    got = {a["id"]: a["score"] for a in body["ads"]}
                    if kind == "all":
                        top = sorted(ref.values(), reverse=True)[:10]
                        ok = np.allclose(sorted(got.values(), reverse=True), top, atol=2e-6, rtol=0)
                    else:
                        ok = got.keys() == ref.keys() and all(abs(got[k] - ref[k]) <= 2e-6 for k in got)
                    checked.append(ok)
                    if not ok:
                        failures.append((kind, "scores of another version", body["version"]))

        threads = [threading.Thread(target=hammer, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        try:
            for i in range(40):
                target = pb if i % 2 == 0 else pa
                r = httpx.post(srv.url + "/v1/models/dplr/reload", json={"path": str(target)}, timeout=60, headers=ADMIN)
                assert r.status_code == 200 and r.json()["version"] in params, r.text
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not failures, failures[:5]
        assert len(checked) > 100 and all(checked)

        # SIGHUP: the served path (a.adrk after the last reload) is replaced, then re-read
        before = httpx.get(srv.url + "/v1/models").json()["models"][0]["version"]
        params_c = make_artifact(pa, "dplr", seed=4)
        os.kill(srv.proc.pid, signal.SIGHUP)
        _eventually(lambda: httpx.get(srv.url + "/v1/models").json()["models"][0]["version"] != before)
        now = httpx.get(srv.url + "/v1/models").json()["models"][0]["version"]
        _check_scores(httpx.post(srv.url + "/v1/rank", json=bodies["inline"]).json(), {now: params_c}, req)
        assert srv.proc.poll() is None  # SIGHUP reloads; it does not stop the server
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(20) == 0
