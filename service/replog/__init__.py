"""The replication log: every acknowledged state change of the service, in one order.

State changes — catalog upserts and deletes, model loads and reloads, start-up intents — are
appended here *before* a server applies them, and every server process (the uvicorn workers of
one host, or the replicas of a fleet) applies the same entries in the same order.  A write is
acknowledged only once the engine has committed it, so it survives kill -9 and restart.

Two engines behind one small interface (:class:`ReplicationLog`):

* ``sqlite``: embedded SQLite (stdlib, WAL, ``synchronous=FULL``) in the state directory — the
  default, for the workers of one host (sqlite.py);
* ``redis``: a Redis stream plus a snapshot hash, shared by a fleet of replicas (redis.py).

Each keeps a *snapshot* (ads by id, served model paths, the last start-up intent) and the entries
after it; ``compact`` folds the oldest entries into the snapshot and drops them, so a new process
reads the snapshot and a short tail instead of the whole history.  Entries carry a CRC32: one that
does not decode is returned with ``error`` set, and the caller skips and reports it — a torn or
corrupt entry is never fatal.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import msgspec

UPSERT, DELETE, LOAD = "ads.upsert", "ads.delete", "model.load"
COMPACT_ADS = 2_000  # ads folded per compaction transaction: the engine's write lock (and the GIL) briefly
KINDS = (UPSERT, DELETE, LOAD)
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
    models: dict[str, dict] = field(default_factory=dict)  # name -> {"path", "version"}
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


def changes(entries: list[Entry], models: dict) -> dict[str, bytes | None]:
    """The compaction rule, shared by the engines: what ``entries`` do to a snapshot, in order.
    Returns id -> features JSON (upserted) or None (deleted); model loads update ``models`` in
    place.  Corrupt entries were skipped by every server, so they are dropped here too."""
    out: dict[str, bytes | None] = {}
    for e in entries:
        if e.data is None:
            continue
        try:
            if e.kind == UPSERT:
                for ad in e.data["ads"]:
                    out[str(ad["id"])] = _encoder.encode(ad.get("features") or {})
            elif e.kind == DELETE:
                for ad_id in e.data["ids"]:
                    out[str(ad_id)] = None
            elif e.kind == LOAD:
                models[e.data["name"]] = {"path": e.data["path"], "version": e.data.get("version")}
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


class ReplicationLog(Protocol):
    """The engine interface (sqlite.py, redis.py)."""

    name: str

    def append(self, entries: list[tuple[str, dict]], boot: tuple[dict | None, dict] | None = None) -> list[int] | None:
        """Commit entries (all or none) and return their positions.  With ``boot=(expected, new)``
        the start-up intent is replaced by ``new`` in the same commit, only if it is still
        ``expected`` (else nothing is written and None is returned)."""

    def read(self, after: int, limit: int = 1000, block: float = 0.0) -> list[Entry]:
        """Entries after position ``after``, oldest first; with ``block`` wait up to that many
        seconds for one when there is none yet."""

    def head(self) -> int:
        """The position of the last entry committed (0 when none ever was)."""

    def snapshot(self) -> tuple[State, Iterator[tuple[str, bytes]] | None]:
        """A consistent snapshot: its state without ads, and an iterator over its ads (read it to
        the end: SQLite holds a read transaction until then)."""

    def meta(self) -> State:
        """The snapshot's state without its ads (cheap)."""

    def compact(self, max_entries: int = 1000) -> int:
        """Fold up to ``max_entries`` of the oldest entries into the snapshot; returns how many."""

    def backlog(self) -> int:
        """Entries not yet folded into the snapshot."""

    def close(self) -> None: ...


def open_log(url: str | None, state_dir: str | Path | None, key: str = "adrank", poll: float = 0.05
             ) -> ReplicationLog:
    """``url`` ``redis://HOST:PORT/DB`` (a fleet's shared log, keys prefixed ``key``), else SQLite in
    ``state_dir`` (``state.db``), else an in-memory SQLite log (one process, nothing survives it)."""
    if url and url.startswith(("redis://", "rediss://", "unix://")):
        from service.replog.redis import RedisLog

        return RedisLog(url, key)
    if url and url not in ("sqlite", ""):
        raise LogError(f"ADRANK_LOG={url!r}: expected 'sqlite' or a redis:// URL")
    from service.replog.sqlite import SqliteLog

    return SqliteLog(Path(state_dir) / "state.db" if state_dir else None, poll=poll)
