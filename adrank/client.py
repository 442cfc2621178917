"""A thin typed client of the adrank HTTP API, sync and async, over keep-alive connections.

    from adrank.client import Client
    with Client("http://127.0.0.1:8000") as c:
        reply = c.rank(ads=[{"id": "ad-1", "features": {"C14": "15706"}}], context={"C1": "1005"})
        best = reply.ads[0].id, reply.ads[0].score

Needs only httpx and msgspec (no numpy, no service code: import-linter's ``client`` contract), so
an exchange's bidder can install it alone.  Replies decode into the typed structs below, which
mirror the server's OpenAPI document (service/openapi.py; tests/test_client.py checks that they
describe the same JSON).  Every refusal raises :class:`AdrankError` with the status, the service's
error code and message, and Retry-After when the server is shedding.
"""

from __future__ import annotations

from typing import Any

import httpx
import msgspec

__all__ = ["AdrankError", "AsyncClient", "Client", "Explanation", "ModelInfo", "ModelsResponse", "RankResponse", "RankedAd",
           "ReloadResponse", "UpsertResponse"]


class Explanation(msgspec.Struct):
    bias: float
    fields: dict[str, float]


class RankedAd(msgspec.Struct, omit_defaults=True):
    id: str | int
    score: float
    ctr: float | None = None
    ecpm: float | None = None
    logit: float | None = None
    explain: Explanation | None = None


class RankResponse(msgspec.Struct):
    model: str
    version: str
    ads: list[RankedAd]


class ModelInfo(msgspec.Struct):
    name: str
    version: str
    kind: str
    default: bool


class ModelsResponse(msgspec.Struct):
    default: str
    worker: int
    models: list[ModelInfo]


class ReloadResponse(msgspec.Struct):
    model: str
    version: str
    previous_version: str
    current_version: str
    kept: bool
    versions: list[str]
    path: str
    position: int


class UpsertResponse(msgspec.Struct):
    upserted: int
    size: int
    version: int
    position: int


class DeleteResponse(msgspec.Struct):
    deleted: str
    size: int
    version: int
    position: int


class ErrorReply(msgspec.Struct):
    error: str
    message: str


class AdrankError(Exception):
    """A non-2xx reply: ``status``, the service's ``code`` and ``message``, ``retry_after`` (s)."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None,
                 request_id: str | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.retry_after, self.request_id = retry_after, request_id


_encoder = msgspec.json.Encoder()
_JSON = {"content-type": "application/json"}


def _rank_body(ads, context, model, top_k, all_ads, options: dict) -> bytes:
    """``options``: the value-ranking fields of /v1/rank (rank_by, reserve, boost, explain) as given."""
    body: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    if model is not None:
        body["model"] = model
    if context:
        body["context"] = context
    if all_ads:
        body["all_ads"] = True
    else:
        body["ads"] = list(ads or [])
    if top_k is not None:
        body["top_k"] = top_k
    return _encoder.encode(body)


def _decode(response: httpx.Response, kind: type):
    if response.status_code >= 400:
        try:
            err = msgspec.json.decode(response.content, type=ErrorReply)
            code, message = err.error, err.message
        except (msgspec.DecodeError, msgspec.ValidationError):
            code, message = "http_error", response.text[:200]
        ra = response.headers.get("retry-after")
        raise AdrankError(response.status_code, code, message, float(ra) if ra and ra.isdigit() else None,
                          response.headers.get("x-request-id"))
    return msgspec.json.decode(response.content, type=kind)


def _headers(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


def _rid(request_id: str | None) -> dict[str, str]:
    return {"x-request-id": request_id} if request_id else {}


class Client:
    """Synchronous client; one keep-alive connection pool.  ``token``: the admin token (reload,
    catalog writes); ``transport``: an httpx transport (tests)."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 5.0, transport=None):
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=_headers(token), transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def rank(self, ads: list | None = None, context: dict | None = None, model: str | None = None,
             top_k: int | None = None, all_ads: bool = False, request_id: str | None = None,
             **options: Any) -> RankResponse:
        r = self._http.post("/v1/rank", content=_rank_body(ads, context, model, top_k, all_ads, options),
                            headers={**_JSON, **_rid(request_id)})
        return _decode(r, RankResponse)

    def rank_raw(self, body: bytes, request_id: str | None = None) -> RankResponse:
        """A pre-encoded /v1/rank body (the load test's pool)."""
        return _decode(self._http.post("/v1/rank", content=body, headers={**_JSON, **_rid(request_id)}),
                       RankResponse)

    def models(self) -> ModelsResponse:
        return _decode(self._http.get("/v1/models"), ModelsResponse)

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def metrics(self) -> str:
        r = self._http.get("/metrics")
        if r.status_code != 200:
            _decode(r, dict)
        return r.text

    def reload(self, model: str, path: str | None = None, force: bool = False,
               keep: bool = False) -> ReloadResponse:
        """``keep``: load it beside the current version (a canary or shadow candidate)."""
        body = _encoder.encode({"path": path, "force": force, "keep": keep})
        return _decode(self._http.post(f"/v1/models/{model}/reload", content=body, headers=_JSON), ReloadResponse)

    def upsert(self, ads: list[dict]) -> UpsertResponse:
        return _decode(self._http.put("/v1/ads", content=_encoder.encode({"ads": ads}), headers=_JSON),
                       UpsertResponse)

    def delete(self, ad_id: str) -> DeleteResponse:
        return _decode(self._http.delete(f"/v1/ads/{ad_id}"), DeleteResponse)


class AsyncClient:
    """:class:`Client` for asyncio (``async with AsyncClient(url) as c: await c.rank(...)``)."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 5.0, transport=None,
                 max_connections: int = 100):
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=_headers(token), transport=transport,
                                       limits=httpx.Limits(max_connections=max_connections))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def rank(self, ads: list | None = None, context: dict | None = None, model: str | None = None,
                   top_k: int | None = None, all_ads: bool = False, request_id: str | None = None,
                   **options: Any) -> RankResponse:
        r = await self._http.post("/v1/rank", content=_rank_body(ads, context, model, top_k, all_ads, options),
                                  headers={**_JSON, **_rid(request_id)})
        return _decode(r, RankResponse)

    async def rank_raw(self, body: bytes, request_id: str | None = None) -> RankResponse:
        return _decode(await self._http.post("/v1/rank", content=body, headers={**_JSON, **_rid(request_id)}),
                       RankResponse)

    async def models(self) -> ModelsResponse:
        return _decode(await self._http.get("/v1/models"), ModelsResponse)

    async def ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def reload(self, model: str, path: str | None = None, force: bool = False,
                     keep: bool = False) -> ReloadResponse:
        """``keep``: load it beside the current version (a canary or shadow candidate)."""
        body = _encoder.encode({"path": path, "force": force, "keep": keep})
        return _decode(await self._http.post(f"/v1/models/{model}/reload", content=body, headers=_JSON),
                       ReloadResponse)

    async def upsert(self, ads: list[dict]) -> UpsertResponse:
        return _decode(await self._http.put("/v1/ads", content=_encoder.encode({"ads": ads}), headers=_JSON),
                       UpsertResponse)

    async def delete(self, ad_id: str) -> DeleteResponse:
        return _decode(await self._http.delete(f"/v1/ads/{ad_id}"), DeleteResponse)
