"""Catalog writes shared by every uvicorn worker: an append-only journal in the run directory.

Each worker holds its own catalog in memory.  With a run directory (``adrank serve`` always has
one), a write is validated, appended to ``RUN_DIR/catalog-journal.jsonl`` (one JSON line,
``flock``-serialised, fsync'd) and only then applied — by every worker, in file order, so all
workers converge on the same catalog and nothing acknowledged is lost.  The worker that took the
write applies it before answering (read-your-writes); the others within one poll interval.
A worker that starts later replays the journal after loading the start-up file.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from pathlib import Path

import msgspec

from service.catalog import metrics
from service.catalog.store import Catalog, CatalogError

log = logging.getLogger("adrank.catalog")
FILE = "catalog-journal.jsonl"


class Journal:
    def __init__(self, run_dir: str | Path, catalog: Catalog):
        self.path = Path(run_dir) / FILE
        self.catalog = catalog
        self.offset = 0
        self._apply_lock = threading.Lock()

    def append(self, op: str, items: list) -> None:
        line = msgspec.json.encode({"op": op, "items": items}) + b"\n"
        with open(self.path, "ab") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def sync(self) -> int:
        """Apply every complete entry not applied yet, in file order; returns how many."""
        with self._apply_lock:
            try:
                with open(self.path, "rb") as f:
                    f.seek(self.offset)
                    data = f.read()
            except FileNotFoundError:
                return 0
            data = data[: data.rfind(b"\n") + 1]  # a line being written is taken next time
            if not data:
                return 0
            entries = [msgspec.json.decode(line) for line in data.splitlines()]
            for op, items in _runs(entries):
                try:
                    if op == "upsert":
                        metrics.published(self.catalog.upsert(items), op, len(items))
                    else:
                        metrics.published(self.catalog.delete(items)[0], op, len(items))
                except CatalogError as exc:  # validated when written; a reloaded model may refuse it
                    log.error("catalog journal: skipping a %s of %d ads: %s", op, len(items), exc)
            self.offset += len(data)
            return len(entries)

    def maybe_sync(self) -> None:
        """Apply new entries if the file grew (one ``stat``): a write acknowledged by any worker
        is seen by every request that starts after the acknowledgement."""
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return
        if size > self.offset:
            self.sync()

    def write(self, op: str, items: list):
        """Validate (upserts), journal, apply; returns the snapshot that includes the write."""
        if op == "upsert":
            self.catalog.validate(items, lambda i: f"ads[{i}]")
        self.append(op, items)
        self.sync()
        return self.catalog.snapshot


def _runs(entries: list[dict]):
    """Consecutive entries of one op merged (upsert keeps the last duplicate; order preserved)."""
    op: str | None = None
    items: list[dict] = []
    for e in entries:
        if e["op"] != op and items:
            yield op, items
            items = []
        op = e["op"]
        items.extend(e["items"])
    if items:
        yield op, items


class Follower:
    """A daemon thread applying other workers' journal entries every ``interval`` seconds."""

    def __init__(self, journal: Journal, interval: float = 0.5):
        self.journal, self.interval = journal, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="catalog-journal", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.journal.sync()
            except Exception:  # noqa: BLE001 - the follower must survive a bad entry
                log.exception("catalog journal: applying entries failed")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
