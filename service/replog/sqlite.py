"""The SQLite engine: the durable default for the server processes of one host.

One database file, ``STATE_DIR/state.db``, in WAL mode with ``synchronous=FULL``: ``append``
returns only after the commit is on disk, so an acknowledged write survives kill -9 and power
loss, and a write killed half-way was never committed (SQLite ignores an incomplete WAL frame
on the next open).  Tables::

    log(pos INTEGER PRIMARY KEY AUTOINCREMENT, kind, body, crc, at)  the entries after the snapshot
    ads(id PRIMARY KEY, features)                                    the snapshot's catalog
    meta(key PRIMARY KEY, value)                                     pos, models, boot (JSON)

Writers serialise on SQLite's own lock (``BEGIN IMMEDIATE``; other processes wait up to the busy
timeout).  ``compact`` folds a bounded number of entries per transaction so it never holds the
write lock for long.  Followers poll ``head()`` (one indexed read); see service/state.py.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec

from service.replog.entries import COMPACT_ADS, Entry, LogError, State, changes, decode, encode

BUSY_TIMEOUT_MS = 30_000
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS log (pos INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, "
    "body BLOB NOT NULL, crc INTEGER NOT NULL, at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ads (id TEXT PRIMARY KEY, features BLOB NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB)",
)


def _connect(path: str) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
    con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if path != ":memory:":
        con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = FULL")
    return con


class SqliteLog:
    name = "sqlite"

    def __init__(self, path: Path | None, poll: float = 0.05):
        self.path = str(path) if path is not None else ":memory:"
        self.poll = poll
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = _connect(self.path)
            self._write(lambda c: [c.execute(s) for s in SCHEMA])
        except sqlite3.Error as exc:
            raise LogError(f"sqlite log {self.path}: {exc}") from None
        self._lock = threading.Lock()  # one statement sequence at a time on this connection
        self._compactor: sqlite3.Connection | None = None

    # --- writing ---------------------------------------------------------------------------
    def _write(self, fn):
        return _write(self._con, fn)

    def append(self, entries, boot=None):
        rows = [encode(kind, data) for kind, data in entries]

        def txn(con):
            if boot is not None:
                expected, new = boot
                if _get(con, "boot") != expected:
                    return None
                _put(con, "boot", new)
            now = time.time()
            out = []
            for kind, body, crc in rows:
                cur = con.execute("INSERT INTO log (kind, body, crc, at) VALUES (?, ?, ?, ?)", (kind, body, crc, now))
                out.append(int(cur.lastrowid))
            return out

        try:
            with self._lock:
                return self._write(txn)
        except sqlite3.Error as exc:
            raise LogError(f"sqlite log {self.path}: append failed: {exc}") from None

    # --- reading ---------------------------------------------------------------------------
    def read(self, after: int, limit: int = 1000, block: float = 0.0) -> list[Entry]:
        deadline = time.monotonic() + block
        while True:
            try:
                with self._lock:
                    rows = self._con.execute("SELECT pos, kind, body, crc FROM log WHERE pos > ? ORDER BY pos LIMIT ?",
                                             (after, limit)).fetchall()
            except sqlite3.Error as exc:
                raise LogError(f"sqlite log {self.path}: read failed: {exc}") from None
            if rows or time.monotonic() >= deadline:
                return [decode(*r) for r in rows]
            time.sleep(min(self.poll, max(0.0, deadline - time.monotonic())))

    def head(self) -> int:
        with self._lock:
            row = self._con.execute("SELECT seq FROM sqlite_sequence WHERE name = 'log'").fetchone()
        return int(row[0]) if row else 0

    def backlog(self) -> int:
        with self._lock:
            return int(self._con.execute("SELECT count(*) FROM log").fetchone()[0])

    def snapshot(self) -> tuple[State, Iterator[tuple[str, bytes]] | None]:
        """Read in one transaction on its own connection (WAL: a consistent view while others write)."""
        if self.path == ":memory:":  # one connection only: the snapshot is read under the lock
            with self._lock:
                state = self._meta(self._con)
                ads = self._con.execute("SELECT id, features FROM ads").fetchall()
            return state, iter(ads)
        con = _connect(self.path)
        con.execute("BEGIN")
        state = self._meta(con)

        def rows():
            try:
                for row in con.execute("SELECT id, features FROM ads"):
                    yield row[0], bytes(row[1])
            finally:
                con.execute("COMMIT")
                con.close()

        return state, rows()

    def meta(self) -> State:
        """The snapshot's state without its ads."""
        with self._lock:
            return self._meta(self._con)

    def _meta(self, con) -> State:
        pos = _get(con, "pos") or 0
        return State(pos=int(pos), models=_get(con, "models") or {}, boot=_get(con, "boot"))

    # --- compaction ------------------------------------------------------------------------
    def compact(self, max_entries: int = 1000, max_ads: int = COMPACT_ADS) -> int:
        """Fold entries into the snapshot tables, at most ``max_entries`` and about ``max_ads`` ads
        (at least one entry) per transaction: the database's write lock is held briefly."""

        def txn(con):
            state = self._meta(con)
            rows = con.execute("SELECT pos, kind, body, crc FROM log WHERE pos > ? ORDER BY pos LIMIT ?",
                               (state.pos, max_entries)).fetchall()
            entries: list[Entry] = []
            n_ads = 0
            for r in rows:
                if entries and n_ads >= max_ads:
                    break
                e = decode(*r)
                entries.append(e)
                n_ads += len(e.data.get("ads") or e.data.get("ids") or []) if e.data else 0
            if not entries:
                return 0
            ads = changes(entries, state.models)
            state.pos = entries[-1].pos
            con.executemany("INSERT OR REPLACE INTO ads (id, features) VALUES (?, ?)",
                            [(i, f) for i, f in ads.items() if f is not None])
            con.executemany("DELETE FROM ads WHERE id = ?", [(i,) for i, f in ads.items() if f is None])
            _put(con, "pos", state.pos)
            _put(con, "models", state.models)
            con.execute("DELETE FROM log WHERE pos <= ?", (state.pos,))
            return len(entries)

        try:
            with self._lock:  # this process' appends wait here, not in SQLite's busy loop (it sleeps)
                if self.path == ":memory:":
                    return _write(self._con, txn)
                if self._compactor is None:
                    self._compactor = _connect(self.path)
                return _write(self._compactor, txn)
        except sqlite3.Error as exc:
            raise LogError(f"sqlite log {self.path}: compaction failed: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._con.close()
        if self._compactor is not None:
            self._compactor.close()


def _write(con, fn):
    """Run ``fn(connection)`` in one IMMEDIATE transaction (the database's write lock)."""
    con.execute("BEGIN IMMEDIATE")
    try:
        out = fn(con)
        con.execute("COMMIT")
        return out
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _get(con, key: str):
    row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None or row[0] is None else msgspec.json.decode(row[0])


def _put(con, key: str, value) -> None:
    con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, msgspec.json.encode(value)))
