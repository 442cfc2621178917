"""HTTP: PUT /v1/ads, GET/DELETE /v1/ads/{id} (the catalog router on an app with a catalog)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.catalog import routes
from service.catalog.store import Catalog, Model
from service.catalog.synthetic import make_schema, random_features, synthetic_model

VALUES = 20
SCHEMA = make_schema(3, 4, multi_item=1, multi_context=1)
ITEM = range(SCHEMA.m_context, SCHEMA.m)


@pytest.fixture
def client():
    sm = synthetic_model("dplr", SCHEMA, values_per_field=VALUES)
    app = FastAPI()
    app.state.catalog = Catalog([Model("m", "dplr", sm.preprocessor, sm.arrays)])
    app.include_router(routes.router)
    with TestClient(app) as c:
        yield c


def ads(n, seed=0):
    feats = random_features(SCHEMA, ITEM, VALUES, np.random.default_rng(seed), n)
    return [{"id": f"ad-{i}", "features": f} for i, f in enumerate(feats)]


def test_put_get_delete(client):
    batch = ads(12)
    r = client.put("/v1/ads", json={"ads": batch})
    assert r.status_code == 200 and r.json() == {"upserted": 12, "size": 12, "version": 1}
    got = client.get("/v1/ads/ad-4")
    assert got.status_code == 200 and got.json()["features"] == batch[4]["features"]
    r = client.put("/v1/ads", json={"ads": [{"id": "ad-4", "features": {"i0": "f3v2"}}]})
    assert r.json() == {"upserted": 1, "size": 12, "version": 2}
    assert client.get("/v1/ads/ad-4").json()["features"] == {"i0": "f3v2"}
    r = client.delete("/v1/ads/ad-4")
    assert r.status_code == 200 and r.json() == {"deleted": "ad-4", "size": 11, "version": 3}
    for resp in (client.get("/v1/ads/ad-4"), client.delete("/v1/ads/ad-4")):
        assert resp.status_code == 404 and resp.json()["error"] == "unknown_ad" and "ad-4" in resp.json()["message"]


def test_bad_upserts_are_422_naming_the_ad_and_change_nothing(client):
    client.put("/v1/ads", json={"ads": ads(3)})
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
    assert client.put("/v1/ads", json={"ads": []}).json()["version"] == 2  # an empty upsert still commits


def test_oversized_body_is_413(client, monkeypatch):
    monkeypatch.setattr(routes, "MAX_UPSERT_BYTES", 100)
    r = client.put("/v1/ads", json={"ads": ads(5)})
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"


def test_no_catalog_is_404():
    app = FastAPI()
    app.include_router(routes.router)
    with TestClient(app) as c:
        assert c.put("/v1/ads", json={"ads": []}).status_code == 404
        assert c.get("/v1/ads/a").status_code == 404



def test_workers_share_writes_through_the_journal(tmp_path):
    import time

    from service.catalog.journal import Follower
    from service.catalog.wiring import install

    sm = synthetic_model("dplr", SCHEMA, values_per_field=VALUES)
    apps = []
    for _ in range(2):  # two workers of one server: same run directory
        app = FastAPI()
        install(app, Catalog([Model("m", "dplr", sm.preprocessor, sm.arrays)]), run_dir=tmp_path)
        apps.append(app)
    follower = Follower(apps[1].state.catalog_journal, interval=0.02)
    try:
        with TestClient(apps[0]) as a, TestClient(apps[1]) as b:
            assert a.put("/v1/ads", json={"ads": ads(4)}).json()["version"] == 1
            assert b.get("/v1/ads/ad-2").json()["features"] == ads(4)[2]["features"]  # seen at once
            assert b.delete("/v1/ads/ad-2").status_code == 200
            assert a.get("/v1/ads/ad-2").status_code == 404 and b.delete("/v1/ads/ad-2").status_code == 404
            a.put("/v1/ads", json={"ads": [{"id": "idle", "features": {}}]})
            deadline = time.monotonic() + 10  # b's follower applies it without any request to b
            while "idle" not in apps[1].state.catalog.snapshot.index and time.monotonic() < deadline:
                time.sleep(0.02)
            assert "idle" in apps[1].state.catalog.snapshot.index
            a.put("/v1/ads", json={"ads": [{"id": "hot", "features": {}}]})  # ranked on b at once:
            assert routes.resolve(apps[1].state.catalog, "m", {}, [{"id": "hot"}], False, None)[0][0] == "hot"
            bad = a.put("/v1/ads", json={"ads": [{"id": "x", "features": {"nope": 1}}]})
            assert bad.status_code == 422 and "ads[0]" in bad.json()["message"]
    finally:
        follower.stop()
    assert len((tmp_path / "catalog-journal.jsonl").read_text().splitlines()) == 4
