"""Request and response shapes of the HTTP API, decoded/encoded with msgspec (not pydantic).

msgspec validates while it parses the raw body (DESIGN §7: about 2x the throughput of pydantic
models at N >= 100) and decodes ads straight into plain dicts (TypedDict), which is what
``Ranker.rank`` takes.  Two ad forms::

    {"id": "ad-1", "features": {"C14": "15706", "genres": ["Drama"]}}   by field name
    {"id": "ad-2", "values": ["15706", null, ...]}                    item-field order

Values are raw: strings, numbers, booleans, lists (multi-valued fields), ``null`` = missing.

Value ranking (issue 18): an ad may carry ``"bid"`` (its price per click; a catalog ad stored with
one uses it unless the request gives its own), and the request ``"rank_by": "ecpm"`` (order by
``bid x ctr x 1000``), ``"reserve"`` (drop ads whose eCPM is below it), ``"boost"`` (multipliers of
the ordering value by ad id) and ``"explain": true`` (per-field contributions, service/explain.py).
"""

from __future__ import annotations

from typing import Annotated, Literal, Required, TypedDict, Union

import msgspec

MAX_ID_CHARS = 256  # the longest ad id (service.catalog.store keeps the same limit)
MAX_TOP_K = 1_000_000  # the largest top_k of any request (an `all_ads` one: Settings.max_top_k)
INT64 = msgspec.Meta(ge=-(2**63), le=2**63 - 1)

Scalar = Union[str, int, float, bool, None]  # noqa: UP007 (msgspec reads the typing form)
Value = Union[str, int, float, bool, None, list[Scalar]]  # noqa: UP007
AdId = Union[Annotated[str, msgspec.Meta(max_length=MAX_ID_CHARS)],  # noqa: UP007
             Annotated[int, INT64]]
ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class Ad(TypedDict, total=False):
    """An ad of a /v1/rank request: ``{"id", "features"}``, ``{"id", "values"}`` or ``{"id"}`` (a
    catalog ad), each optionally with ``"bid"``."""

    id: Required[AdId]
    features: dict[str, Value]
    values: list[Value]
    bid: Annotated[float, msgspec.Meta(ge=0, description="price per click (eCPM = bid x ctr x 1000)",
                                       examples=[2.5])]


class RankRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A ranking request: `ads` (inline, or `{"id"}` alone for a catalog ad) or `all_ads`."""

    ads: list[Ad] | None = None  # an ad given as {"id"} alone comes from the catalog
    all_ads: bool = False  # rank the whole catalog instead of `ads` (service/catalog)
    context: dict[str, Value] = {}
    model: ModelName | None = None
    top_k: Annotated[int, msgspec.Meta(ge=1, le=MAX_TOP_K)] | None = None
    # one of the model's loaded versions (GET /v1/models); without it the traffic split chooses
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=128, examples=["3f2a9c1d0b7e"])] | None = None
    # a caller's stable key (user or session id): the split sends one key to one version
    routing_key: Annotated[str, msgspec.Meta(max_length=256, examples=["user-1234"])] | None = None
    rank_by: Annotated[Literal["ctr", "ecpm"], msgspec.Meta(
        description='"ctr" (default): by predicted click probability; "ecpm": by bid x ctr x 1000 '
                    '(an ad without a bid is worth 0)', examples=["ecpm"])] = "ctr"
    reserve: Annotated[float, msgspec.Meta(
        ge=0, description='drop ads whose eCPM is below this (needs rank_by "ecpm")', examples=[1.0])] | None = None
    boost: Annotated[dict[str, NonNegative], msgspec.Meta(
        description="multipliers of the ordering value (eCPM, or CTR) by ad id (integer ids as decimal text)",
        examples=[{"ad-7": 1.5}])] | None = None
    explain: Annotated[bool, msgspec.Meta(
        description='per returned ad (up to the server\'s cap) "logit" and "explain": {"bias", "fields"}, '
                    "the raw score's split by field (each pair's term shared evenly by its two fields)",
        examples=[True])] = False


class BatchRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /v1/rank:batch``: several auctions, each a /v1/rank request with its own context."""

    auctions: list[msgspec.Raw]


class ReloadRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A reload: `path` names a file inside the model directory (none: re-read the current file)."""

    path: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)] | None = None
    force: bool = False  # accept an artifact whose schema differs from the served one
    keep: bool = False  # load beside the current version instead of replacing it (canary, shadow)


class TrafficRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``PUT /v1/models/{name}/traffic``: weights by loaded version (normalised; ``{}``: the
    current version takes every unpinned request), an optional shadow version and the fraction of
    requests it scores after their reply is sent."""

    weights: Annotated[dict[Annotated[str, msgspec.Meta(max_length=128)], Annotated[float, msgspec.Meta(ge=0)]],
                       msgspec.Meta(examples=[{"3f2a9c1d0b7e": 95, "a81c44e2d9f0": 5}])] = {}
    shadow: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    shadow_fraction: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None

    def to_dict(self) -> dict:
        out: dict = {"weights": dict(self.weights), "shadow": self.shadow}
        if self.shadow_fraction is not None:
            out["shadow_fraction"] = self.shadow_fraction
        return out


class VersionInfo(msgspec.Struct, kw_only=True):
    """One loaded version of a model name (``GET /v1/models``, the traffic routes)."""

    version: Annotated[str, msgspec.Meta(examples=["3f2a9c1d0b7e"])]
    current: bool  # answers requests that neither pin a version nor fall under a split
    loaded_at: float = 0.0


class TrafficSetting(msgspec.Struct, kw_only=True):
    """A model name's split as applied: weights by version, the shadow version and its fraction."""

    weights: Annotated[dict[str, float], msgspec.Meta(examples=[{"3f2a9c1d0b7e": 95.0, "a81c44e2d9f0": 5.0}])]
    shadow: str | None = None
    shadow_fraction: float = 0.0


class TrafficReply(msgspec.Struct, kw_only=True):
    """``GET`` / ``PUT /v1/models/{name}/traffic``."""

    model: Annotated[str, msgspec.Meta(examples=["dplr"])]
    current_version: str
    versions: list[VersionInfo]
    traffic: TrafficSetting | None  # null: the current version answers every unpinned request
    position: int  # the replication-log position this reply reflects


# --- replies (the OpenAPI document's response schemas, service/openapi.py; adrank.client mirrors them)
class Explanation(msgspec.Struct):
    """The raw score (``logit``) of one ad split into the bias and one value per field: the field's
    first-order term plus half of each of its pairwise interaction terms; the values sum to it."""

    bias: float
    fields: dict[str, float]


class RankedAd(msgspec.Struct, omit_defaults=True):
    """One ad of a /v1/rank reply (best first)."""

    id: str | int
    score: float  # the predicted CTR (click models) or the rating (regression), as before issue 18
    ctr: float | None = None  # click models: the predicted CTR (service/link.py, calibrated if the model is)
    ecpm: float | None = None  # rank_by "ecpm": bid x ctr x 1000
    logit: float | None = None  # explain: the raw score
    explain: Explanation | None = None  # explain: its split by field (up to the server's cap of ads)


class RankResponse(msgspec.Struct):
    """The candidates, best first, with the scores of the model version named."""

    model: str
    version: str
    ads: list[RankedAd]


class BatchReply(msgspec.Struct):
    results: list[RankResponse]  # one per auction, in order


class ErrorReply(msgspec.Struct):
    """Every refusal: a stable `error` code and a `message` naming the problem."""

    error: str
    message: str
    field: str | None = None
    model: str | None = None
    version: str | None = None


class FieldInfo(msgspec.Struct):
    name: str
    type: str
    role: str


class ModelInfo(msgspec.Struct):
    name: str
    version: str
    kind: str
    rank: int | None
    embedding: str
    size_bytes: int
    fields: list[FieldInfo]
    loaded_at: float
    default: bool
    calibration: dict | None = None  # the artifact's calibration map (method, parameters, where fitted)
    versions: list[VersionInfo] = []  # every loaded version, the current one first
    traffic: TrafficSetting | None = None  # the name's split, null: the current version takes all


class ModelsResponse(msgspec.Struct):
    default: str
    worker: int
    models: list[ModelInfo]


class ReloadResponse(msgspec.Struct):
    model: str
    version: str  # the version loaded
    previous_version: str
    current_version: str  # the one answering unpinned requests (the loaded one unless kept beside)
    kept: bool
    versions: list[str]
    path: str
    position: int


class RetireResponse(msgspec.Struct):
    model: str
    retired: str
    versions: list[str]
    position: int


class CatalogAd(msgspec.Struct, forbid_unknown_fields=True):
    id: AdId
    features: dict[str, Value]
    bid: Annotated[float, msgspec.Meta(ge=0, description="price per click, stored with the ad")] | None = None


class UpsertRequest(msgspec.Struct, forbid_unknown_fields=True):
    ads: list[CatalogAd]


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


class AdResponse(msgspec.Struct):
    id: str
    features: dict[str, Value]
    bid: float | None
    version: int


class BidsRequest(msgspec.Struct, forbid_unknown_fields=True):
    """New bids of catalog ads by id (``null``: the ad has no bid any more)."""

    bids: dict[Annotated[str, msgspec.Meta(max_length=MAX_ID_CHARS)],
               Annotated[float, msgspec.Meta(ge=0)] | None]


class BidsResponse(msgspec.Struct):
    updated: int
    size: int
    version: int
    position: int


class BadRequest(ValueError):
    """The body is not valid JSON or does not match the schema; the message says where."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


_rank_decoder = msgspec.json.Decoder(RankRequest)
_reload_decoder = msgspec.json.Decoder(ReloadRequest)
_traffic_decoder = msgspec.json.Decoder(TrafficRequest)
_encoder = msgspec.json.Encoder()


def _decode(decoder: msgspec.json.Decoder, body: bytes):
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise BadRequest("invalid_request", _name_dict_key(str(exc), body)) from None
    except msgspec.DecodeError as exc:
        raise BadRequest("invalid_json", f"malformed JSON: {exc}") from None
    except RecursionError:  # the prescan (service/bounds.py) refuses deep bodies first; this is the backstop
        raise BadRequest("too_deep", "JSON nested too deeply") from None


def decode_rank(body: bytes) -> RankRequest:
    return _decode(_rank_decoder, body)


def decode_reload(body: bytes) -> ReloadRequest:
    return _decode(_reload_decoder, body) if body.strip() else ReloadRequest()


def decode_traffic(body: bytes) -> TrafficRequest:
    return _decode(_traffic_decoder, body) if body.strip() else TrafficRequest()


def _name_dict_key(message: str, body: bytes) -> str:
    """msgspec reports a bad dict value as ``$.context[...]``; put the offending key there.

    Only runs on the error path: the body is re-read untyped to find the first bad value.
    """
    if "[...]" not in message or " - at `" not in message:
        return message
    path = message.rsplit(" - at `", 1)[1]
    try:
        node = msgspec.json.decode(body)
        for part in path[1 : path.index("[...]")].replace("[", ".").replace("]", "").split("."):
            if part:
                node = node[int(part)] if isinstance(node, list) else node[part]
        for key, value in node.items():
            if isinstance(value, dict) or (isinstance(value, list)
                                          and any(isinstance(x, (dict, list)) for x in value)):
                return message.replace("[...]", f"[{key!r}]", 1) + f": field {key!r} has a bad value"
    except (msgspec.DecodeError, KeyError, IndexError, ValueError, TypeError, AttributeError, RecursionError):
        pass
    return message


def encode_ranking(model: str, version: str, ranked: list[tuple[str, float]], binary: bool = False,
                   ecpm: list | None = None, logit: list | None = None, explain: list | None = None) -> bytes:
    """The /v1/rank response body: {"model", "version", "ads": [{"id", "score", "ctr"?, "ecpm"?,
    "logit"?, "explain"?}, ...]}: ``ctr`` (= score) for click models (``binary``), ``ecpm`` when
    ranking by value, ``logit`` with explanations, ``explain`` for the first len(explain) ads."""
    ads = []
    for j, (i, s) in enumerate(ranked):
        ad = {"id": i, "score": s}
        if binary:
            ad["ctr"] = s
        if ecpm is not None:
            ad["ecpm"] = ecpm[j]
        if logit is not None:
            ad["logit"] = logit[j]
        if explain is not None and j < len(explain):
            ad["explain"] = explain[j]
        ads.append(ad)
    return _encoder.encode({"model": model, "version": version, "ads": ads})


def encode(obj) -> bytes:
    return _encoder.encode(obj)
