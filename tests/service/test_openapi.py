"""The served OpenAPI document: generated from the msgspec types the server decodes with, every
route present with its statuses, /docs served, and schemathesis over the whole document against
the app (bounded examples): no server error, every reply conforming to the document."""

from __future__ import annotations

import msgspec
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis import checks as st_checks
from schemathesis.specs.openapi import checks as oa_checks

from service import schemas
from service.app import create_app
from service.settings import ModelSpec, Settings
from tests.service.helpers import ADMIN, ADMIN_TOKEN, make_artifact, ranker_loader

EXAMPLES = 25  # per operation: the whole run stays within seconds


def _app(tmp_path_factory, admin=True):
    d = tmp_path_factory.mktemp("openapi")
    make_artifact(d / "dplr.adrk", "dplr")
    s = Settings(models=(ModelSpec("dplr", d / "dplr.adrk"),), gc_freeze=False, admin_token=ADMIN_TOKEN,
                 model_dir=d, admin_enabled=admin, max_candidates=200, state_dir=d / "state")
    return create_app(s, loader=ranker_loader())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    app = _app(tmp_path_factory)
    with TestClient(app, headers=ADMIN) as c:  # the lifespan loads the model once for every call below
        yield app, c


def test_document_is_generated_from_the_msgspec_types(served):
    _, c = served
    doc = c.get("/openapi.json").json()
    want = msgspec.json.schema_components((schemas.RankRequest, schemas.RankResponse),
                                          ref_template="#/components/schemas/{name}")[1]
    for name in ("RankRequest", "RankResponse", "Ad", "RankedAd"):
        assert doc["components"]["schemas"][name] == want[name], name
    rank = doc["paths"]["/v1/rank"]["post"]
    assert rank["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/RankRequest"}
    assert {"200", "404", "413", "415", "422", "503"} <= set(rank["responses"])
    assert "Retry-After" in rank["responses"]["503"]["headers"]
    for path in ("/v1/ads", "/v1/models/{name}/reload", "/v1/state", "/v1/ads/{ad_id}"):
        for op in doc["paths"][path].values():
            assert op["security"] == [{"bearer": []}] and "401" in op["responses"], path
    assert c.get("/docs").status_code == 200


def test_no_admin_document_has_no_admin_routes(tmp_path_factory):
    with TestClient(_app(tmp_path_factory, admin=False)) as c:
        assert set(c.get("/openapi.json").json()["paths"]) == {"/v1/rank", "/v1/rank:batch", "/v1/models", "/livez", "/readyz",
                                                             "/metrics"}


CHECKS = [st_checks.not_a_server_error, oa_checks.status_code_conformance, oa_checks.content_type_conformance,
          oa_checks.response_schema_conformance, oa_checks.response_headers_conformance]


def _operations(doc: dict) -> list:
    return [r.ok() for r in schemathesis.openapi.from_dict(doc).get_all_operations()]


def _call(client, case):
    """The case sent through the test client of the running app (schemathesis's own ASGI transport
    runs the app's lifespan around every call)."""
    kw = case.as_transport_kwargs(base_url="http://testserver", headers=ADMIN)
    kw.pop("timeout", None)
    if "json" in kw:
        kw["content"] = msgspec.json.encode(kw.pop("json"))
    return client.request(**kw)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schemathesis(served, mode):
    """Generated (and, negative, schema-violating) requests for every operation: never a 5xx, and
    every status, content type, header and body the one the document declares.  (schemathesis's
    own pytest plugin is not used: it does not run under this pytest.)"""
    _, client = served
    failures: list = []
    ops = _operations(client.get("/openapi.json").json())
    assert len(ops) == 15  # every route of the app (tests/service/test_security.py lists the same)
    for op in ops:
        @given(op.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def run(case):
            try:
                case.validate_response(_call(client, case), checks=CHECKS)
            except Exception as exc:  # noqa: BLE001 - collected: every operation is run
                failures.append(f"{op.label}: {str(exc)[:600]}")  # noqa: B023 - run() is called in this iteration
                raise

        try:
            run()
        except Exception:  # noqa: BLE001
            pass
    assert not failures, "\n\n".join(failures[:5])
