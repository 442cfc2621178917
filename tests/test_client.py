"""adrank.client: importable with httpx + msgspec alone, its reply types describe the same JSON as
the served OpenAPI document, and sync and async calls against a live app return typed replies and
raise the service's errors (status, code, Retry-After)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import msgspec
import pytest
from fastapi.testclient import TestClient

from adrank import client as ac
from service.app import create_app
from service.settings import ModelSpec, Settings
from tests.service.helpers import ADMIN_TOKEN, make_artifact, ranker_loader

AD = {"id": "a", "features": {"C14": "c14-1"}}


def test_imports_nothing_but_httpx_and_msgspec():
    code = ("import sys; import adrank.client; bad = [m for m in ('numpy', 'numba', 'service', 'fastapi', 'torch', "
            "'adrank.core') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def _shape(schema: dict) -> dict:
    """A JSON schema without its prose (titles, descriptions) and with every property required,
    for comparing what two types accept."""
    if isinstance(schema, dict):
        return {k: _shape(v) for k, v in schema.items() if k not in ("title", "description", "required")}
    if isinstance(schema, list):
        return [_shape(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    d = tmp_path_factory.mktemp("client")
    make_artifact(d / "dplr.adrk", "dplr")
    make_artifact(d / "v2.adrk", "dplr", seed=5)
    s = Settings(models=(ModelSpec("dplr", d / "dplr.adrk"),), gc_freeze=False, admin_token=ADMIN_TOKEN,
                 model_dir=d, queue_budget=60.0)
    a = create_app(s, loader=ranker_loader())
    with TestClient(a) as c:
        yield a, c


def test_reply_types_match_the_served_document(app):
    _, c = app
    served = c.get("/openapi.json").json()["components"]["schemas"]
    mine = msgspec.json.schema_components((ac.RankResponse, ac.ReloadResponse, ac.UpsertResponse, ac.DeleteResponse),
                                          ref_template="#/components/schemas/{name}")[1]
    for name in ("RankResponse", "RankedAd", "Explanation", "ReloadResponse", "UpsertResponse", "DeleteResponse"):
        assert _shape(mine[name]) == _shape(served[name]), name
    # the client's ModelInfo / ErrorReply read a subset of the served fields
    for name, props in (("ModelInfo", ac.ModelInfo.__struct_fields__), ("ErrorReply", ac.ErrorReply.__struct_fields__)):
        assert set(props) <= set(served[name]["properties"]), name


def _transport(c: TestClient):
    return c._transport  # the TestClient's in-process ASGI transport (the app's lifespan already ran)


def test_sync_client(app):
    _, c = app
    with ac.Client("http://testserver", transport=_transport(c)) as cl, \
            ac.Client("http://testserver", token=ADMIN_TOKEN, transport=_transport(c)) as admin:
        assert cl.ready()
        assert [m.name for m in cl.models().models] == ["dplr"]
        reply = cl.rank(ads=[AD, {"id": 7, "features": {}}], context={"C1": "c1-0"}, request_id="r-1")
        assert isinstance(reply, ac.RankResponse) and {a.id for a in reply.ads} == {"a", 7}
        assert reply.ads[0].score >= reply.ads[1].score
        with pytest.raises(ac.AdrankError) as exc:
            cl.rank(ads=[AD, AD])
        assert (exc.value.status, exc.value.code) == (422, "duplicate_ad_id")
        with pytest.raises(ac.AdrankError) as exc:
            cl.upsert([AD])
        assert exc.value.status == 401
        assert admin.upsert([{"id": "cat-1", "features": {"C14": "c14-2"}}]).upserted == 1
        assert cl.rank(ads=[{"id": "cat-1"}]).ads[0].id == "cat-1"
        assert admin.delete("cat-1").deleted == "cat-1"
        assert admin.reload("dplr", "v2.adrk").version != reply.version
        assert "adrank_requests_total" in cl.metrics()


def test_async_client(app):
    _, c = app

    async def go():
        transport = httpx.ASGITransport(app=c.app)
        async with ac.AsyncClient("http://testserver", transport=transport) as cl:
            replies = await asyncio.gather(*(cl.rank(ads=[AD], top_k=1) for _ in range(5)))
            assert all(len(r.ads) == 1 and r.ads[0].id == "a" for r in replies)
            with pytest.raises(ac.AdrankError) as exc:
                await cl.rank(ads=[AD], model="nope")
            assert (exc.value.status, exc.value.code) == (404, "unknown_model")
            assert (await cl.models()).default == "dplr"

    asyncio.run(go())
