"""HTTP: PUT /v1/ads, GET/DELETE /v1/ads/{id} on the real app; workers sharing one state directory
converge through the replication log; /v1/rank against the catalog (every kind, fast and generic
parsers byte for byte alike)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from exporter.synthetic import make_schema, random_features
from service.app import create_app
from service.catalog import routes
from service.settings import ModelSpec, Settings
from tests.service.helpers import ADMIN, ADMIN_TOKEN, use_fastpath
from tests.service.state_helpers import synthetic_artifact

VALUES = 20
SCHEMA = make_schema(3, 4, multi_item=1, multi_context=1)
ITEM = range(SCHEMA.m_context, SCHEMA.m)


def synthetic_app(tmp_path, **kw):
    path = tmp_path / "m.adrk"
    if not path.exists():
        synthetic_artifact(path, "dplr", SCHEMA, VALUES)
    return create_app(Settings(models=(ModelSpec("m", path),), gc_freeze=False, admin_token=ADMIN_TOKEN, **kw))


@pytest.fixture
def client(tmp_path):
    with TestClient(synthetic_app(tmp_path), headers=ADMIN) as c:
        yield c


def ads(n, seed=0):
    feats = random_features(SCHEMA, ITEM, VALUES, np.random.default_rng(seed), n)
    return [{"id": f"ad-{i}", "features": f} for i, f in enumerate(feats)]


def subset(reply, **want):
    return {k: reply[k] for k in want} == want


def test_put_get_delete(client):
    batch = ads(12)
    r = client.put("/v1/ads", json={"ads": batch})
    assert r.status_code == 200 and subset(r.json(), upserted=12, size=12, version=1)
    got = client.get("/v1/ads/ad-4")
    assert got.status_code == 200 and got.json()["features"] == batch[4]["features"]
    r = client.put("/v1/ads", json={"ads": [{"id": "ad-4", "features": {"i0": "f3v2"}}]})
    assert subset(r.json(), upserted=1, size=12, version=2)
    assert client.get("/v1/ads/ad-4").json()["features"] == {"i0": "f3v2"}
    r = client.delete("/v1/ads/ad-4")
    assert r.status_code == 200 and subset(r.json(), deleted="ad-4", size=11, version=3)
    for resp in (client.get("/v1/ads/ad-4"), client.delete("/v1/ads/ad-4")):
        assert resp.status_code == 404 and resp.json()["error"] == "unknown_ad" and "ad-4" in resp.json()["message"]
    positions = [client.put("/v1/ads", json={"ads": ads(1, seed=s)}).json()["position"] for s in range(3)]
    assert positions == sorted(positions) and len(set(positions)) == 3  # each write is its own log entry


def test_bad_upserts_are_422_naming_the_ad_and_change_nothing(client):
    client.put("/v1/ads", json={"ads": ads(3)})
    head = client.get("/v1/state").json()["head"]
    cases = [
        (b"{not json", "invalid_json", "malformed JSON"),
        (b'{"ads": 3}', "invalid_request", '"ads"'),
        (b'{"ads": [], "extra": 1}', "invalid_request", '"ads"'),
        (b'{"ads": [{"id": "x", "features": {"nope": 1}}]}', "invalid_ad", "ads[0] (id 'x'): ['nope']"),
        (b'{"ads": [{"id": "x", "features": {}}, {"features": {}}]}', "invalid_ad", "ads[1]: 'id'"),
        (b'{"ads": [{"id": "x", "features": {"i1": {"a": 1}}}]}', "invalid_ad", "ads[0], model 'm': field 'i1'"),
    ]
    for body, code, msg in cases:
        r = client.put("/v1/ads", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["error"] == code and msg in r.json()["message"], r.json()
    assert client.get("/v1/ads/x").status_code == 404
    assert client.get("/v1/state").json()["head"] == head  # nothing refused was written to the log
    assert client.put("/v1/ads", json={"ads": []}).json()["version"] == 2  # an empty upsert still commits


def test_oversized_body_is_413(client, monkeypatch):
    monkeypatch.setattr(routes, "MAX_UPSERT_BYTES", 100)
    r = client.put("/v1/ads", json={"ads": ads(5)})
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"


def test_no_catalog_is_404():
    app = FastAPI()
    app.include_router(routes.router)
    with TestClient(app, headers=ADMIN) as c:
        assert c.put("/v1/ads", json={"ads": []}).status_code == 404
        assert c.get("/v1/ads/a").status_code == 404


def _eventually(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not converged in time"
        time.sleep(0.02)


def test_workers_sharing_a_state_dir_converge_through_the_log(tmp_path):
    """Two apps on one state directory stand for two uvicorn workers: a write through either is
    applied by both, in one order; a third started later rebuilds the same catalog."""
    state = tmp_path / "state"
    with TestClient(synthetic_app(tmp_path, state_dir=state, log_poll=0.01), headers=ADMIN) as a, \
            TestClient(synthetic_app(tmp_path, state_dir=state, log_poll=0.01), headers=ADMIN) as b:
        assert a.put("/v1/ads", json={"ads": ads(4)}).status_code == 200
        _eventually(lambda: b.get("/v1/ads/ad-2").status_code == 200)
        assert b.get("/v1/ads/ad-2").json()["features"] == ads(4)[2]["features"]
        assert b.delete("/v1/ads/ad-2").status_code == 200
        _eventually(lambda: a.get("/v1/ads/ad-2").status_code == 404)
        assert b.delete("/v1/ads/ad-2").status_code == 404
        b.put("/v1/ads", json={"ads": [{"id": "hot", "features": {"i0": "f3v1"}}]})
        _eventually(lambda: a.post("/v1/rank", json={"model": "m", "ads": [{"id": "hot"}]}).status_code == 200)
        bad = a.put("/v1/ads", json={"ads": [{"id": "x", "features": {"nope": 1}}]})
        assert bad.status_code == 422 and "ads[0]" in bad.json()["message"]
        _eventually(lambda: a.get("/v1/state").json()["position"] == b.get("/v1/state").json()["position"])
        want = {i: a.get(f"/v1/ads/{i}").json() for i in ("ad-0", "ad-1", "ad-3", "hot")}
        assert {i: b.get(f"/v1/ads/{i}").json() for i in want} == want
    with TestClient(synthetic_app(tmp_path, state_dir=state), headers=ADMIN) as late:
        assert {i: late.get(f"/v1/ads/{i}").json()["features"] for i in want} == \
            {i: w["features"] for i, w in want.items()}
        assert late.get("/v1/ads/ad-2").status_code == 404


# --- the real service (service/app.py) with a catalog --------------------------------------------
APP_KINDS = ("fm", "fwfm", "pruned", "dplr")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Real artifacts (exporter) for every kind, a JSONL catalog, the app with its lifespan."""
    import msgspec

    from service.app import create_app
    from service.settings import ModelSpec, Settings
    from tests.service.helpers import make_artifact, random_request, ranker_loader

    d = tmp_path_factory.mktemp("catalog-app")
    arts = {k: (d / f"{k}.adrk", make_artifact(d / f"{k}.adrk", k, seed=i)) for i, k in enumerate(APP_KINDS)}
    req = random_request(np.random.default_rng(3), n_ads=40)
    (d / "ads.jsonl").write_bytes(b"\n".join(msgspec.json.encode(a) for a in req["ads"]) + b"\n")
    settings = Settings(models=tuple(ModelSpec(k, p) for k, (p, _) in arts.items()), gc_freeze=False,
                        catalog=d / "ads.jsonl", admin_token=ADMIN_TOKEN, model_dir=d)
    with TestClient(create_app(settings, loader=ranker_loader()), headers=ADMIN) as c:
        yield c, arts, req, d


def rank(c, body):
    r = c.post("/v1/rank", json=body)
    return r.status_code, r.json()


@pytest.mark.parametrize("kind", APP_KINDS)
def test_app_rank_by_id_equals_inline_equals_naive(served, kind):
    from tests.service.helpers import reference_scores

    c, arts, req, _ = served
    want = reference_scores(kind, arts[kind][1], req)
    ids = [{"id": a["id"]} for a in req["ads"]]
    mixed = [a if i % 2 else {"id": a["id"]} for i, a in enumerate(req["ads"])]
    for ads in (req["ads"], ids, mixed):
        code, body = rank(c, {"model": kind, "context": req["context"], "ads": ads})
        assert code == 200, body
        got = {a["id"]: a["score"] for a in body["ads"]}
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[i] for i in want], list(want.values()), rtol=1e-5, atol=1e-6)
        in_order = [want[a["id"]] for a in body["ads"]]  # best first, up to ties within float32 noise
        np.testing.assert_allclose(in_order, sorted(want.values(), reverse=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", APP_KINDS)
def test_app_fast_path_by_id_answers_byte_for_byte_as_the_generic_path(served, kind, monkeypatch):
    """Ads by id, alone or mixed with inline ads: the compiled parser and the generic one produce
    the same encoded request, hence the same reply (errors included), byte for byte."""
    import json

    from service import pipeline

    c, _, req, _ = served
    ids = [a["id"] for a in req["ads"]]
    used = []
    real = pipeline.parse_fast
    monkeypatch.setattr(pipeline, "parse_fast", lambda *a: used.append(real(*a)) or used[-1])
    bodies = [{"model": kind, "context": req["context"], "ads": [{"id": i} for i in ids]},
              {"model": kind, "context": req["context"], "ads": [{"id": i} for i in ids[::-1]], "top_k": 7},
              {"context": {}, "model": kind, "ads": [{"id": ids[5]}]},
              {"model": kind, "context": req["context"], "ads": [{"id": ids[0]}, {"id": "not-there"}]},
              {"model": kind, "context": req["context"], "ads": [{"id": ids[0]}, {"id": 7}]},
              {"model": kind, "context": req["context"], "ads": [{"id": ""}]},
              {"model": kind, "context": req["context"], "ads": [{"id": ids[0]}, req["ads"][1]]},
              {"model": kind, "context": req["context"], "ads": [{"id": ids[0]}, {"id": ids[1]}, {"id": ids[0]}]}]
    for body in bodies:
        raw = json.dumps(body, ensure_ascii=False).encode()
        use_fastpath(c, monkeypatch, True)
        fast = c.post("/v1/rank", content=raw, headers={"content-type": "application/json"})
        use_fastpath(c, monkeypatch, False)
        slow = c.post("/v1/rank", content=raw, headers={"content-type": "application/json"})
        assert (fast.status_code, fast.content) == (slow.status_code, slow.content), raw[:200]
    # the scanner reads every shape here but integer and empty catalog ids and duplicates (the generic
    # parser's: it names them)
    assert [u is not None for u in used] == [True] * 4 + [False] * 2 + [True] + [False]


def test_app_all_ads_top_k_and_errors(served):
    from tests.service.helpers import reference_scores

    c, arts, req, _ = served
    want = reference_scores("dplr", arts["dplr"][1], req)
    code, body = rank(c, {"model": "dplr", "context": req["context"], "all_ads": True, "top_k": 5})
    assert code == 200, body
    np.testing.assert_allclose([want[a["id"]] for a in body["ads"]], sorted(want.values(), reverse=True)[:5],
                               rtol=1e-5, atol=1e-6)
    for bad, field in [({"ads": [{"id": "nope"}]}, "nope"), ({"ads": [{"id": "ad-1"}], "all_ads": True}, "exactly one"),
                       ({}, "missing required field `ads`")]:
        code, body = rank(c, {"model": "dplr", "context": req["context"], **bad})
        assert code == 422 and field in body["message"], body


def test_app_writes_are_seen_by_rank_and_metrics(served):
    from tests.service.helpers import reference_scores

    c, arts, req, _ = served
    new = {"id": "fresh", "features": {"C14": "c14-2", "tags": ["tags-1"]}}
    assert c.put("/v1/ads", json={"ads": [new]}).status_code == 200
    code, body = rank(c, {"model": "fm", "context": req["context"], "ads": [{"id": "fresh"}]})
    want = reference_scores("fm", arts["fm"][1], {"context": req["context"], "ads": [new]})
    assert code == 200 and body["ads"][0]["score"] == pytest.approx(want["fresh"], rel=1e-5)
    assert c.delete("/v1/ads/fresh").status_code == 200
    assert rank(c, {"model": "fm", "context": req["context"], "ads": [{"id": "fresh"}]})[0] == 422
    for ads in ([req["ads"][0]], [req["ads"][0], {"id": req["ads"][1]["id"]}]):  # inline, mixed (this test's own)
        assert rank(c, {"model": "fm", "context": req["context"], "ads": ads})[0] == 200
    text = c.get("/metrics").text
    version = c.get("/v1/models").json()["models"][0]["version"]
    assert f'adrank_catalog_ads{{model="fm",version="{version}"}} 40.0' in text
    assert 'adrank_catalog_updates_total{op="delete",result="ok"}' in text
    for mode in ("inline", "catalog", "mixed"):  # time per request, catalog vs inline scoring
        assert any(line.startswith("adrank_catalog_scoring_duration_seconds_count") and f'mode="{mode}"' in line
                   and 'model="fm"' in line for line in text.splitlines()), mode


def test_app_reload_recomputes_the_catalog(served):
    from tests.service.helpers import make_artifact, reference_scores

    c, arts, req, d = served
    params = make_artifact(d / "dplr-v2.adrk", "dplr", seed=99)
    r = c.post("/v1/models/dplr/reload", json={"path": str(d / "dplr-v2.adrk")})
    assert r.status_code == 200, r.text
    want = reference_scores("dplr", params, req)
    code, body = rank(c, {"model": "dplr", "context": req["context"], "ads": [{"id": a["id"]} for a in req["ads"]]})
    assert code == 200
    np.testing.assert_allclose([a["score"] for a in body["ads"]], sorted(want.values(), reverse=True), rtol=1e-5)


def test_serve_refuses_a_missing_catalog_file(tmp_path, capsys):
    from adrank.cli import main
    from tests.service.helpers import make_artifact

    make_artifact(tmp_path / "m.adrk", "fm")
    assert main(["serve", str(tmp_path / "m.adrk"), "--catalog", str(tmp_path / "absent.jsonl")]) == 2
    assert "--catalog: " in (err := capsys.readouterr().err) and "absent.jsonl does not exist" in err
