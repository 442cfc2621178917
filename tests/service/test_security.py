"""The security suite (issue 16): every route x {no token configured, token, --no-admin}, the
reload path's confinement to the model directory, the content types a route accepts, and what
`adrank serve` does with no token (a generated one in a 0600 file it names).

Apps are built from ``ADRANK_*`` variables (``Settings.from_env``) so that the suite also runs,
and fails, against a server that predates these rules (the report shows it on the old main).
"""

from __future__ import annotations

import gzip
import json
import os
import stat

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.service.helpers import Server, make_artifact, ranker_loader

TOKEN = "security-suite-token-0123456789"
GOOD = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"content-type": "application/json"}
AD = {"id": "a", "features": {"C14": "c14-1"}}
RANK = {"model": "dplr", "ads": [AD]}

# (method, path, JSON body or None): every admin route, the catalog's reads and writes included
ADMIN_ROUTES = [("POST", "/v1/models/dplr/reload", {}), ("GET", "/v1/state", None),
                ("PUT", "/v1/ads", {"ads": [AD]}), ("GET", "/v1/ads/a", None), ("DELETE", "/v1/ads/zzz", None),
                ("PUT", "/v1/ads/bids", {"bids": {"a": 1.0}})]
PUBLIC_ROUTES = [("POST", "/v1/rank", RANK), ("GET", "/v1/models", None), ("GET", "/livez", None),
                 ("GET", "/readyz", None), ("GET", "/metrics", None), ("GET", "/openapi.json", None),
                 ("POST", "/v1/rank:batch", {"auctions": [RANK]})]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("security")
    d = root / "models"
    d.mkdir()
    make_artifact(d / "dplr.adrk", "dplr", seed=1)
    make_artifact(d / "dplr-v2.adrk", "dplr", seed=2)
    make_artifact(root / "outside.adrk", "dplr", seed=3)  # a valid artifact, outside the directory
    (root / "secret.txt").write_text("root:*:0:0:secret\n")
    os.symlink(root / "outside.adrk", d / "link-out.adrk")
    return d


def app(models, **env):
    base = {"ADRANK_MODELS": f"dplr={models / 'dplr.adrk'}", "ADRANK_GC_FREEZE": "0",
            "ADRANK_MODEL_DIR": str(models)}
    return create_app(Settings.from_env({**base, **env}), loader=ranker_loader())


def call(c, method, path, body, headers=None):
    data = None if body is None else json.dumps(body).encode()
    return c.request(method, path, content=data, headers={**(JSON if body is not None else {}), **(headers or {})})


@pytest.fixture(scope="module")
def default_client(models):  # no token configured: admin routes are closed to everyone
    with TestClient(app(models)) as c:
        yield c


@pytest.fixture(scope="module")
def token_client(models):
    with TestClient(app(models, ADRANK_ADMIN_TOKEN=TOKEN)) as c:
        yield c


@pytest.fixture(scope="module")
def no_admin_client(models):
    with TestClient(app(models, ADRANK_ADMIN_TOKEN=TOKEN, ADRANK_ADMIN="0")) as c:
        yield c


@pytest.mark.parametrize("method,path,body", ADMIN_ROUTES, ids=[f"{m} {p}" for m, p, _ in ADMIN_ROUTES])
def test_admin_routes_matrix(default_client, token_client, no_admin_client, method, path, body):
    for c, headers in ((default_client, None), (default_client, GOOD), (default_client, {"Authorization": "Bearer "}),
                       (token_client, None), (token_client, {"Authorization": "Bearer wrong"}),
                       (token_client, {"Authorization": TOKEN})):
        r = call(c, method, path, body, headers)
        assert r.status_code == 401, (method, path, headers, r.status_code, r.text)
        assert r.json()["error"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
    r = call(token_client, method, path, body, GOOD)
    assert r.status_code in (200, 404) and r.status_code < 500, r.text  # 404: GET/DELETE of an ad not there
    if method != "DELETE":
        assert r.status_code == 200 or path == "/v1/ads/a", r.text
    for headers in (None, GOOD):  # --no-admin: the route does not exist, token or not
        r = call(no_admin_client, method, path, body, headers)
        assert r.status_code in (404, 405) and r.json()["error"] in ("not_found", "method_not_allowed"), r.text
    assert path.split("{")[0] not in json.dumps(no_admin_client.get("/openapi.json").json()["paths"]) \
        or path == "/v1/models/dplr/reload"


@pytest.mark.parametrize("method,path,body", PUBLIC_ROUTES, ids=[f"{m} {p}" for m, p, _ in PUBLIC_ROUTES])
def test_public_routes_need_no_token(default_client, token_client, no_admin_client, method, path, body):
    for c in (default_client, token_client, no_admin_client):
        r = call(c, method, path, body)
        assert r.status_code == 200, (path, r.text)


def test_public_listing_reveals_no_file_paths(token_client, models):
    assert str(models) not in token_client.get("/v1/models").text


@pytest.mark.parametrize("path,status,code", [
    ("../outside.adrk", 403, "path_outside_model_dir"),
    ("sub/../../outside.adrk", 403, "path_outside_model_dir"),
    ("link-out.adrk", 403, "path_outside_model_dir"),  # a symlink out of the directory
    ("/etc/shadow", 403, "path_outside_model_dir"),
    ("/etc/passwd", 403, "path_outside_model_dir"),
    ("/nonexistent/file", 403, "path_outside_model_dir"),  # same answer: existence is never revealed
    ("dplr-v2.adrk\u0000.txt", 422, "invalid_path"),
    ("", 422, "invalid_request"),
    ("missing.adrk", 422, "not_found"),  # inside: the loader's own error
])
def test_reload_is_confined_to_the_model_directory(token_client, models, path, status, code):
    before = token_client.get("/v1/models").json()["models"][0]["version"]
    r = call(token_client, "POST", "/v1/models/dplr/reload", {"path": path}, GOOD)
    assert (r.status_code, r.json()["error"]) == (status, code), r.text
    assert "root:" not in r.text and "secret" not in r.text and "magic" not in r.text
    assert token_client.get("/v1/models").json()["models"][0]["version"] == before


def test_reload_inside_the_model_directory(token_client, models):
    for path in ("dplr-v2.adrk", str(models / "dplr.adrk"), "./dplr-v2.adrk"):
        r = call(token_client, "POST", "/v1/models/dplr/reload", {"path": path}, GOOD)
        assert r.status_code == 200, r.text
        assert r.json()["path"] == str((models / path).resolve())


def test_reload_without_a_model_directory_takes_no_path(models):
    with TestClient(app(models, ADRANK_ADMIN_TOKEN=TOKEN, ADRANK_MODEL_DIR="")) as c:
        r = call(c, "POST", "/v1/models/dplr/reload", {"path": str(models / "dplr-v2.adrk")}, GOOD)
        assert (r.status_code, r.json()["error"]) == (403, "no_model_dir"), r.text
        assert call(c, "POST", "/v1/models/dplr/reload", {}, GOOD).status_code == 200  # its own file again


@pytest.mark.parametrize("method,path,body", [ADMIN_ROUTES[0], ADMIN_ROUTES[2], PUBLIC_ROUTES[0]],
                         ids=["reload", "put-ads", "rank"])
def test_content_types(token_client, method, path, body):
    raw = json.dumps(body).encode()
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        r = token_client.request(method, path, content=raw, headers={**GOOD, "content-type": ctype})
        assert (r.status_code, r.json()["error"]) == (415, "unsupported_media_type"), (ctype, r.text)
    r = token_client.request(method, path, content=gzip.compress(raw),
                             headers={**GOOD, **JSON, "content-encoding": "gzip"})
    assert (r.status_code, r.json()["error"]) == (415, "unsupported_encoding"), r.text
    assert "gzip" in r.json()["message"]
    r = token_client.request(method, path, content=raw, headers={**GOOD, "content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200, r.text
    r = token_client.request(method, path, content=raw, headers=GOOD)  # no content type at all
    assert r.status_code == (200 if path == "/v1/rank" else 415), r.text


def test_all_ads_is_bounded(models):
    with TestClient(app(models, ADRANK_ADMIN_TOKEN=TOKEN, ADRANK_MAX_TOP_K="5")) as c:
        assert call(c, "PUT", "/v1/ads", {"ads": [{**AD, "id": f"ad-{i}"} for i in range(8)]}, GOOD).status_code == 200
        for extra in ({}, {"top_k": 6}, {"top_k": 1_000_000_000}):
            r = call(c, "POST", "/v1/rank", {"all_ads": True, **extra})
            assert r.status_code == 422 and r.json()["error"] in ("top_k_too_large", "invalid_request"), r.text
        r = call(c, "POST", "/v1/rank", {"all_ads": True, "top_k": 5})
        assert r.status_code == 200 and len(r.json()["ads"]) == 5


@pytest.mark.slow
def test_serve_generates_a_private_token_and_no_admin_removes_routes(tmp_path):
    path = tmp_path / "m.adrk"
    make_artifact(path)
    env = {**os.environ, "ADRANK_ADMIN_TOKEN": ""}  # none given: `adrank serve` makes one
    srv = Server([f"dplr={path}"], env)
    try:
        token_file = srv.state_dir / "admin-token"
        mode = stat.S_IMODE(token_file.stat().st_mode)
        token = token_file.read_text().strip()
        import httpx

        assert mode == 0o600 and len(token) >= 32
        assert httpx.get(srv.url + "/v1/state").status_code == 401
        assert httpx.get(srv.url + "/v1/state", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        r = httpx.put(srv.url + "/v1/ads", json={"ads": [AD]})
        assert r.status_code == 401
    finally:
        out = srv.stop()
    assert str(token_file) in out and token not in out  # the log names the file, never the secret
    with Server([f"dplr={path}", "--no-admin"], {**os.environ}) as srv:
        import httpx

        for method, route, body in ADMIN_ROUTES:
            r = httpx.request(method, srv.url + route, json=body, headers=GOOD)
            assert r.status_code in (404, 405), (route, r.text)
