"""Request and response shapes of the HTTP API, decoded/encoded with msgspec (not pydantic).

msgspec validates while it parses the raw body (DESIGN §7: about 2x the throughput of pydantic
models at N >= 100) and decodes ads straight into plain dicts (TypedDict), which is what
``Ranker.rank`` takes.  Two ad forms::

    {"id": "ad-1", "features": {"C14": "15706", "genres": ["Drama"]}}   by field name
    {"id": "ad-2", "values": ["15706", null, ...]}                    item-field order

Values are raw: strings, numbers, booleans, lists (multi-valued fields), ``null`` = missing.
"""

from __future__ import annotations

from typing import Annotated, Required, TypedDict, Union

import msgspec

Scalar = Union[str, int, float, bool, None]  # noqa: UP007 (msgspec reads the typing form)
Value = Union[str, int, float, bool, None, list[Scalar]]  # noqa: UP007


class Ad(TypedDict, total=False):
    id: Required[str | int]
    features: dict[str, Value]
    values: list[Value]


class RankRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    ads: list[Ad] | None = None  # an ad given as {"id"} alone comes from the catalog
    all_ads: bool = False  # rank the whole catalog instead of `ads` (service/catalog)
    context: dict[str, Value] = {}
    model: str | None = None
    top_k: Annotated[int, msgspec.Meta(ge=1)] | None = None
    # one of the model's loaded versions (GET /v1/models); without it the traffic split chooses
    version: Annotated[str, msgspec.Meta(min_length=1, max_length=128, examples=["3f2a9c1d0b7e"])] | None = None
    # a caller's stable key (user or session id): the split sends one key to one version
    routing_key: Annotated[str, msgspec.Meta(max_length=256, examples=["user-1234"])] | None = None


class ReloadRequest(msgspec.Struct, forbid_unknown_fields=True):
    path: str | None = None
    force: bool = False  # accept an artifact whose schema differs from the served one
    keep: bool = False  # load beside the current version instead of replacing it (canary, shadow)


class TrafficRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``PUT /v1/models/{name}/traffic``: weights by loaded version (normalised; ``{}``: the
    current version takes every unpinned request), an optional shadow version and the fraction of
    requests it scores after their reply is sent."""

    weights: Annotated[dict[str, float], msgspec.Meta(examples=[{"3f2a9c1d0b7e": 95, "a81c44e2d9f0": 5}])] = {}
    shadow: str | None = None
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
    path: str | None = None
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
    except (msgspec.DecodeError, KeyError, IndexError, ValueError, TypeError, AttributeError):
        pass
    return message


def encode_ranking(model: str, version: str, ranked: list[tuple[str, float]]) -> bytes:
    """The /v1/rank response body: {"model", "version", "ads": [{"id", "score"}, ...]}."""
    return _encoder.encode({"model": model, "version": version,
                            "ads": [{"id": i, "score": s} for i, s in ranked]})


def encode(obj) -> bytes:
    return _encoder.encode(obj)
