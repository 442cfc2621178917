"""What the replication log holds: entries, their codec and the compaction rule (shared by the
engines in sqlite.py and redis.py; the package's ``__init__`` has the interface)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import msgspec

UPSERT, DELETE, LOAD, BIDS = "ads.upsert", "ads.delete", "model.load", "ads.bids"
RETIRE, TRAFFIC = "model.retire", "model.traffic"  # unload a version kept beside; set a name's split
COMPACT_ADS = 2_000  # ads folded per compaction transaction: the engine's write lock (and the GIL) briefly
KINDS = (UPSERT, DELETE, LOAD, BIDS, RETIRE, TRAFFIC)
_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


class LogError(RuntimeError):
    """The log cannot be opened, read or written (the message names the engine and the cause)."""


@dataclass(frozen=True)
class Entry:
    """One log entry: ``data`` is the decoded payload, or None when ``error`` says why it is unusable."""

    pos: int
    kind: str
    data: dict | None
    error: str | None = None


@dataclass
class State:
    """What the snapshot holds: ads (id -> features JSON bytes), model paths, the start-up intent."""

    pos: int = 0
    ads: dict[str, bytes] = field(default_factory=dict)
    models: dict[str, dict] = field(default_factory=dict)
    # name -> {"path", "version" (the current version), "kept": {version: path}, "traffic": {...}}
    boot: dict | None = None


def checksum(kind: str, body: bytes) -> int:
    return zlib.crc32(body, zlib.crc32(kind.encode()))


def encode(kind: str, data: dict) -> tuple[str, bytes, int]:
    """(kind, body, crc) of an entry to append."""
    if kind not in KINDS:
        raise ValueError(f"unknown log entry kind {kind!r}")
    body = _encoder.encode(data)
    return kind, body, checksum(kind, body)


def decode(pos: int, kind, body, crc) -> Entry:
    """An entry read back; a bad checksum, an unknown kind or a body that is not a JSON object is
    an entry with ``error`` set (skipped and reported by whoever applies the log)."""
    if not isinstance(kind, str) or not isinstance(body, bytes | bytearray | memoryview):
        return Entry(pos, str(kind), None, "malformed entry")
    body = bytes(body)
    try:
        if int(crc) != checksum(kind, body):
            return Entry(pos, kind, None, "checksum mismatch")
    except (TypeError, ValueError):
        return Entry(pos, kind, None, "malformed checksum")
    if kind not in KINDS:
        return Entry(pos, kind, None, f"unknown kind {kind!r}")
    try:
        data = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        return Entry(pos, kind, None, f"undecodable body: {exc}")
    if not isinstance(data, dict):
        return Entry(pos, kind, None, "body is not a JSON object")
    return Entry(pos, kind, data)


def stored(features: dict, bid=None) -> bytes:
    """A snapshot's record of one ad: its features JSON object, or ``[features, bid]`` for an ad
    with a bid (``service.catalog.store.build`` reads both)."""
    return _encoder.encode(features if bid is None else [features, bid])


def changes(entries: list[Entry], models: dict) -> dict[str, bytes | None]:
    """The compaction rule, shared by the engines: what ``entries`` do to a snapshot, in order.
    Returns id -> the ad's record (:func:`stored`: upserted, or its bid set) or None (deleted);
    model loads update ``models`` in place.  Corrupt entries were skipped by every server, so they
    are dropped here too.  A bids-only entry carries the ads' features, so that its record is whole."""
    out: dict[str, bytes | None] = {}
    for e in entries:
        if e.data is None:
            continue
        try:
            if e.kind == UPSERT:
                for ad in e.data["ads"]:
                    out[str(ad["id"])] = stored(ad.get("features") or {}, ad.get("bid"))
            elif e.kind == BIDS:
                feats = e.data["features"]
                for ad_id, bid in e.data["bids"].items():
                    out[str(ad_id)] = stored(feats[ad_id], bid)
            elif e.kind == DELETE:
                for ad_id in e.data["ids"]:
                    out[str(ad_id)] = None
            elif e.kind == LOAD:
                m = models.setdefault(e.data["name"], {})
                kept = dict(m.get("kept") or {})
                if e.data.get("keep"):  # loaded beside the current version
                    kept[str(e.data.get("version"))] = e.data["path"]
                else:
                    kept.pop(str(e.data.get("version")), None)
                    m.update(path=e.data["path"], version=e.data.get("version"))
                m.pop("kept", None)
                if kept:
                    m["kept"] = kept
            elif e.kind == RETIRE:
                m = models.setdefault(e.data["name"], {})
                kept = {v: p for v, p in (m.pop("kept", None) or {}).items() if v != e.data["version"]}
                if kept:
                    m["kept"] = kept
            elif e.kind == TRAFFIC:
                models.setdefault(e.data["name"], {})["traffic"] = e.data["traffic"]
        except (KeyError, TypeError, AttributeError):
            continue  # a well-formed JSON body of the wrong shape: skipped like any corrupt entry
    return out


def fold(state: State, entries: list[Entry]) -> State:
    """Apply entries to a snapshot state in memory (in place; returns it)."""
    for ad_id, feats in changes(entries, state.models).items():
        if feats is None:
            state.ads.pop(ad_id, None)
        else:
            state.ads[ad_id] = feats
    if entries:
        state.pos = max(state.pos, entries[-1].pos)
    return state


