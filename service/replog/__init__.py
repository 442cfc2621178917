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

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from service.replog.entries import (
    BIDS,
    COMPACT_ADS,
    DELETE,
    KINDS,
    LOAD,
    RETIRE,
    TRAFFIC,
    UPSERT,
    Entry,
    LogError,
    State,
    changes,
    checksum,
    decode,
    encode,
    fold,
)

__all__ = ["BIDS", "COMPACT_ADS", "DELETE", "KINDS", "LOAD", "RETIRE", "TRAFFIC", "UPSERT", "Entry", "LogError",
           "ReplicationLog", "State", "changes", "checksum", "decode", "encode", "fold", "open_log"]


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

    def compact(self, max_entries: int = 1000, max_ads: int = COMPACT_ADS) -> int:
        """Fold up to ``max_entries`` of the oldest entries (about ``max_ads`` ads, at least one
        entry) into the snapshot; returns how many."""

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
