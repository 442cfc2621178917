"""The OpenAPI document, built from the msgspec types the server decodes and encodes with
(service/schemas.py) by ``msgspec.json.schema_components``: a field added to a request or reply
type appears here with no other change.  Every status a route can answer is listed with the
shared error envelope; admin routes declare the bearer scheme.

``/v1/rank`` is answered before FastAPI's router (service/app.py), so FastAPI's own generator
never sees it; the document is therefore written here for every route, not inferred.
"""

from __future__ import annotations

from typing import Any

import msgspec

from service import schemas

REF = "#/components/schemas/{name}"
TYPES = (schemas.RankRequest, schemas.RankResponse, schemas.ErrorReply, schemas.ReloadRequest,
         schemas.ReloadResponse, schemas.ModelsResponse, schemas.UpsertRequest, schemas.UpsertResponse,
         schemas.DeleteResponse, schemas.AdResponse, schemas.BatchReply, schemas.BidsRequest,
         schemas.BidsResponse, schemas.TrafficRequest, schemas.TrafficReply, schemas.RetireResponse)
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "string"}}}
REQUEST_ID = {"x-request-id": {"description": "the request's id (the client's, or one made by the server)",
                               "schema": {"type": "string"}}}
ERRORS = {
    400: "a malformed HTTP request",
    401: "the admin token is missing or wrong",
    403: "the path is outside the model directory, or no model directory is configured",
    404: "unknown model, ad or route",
    405: "method not allowed on this route",
    408: "the headers or body did not arrive in time",
    409: "a reload is already running, or the new artifact's schema differs (give force)",
    413: "the body is over the size limit",
    415: "the body is not application/json, or is compressed",
    422: "the body is not valid: the message names the field and the problem",
    503: "not ready, draining, overloaded (shed by the queue budget) or the log is unavailable: retry later",
}
RANK_EXAMPLE = {"model": "dplr", "top_k": 2, "context": {"C1": "c1-0", "I1": 3},
                "ads": [{"id": "ad-1", "features": {"C14": "c14-1"}}, {"id": "ad-2", "values": ["c14-2", None]},
                        {"id": "catalog-ad-7"}]}


def _ref(t) -> dict:
    return {"$ref": REF.format(name=t.__name__)}


def _json(schema: dict, example: Any = None) -> dict:
    body: dict = {"schema": schema}
    if example is not None:
        body["example"] = example
    return {"application/json": body}


def _responses(ok: dict | None, codes: tuple[int, ...], ok_headers: dict | None = None) -> dict:
    out: dict = {}
    if ok is not None:
        out["200"] = {"description": "OK", "content": _json(ok), "headers": {**REQUEST_ID, **(ok_headers or {})}}
    for code in codes:
        r: dict = {"description": ERRORS[code], "content": _json(_ref(schemas.ErrorReply))}
        if code == 503:
            r["headers"] = dict(RETRY_AFTER)
        if code == 401:
            r["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        out[str(code)] = r
    return out


def _body(t, required: bool = True, example: Any = None) -> dict:
    return {"required": required, "content": _json(_ref(t), example)}


ADMIN: list[dict] = [{"bearer": []}]
AD_ID = {"name": "ad_id", "in": "path", "required": True,
         "schema": {"type": "string", "minLength": 1, "maxLength": schemas.MAX_ID_CHARS}}


def document(admin: bool, version: str = "1") -> dict:
    """The whole document; ``admin`` False (``--no-admin``) leaves the admin routes out."""
    _, components = msgspec.json.schema_components(TYPES, ref_template=REF)
    text = {"text/plain": {"schema": {"type": "string"}}}
    paths: dict = {
        "/v1/rank": {"post": {
            "operationId": "rank", "summary": "Rank candidate ads for one request",
            "parameters": [{"name": "x-request-id", "in": "header", "required": False,
                            "schema": {"type": "string", "maxLength": 128}}],
            "requestBody": _body(schemas.RankRequest, example=RANK_EXAMPLE),
            "responses": _responses(_ref(schemas.RankResponse), (404, 408, 413, 415, 422, 503))}},
        "/v1/rank:batch": {"post": {
            "operationId": "rank_batch", "summary": "Rank several auctions against one snapshot",
            "requestBody": {"required": True, "content": _json(
                {"type": "object", "required": ["auctions"], "additionalProperties": False,
                 "properties": {"auctions": {"type": "array", "items": _ref(schemas.RankRequest)}}},
                {"auctions": [RANK_EXAMPLE]})},
            "responses": _responses(_ref(schemas.BatchReply), (404, 413, 415, 422, 503))}},
        "/v1/models": {"get": {"operationId": "models", "summary": "The served models and their versions",
                               "responses": _responses(_ref(schemas.ModelsResponse), ())}},
        "/livez": {"get": {"operationId": "livez", "summary": "The process answers",
                           "responses": _responses({"type": "object"}, ())}},
        "/readyz": {"get": {"operationId": "readyz", "summary": "Every model loaded and warm; not draining",
                            "responses": _responses({"type": "object"}, (503,))}},
        "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus exposition",
                             "responses": {"200": {"description": "OK", "content": text}}}},
    }
    if admin:
        name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
        paths["/v1/models/{name}/reload"] = {"post": {
            "operationId": "reload", "summary": "Load a new version of a model (from inside the model directory)",
            "security": ADMIN, "parameters": [name],
            "requestBody": _body(schemas.ReloadRequest, required=False, example={"path": "dplr-v2.adrk"}),
            "responses": _responses(_ref(schemas.ReloadResponse), (401, 403, 404, 409, 413, 415, 422, 503))}}
        version_param = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
        paths["/v1/models/{name}/versions/{version}"] = {"delete": {
            "operationId": "retire_version", "summary": "Unload a version kept beside the current one",
            "security": ADMIN, "parameters": [name, version_param],
            "responses": _responses(_ref(schemas.RetireResponse), (401, 404, 409, 503))}}
        paths["/v1/models/{name}/traffic"] = {
            "get": {"operationId": "get_traffic", "summary": "A model name's traffic split and shadow",
                    "security": ADMIN, "parameters": [name],
                    "responses": _responses(_ref(schemas.TrafficReply), (401, 404))},
            "put": {"operationId": "set_traffic", "summary": "Set (or clear with {}) the split and the shadow",
                    "security": ADMIN, "parameters": [name],
                    "requestBody": _body(schemas.TrafficRequest, example={
                        "weights": {"3f2a9c1d0b7e": 95, "a81c44e2d9f0": 5}, "shadow": None}),
                    "responses": _responses(_ref(schemas.TrafficReply), (401, 404, 409, 413, 415, 422, 503))}}
        paths["/v1/state"] = {"get": {"operationId": "state", "summary": "Replication log, snapshot and catalog",
                                      "security": ADMIN, "responses": _responses({"type": "object"}, (401,))}}
        paths["/v1/ads"] = {"put": {
            "operationId": "upsert_ads", "summary": "Insert or replace catalog ads", "security": ADMIN,
            "requestBody": _body(schemas.UpsertRequest, example={"ads": [{"id": "ad-7", "features": {"C14": "x"}}]}),
            "responses": _responses(_ref(schemas.UpsertResponse), (401, 404, 413, 415, 422, 503))}}
        paths["/v1/ads/bids"] = {"put": {
            "operationId": "set_bids", "summary": "New bids of catalog ads (features untouched)", "security": ADMIN,
            "requestBody": _body(schemas.BidsRequest, example={"bids": {"ad-7": 2.5, "ad-9": None}}),
            "responses": _responses(_ref(schemas.BidsResponse), (401, 404, 413, 415, 422, 503))}}
        paths["/v1/ads/{ad_id}"] = {
            "get": {"operationId": "get_ad", "summary": "One catalog ad", "security": ADMIN, "parameters": [AD_ID],
                    "responses": _responses(_ref(schemas.AdResponse), (401, 404, 422))},
            "delete": {"operationId": "delete_ad", "summary": "Delete a catalog ad", "security": ADMIN,
                       "parameters": [AD_ID], "responses": _responses(_ref(schemas.DeleteResponse),
                                                                      (401, 404, 422, 503))}}
    for ops in paths.values():
        for op in ops.values():
            op["responses"].setdefault("405", {"description": ERRORS[405],
                                               "content": _json(_ref(schemas.ErrorReply))})
    return {"openapi": "3.1.0",
            "info": {"title": "adrank", "version": version,
                     "description": "Low-latency ad ranking. Every error is {\"error\": code, \"message\": ...}."},
            "paths": paths,
            "components": {"schemas": components,
                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}}
