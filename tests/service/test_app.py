"""The app in-process (Starlette TestClient, lifespan included) on real artifacts + Ranker.

Scores are checked against tests/naive.py on rows encoded by adrank's Preprocessor; every
class of bad input gets its status and a message naming the problem, never a 500.
"""

from __future__ import annotations

import subprocess
import sys

import msgspec
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import pipeline
from service.app import create_app
from service.settings import ModelSpec, Settings
from tests.service.helpers import SCHEMA, make_artifact, random_request, ranker_loader, reference_scores

KINDS = ("fm", "fwfm", "pruned", "dplr")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    d = tmp_path_factory.mktemp("artifacts")
    return {kind: (d / f"{kind}.adrk", make_artifact(d / f"{kind}.adrk", kind, seed=i))
            for i, kind in enumerate(KINDS)}


def settings_for(artifacts, **kw) -> Settings:
    specs = tuple(ModelSpec(k, p) for k, (p, _) in artifacts.items())
    return Settings(models=specs, gc_freeze=False, **kw)


@pytest.fixture(scope="module")
def client(artifacts):
    app = create_app(settings_for(artifacts, max_candidates=50, max_body_bytes=20_000), loader=ranker_loader())
    with TestClient(app) as c:
        yield c


def test_app_imports_without_torch():
    # the app, and the `adrank serve` process that hosts it (the CLI imports every command module)
    code = ("import sys, service.app, service.routes, service.models, adrank.cli.commands.serve; "
            "from adrank.cli.main import build_parser; build_parser(); "
            "assert 'torch' not in sys.modules, 'torch imported'; assert 'training' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("positional", [False, True])
def test_rank_scores_equal_naive(client, artifacts, kind, positional):
    rng = np.random.default_rng(7)
    for _ in range(3):
        req = random_request(rng, n_ads=int(rng.integers(1, 12)), positional=positional)
        r = client.post("/v1/rank", json={**req, "model": kind})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == kind and body["version"]
        want = reference_scores(kind, artifacts[kind][1], req)
        got = {a["id"]: a["score"] for a in body["ads"]}
        assert set(got) == set(want)
        for i in got:
            assert got[i] == pytest.approx(want[i], abs=2e-6)
        scores = [a["score"] for a in body["ads"]]
        assert scores == sorted(scores, reverse=True)


def test_default_model_ties_and_top_k(client, artifacts):
    same = {"C14": "c14-1", "C15": "c15-2", "tags": ["tags-0"]}
    ads = [{"id": f"x{i}", "features": same} for i in range(4)] + [{"id": "y", "features": {"C14": "c14-3"}}]
    r = client.post("/v1/rank", json={"context": {"C1": "c1-0"}, "ads": ads, "top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "fm"  # the first model is the default
    full = client.post("/v1/rank", json={"context": {"C1": "c1-0"}, "ads": ads}).json()["ads"]
    assert body["ads"] == full[:3]
    tied = [a["id"] for a in full if a["id"].startswith("x")]
    assert tied == ["x0", "x1", "x2", "x3"]  # equal scores keep input order


def test_models_endpoint(client, artifacts):
    body = client.get("/v1/models").json()
    assert body["default"] == "fm"
    by_name = {m["name"]: m for m in body["models"]}
    assert set(by_name) == set(KINDS)
    for kind, m in by_name.items():
        assert m["kind"] == kind and m["version"]
        assert m["size_bytes"] == artifacts[kind][0].stat().st_size
        assert [(f["name"], f["type"], f["role"]) for f in m["fields"]] == [
            (f.name, f.type, f.role) for f in SCHEMA.fields]
    assert by_name["dplr"]["rank"] == 2


def test_health_and_metrics(client):
    assert client.get("/livez").status_code == 200
    r = client.get("/readyz")
    assert r.status_code == 200 and set(r.json()["models"]) == set(KINDS)
    client.post("/v1/rank", json={"model": "dplr", "ads": [{"id": "a", "features": {}}]})
    text = client.get("/metrics").text
    assert 'adrank_requests_total{code="200",endpoint="/v1/rank",model="dplr"}' in text
    assert 'adrank_request_duration_seconds_bucket{endpoint="/v1/rank",le="0.0001",model="dplr"}' in text
    assert "adrank_model_inference_duration_seconds_count" in text
    assert 'adrank_request_candidates_bucket{le="1.0",model="dplr"}' in text
    assert 'adrank_model_info{model="dplr",version=' in text


def test_not_ready_before_startup(artifacts):
    app = create_app(settings_for(artifacts), loader=ranker_loader())
    c = TestClient(app)  # no context manager: the lifespan has not run, nothing is loaded
    assert c.get("/livez").status_code == 200
    for r in (c.get("/readyz"), c.post("/v1/rank", json={"ads": []})):
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"] == "not_ready"


BAD = [
    (b'{"ads": [', 422, "invalid_json", "malformed JSON"),
    (b"[1, 2]", 422, "invalid_request", "Expected `object`"),
    (b'{"context": {}}', 422, "invalid_request", "missing required field `ads`"),
    (b'{"ads": [{"features": {}}]}', 422, "invalid_request", "`id` - at `$.ads[0]`"),
    (b'{"ads": [{"id": ["a"]}]}', 422, "invalid_request", "$.ads[0].id"),
    (b'{"ads": [], "top_k": 0}', 422, "invalid_request", "$.top_k"),
    (b'{"ads": [], "top_k": "3"}', 422, "invalid_request", "$.top_k"),
    (b'{"ads": [], "colour": 1}', 422, "invalid_request", "unknown field `colour`"),
    (b'{"ads": [], "context": {"C1": {"x": 1}}}', 422, "invalid_request", "'C1'"),
    (b'{"ads": [{"id": "a", "features": {"C14": [["x"]]}}]}', 422, "invalid_request", "'C14'"),
    (b'{"ads": [], "model": "nope"}', 404, "unknown_model", "'nope'"),
    (b'{"ads": [{"id": "a", "features": {"colour": "red"}}], "model": "dplr"}', 422, None, "colour"),
    (b'{"ads": [{"id": "a"}], "context": {"bogus": 1}, "model": "dplr"}', 422, None, "bogus"),
    (b'{"ads": [{"id": "a", "features": {"C1": "c1-0"}}], "model": "dplr"}', 422, None, "C1"),
    (b'{"ads": [{"id": "a"}], "context": {"I1": "abc"}, "model": "dplr"}', 422, None, "I1"),
    (b'{"ads": [{"id": "a", "values": [1, 2, 3, 4, 5]}], "model": "dplr"}', 422, None, "values"),
    (msgspec.json.encode({"ads": [{"id": str(i), "features": {}} for i in range(51)]}), 422,
     "too_many_candidates", "more than the limit of 50 candidates"),
    (msgspec.json.encode({"ads": [{"id": "x" * 30_000}]}), 413, "body_too_large", "exceeds the limit"),
]


@pytest.mark.parametrize("body,status,code,needle", BAD, ids=[f"{b[:40]!r}" for b, *_ in BAD])
def test_bad_input_named_never_500(client, body, status, code, needle):
    r = client.post("/v1/rank", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()
    if code:
        assert err["error"] == code
    assert needle in err["message"], err
    ok = client.post("/v1/rank", json={"ads": [{"id": "a", "features": {}}]})
    assert ok.status_code == 200  # a bad request never affects the next one


def test_overloaded_gets_503_retry_after(client):
    svc = client.app.state.svc
    svc.inflight = svc.settings.max_inflight  # as if that many requests were in flight
    try:
        r = client.post("/v1/rank", json={"ads": [{"id": "a", "features": {}}]})
    finally:
        svc.inflight = 0
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"] == "overloaded"


def test_catalog_writes_wait_on_the_rank_requests_in_flight(client, monkeypatch):
    """The serving state's writers wait on the app's idle event, which is cleared while a
    /v1/rank request is in flight and set again when the last one is answered."""
    svc = client.app.state.svc
    assert svc.state.idle is svc.idle and svc.idle.is_set()
    seen = []

    answer = pipeline.answer

    def answering(*args, **kw):  # the request is in flight while the pipeline runs: look at the event then
        seen.append(svc.idle.is_set())
        return answer(*args, **kw)
    monkeypatch.setattr(pipeline, "answer", answering)
    req = random_request(np.random.default_rng(5), n_ads=3)
    assert client.post("/v1/rank", json={**req, "model": "dplr"}).status_code == 200
    assert seen and not any(seen)  # cleared during the request
    assert svc.idle.is_set()  # set after it
