"""The serving state of one process: the current snapshot, and how it follows the replication log.

Every change goes through the log first (service/replog): a catalog write or a reload is validated
and prepared here (encoding, per-ad parts, loading and warming the model), appended to the log —
acknowledged only once committed —, then applied in log order: entries other processes appended
before it are applied first, so every process (uvicorn worker, fleet replica) applies the same
entries in the same order and converges on the same state.  Applying builds the next immutable
:class:`~service.snapshot.Snapshot` and publishes it with one assignment.

Threads: request handlers call ``upsert`` / ``delete`` / ``reload`` from worker threads; a
*follower* thread applies other processes' entries (Redis: blocking ``XREAD``; SQLite: a poll
every ``ADRANK_LOG_POLL`` seconds) and compacts the log; a *merger* thread folds the catalog's
delta into a new base once it passes ``ADRANK_CATALOG_MERGE_ROWS``.  Locks, always taken in this
order: ``_reload`` (one reload at a time, never waited for), ``_base`` (the catalog's base segment:
merges, and a new model version's base parts computed outside ``_apply``), ``_apply`` (appliers).

Start-up (:meth:`start`) reads the log's snapshot and tail, then reconciles the start-up
arguments with the last recorded start-up intent: an argument that changed since (a model path,
the ``--catalog`` file's content) is a new intent, appended to the log after everything already
acknowledged; an unchanged one changes nothing, so hot reloads and catalog writes made since the
last start survive a restart.  An entry that cannot be decoded or applied is skipped and reported
(logged, ``adrank_log_entries_total{result="skipped"}``, ``GET /v1/state``), never fatal.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path

from adrank.core.gcpause import gc_paused
from service import metrics
from service.catalog import metrics as catalog_metrics
from service.catalog import store
from service.catalog.segments import Part
from service.catalog.store import CatalogError
from service.models import ModelLoadError, SchemaChanged, load_ranker, load_version, same_schema
from service.replog import (
    BIDS,
    COMPACT_ADS,
    DELETE,
    LOAD,
    RETIRE,
    TRAFFIC,
    UPSERT,
    Entry,
    LogError,
    State,
    fold,
    open_log,
)
from service.snapshot import ModelVersion, Snapshot
from service.traffic import Split, TrafficError, UnknownVersion

log = logging.getLogger("adrank.state")
BOOT_CHUNK = 1_000  # ads per log entry of a start-up catalog file: decoding one holds the GIL ~1 ms
MERGE_NICE = 10  # the merger thread yields the cores to requests: a merge can wait, a request cannot
RETIRE_SECONDS = 2.0  # far longer than a request holds a snapshot
# A catalog write's CPU work (validate, encode, parts) runs in slices of WRITE_SLICE ads; before
# each slice it waits (blocked on an event, not polling: a polling thread would take the GIL from
# the requests it waits for) while ranking requests are in flight, up to WRITE_YIELD_MAX in all,
# so a write delays a request by one slice instead of all of its work.  A slice has a fixed cost
# (the encoder's and the parts kernel's set-up): 100 ads, a few ms of work, keep both a write's
# acknowledgement and the requests' tail in bounds (docs/results/state-notes.md).
WRITE_SLICE = 100
WRITE_YIELD_MAX = 0.02


class ReloadBusy(RuntimeError):
    """Another reload runs in this process (HTTP 409)."""


class VersionInUse(RuntimeError):
    """A version that cannot be retired now: the current one, or one the split sends traffic to (409)."""


class StartupError(RuntimeError):
    """The start-up arguments cannot be served (a bad --catalog file, no loadable model)."""




def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ServingState:
    def __init__(self, settings, loader=None, replog=None):
        self.settings = settings
        self.loader = loader or functools.partial(load_ranker, timeout=settings.load_timeout,
                                                  **settings.scorer_options())
        self.log = replog or open_log(settings.log_url, settings.state_dir, settings.log_key, settings.log_poll)
        self._snapshot: Snapshot | None = None
        self.ready = False
        self.draining = False
        self.skipped: deque = deque(maxlen=100)  # (position, kind, reason) of entries skipped here
        self._reload = threading.Lock()
        self._base = threading.Lock()
        self._apply = threading.RLock()
        self._stop = threading.Event()
        self._merge_wanted = threading.Event()
        self._threads: list[threading.Thread] = []
        self._retired: deque = deque(maxlen=10_000)  # (time, snapshot) replaced, still referenced here
        self._yielded = threading.local()  # time a write in this thread has waited so far
        self.idle: threading.Event | None = None  # set while no ranking request is in flight (the app's)

    @property
    def snapshot(self) -> Snapshot:
        """The serving snapshot now (read it once per request)."""
        snap = self._snapshot
        if snap is None:
            raise RuntimeError("the serving state has not started")
        return snap

    # --- start-up ------------------------------------------------------------------------------
    def start(self, follow: bool = True) -> Snapshot:
        """Bootstrap from the log + reconcile the start-up arguments; then follow the log."""
        t0 = time.perf_counter()
        with gc_paused():
            self._bootstrap()
            self.compact(serving=False)  # a start-up catalog file's entries are folded now, not under load
        view, models = self.snapshot.catalog, self.snapshot.models
        log.info("state: %d ads, models %s, log position %d (%s), ready in %.1f s", view.size,
                 ", ".join(f"{n}={m.version}" for n, m in models.items()), self.snapshot.position, self.log.name,
                 time.perf_counter() - t0)
        if follow:
            self._spawn(self._follow, "adrank-follow")
            self._spawn(self._merge_loop, "adrank-merge")
        self.ready = True
        return self.snapshot

    def _bootstrap(self) -> None:
        loaded: dict[tuple[str, str], ModelVersion] = {}
        for _ in range(10):
            state, ads = self.log.snapshot()
            state.ads = dict(ads) if ads is not None else {}
            tail = self._read_all(state.pos)
            if self.log.meta().pos != state.pos:  # compacted meanwhile: part of the tail is gone
                continue
            for e in tail:
                if e.error:
                    self._skipped(e, e.error)
            fold(state, tail)
            models, entries, boot, batch = self._reconcile(state, loaded)
            extra, traffic = self._kept(state, models, loaded)
            if not entries and boot == state.boot:
                break
            positions = self.log.append(entries, boot=(state.boot, boot))
            if positions is not None:
                state.pos = positions[-1] if positions else state.pos
                fold(state, [Entry(p, k, d) for p, (k, d) in zip(positions, entries, strict=True)
                             if k != UPSERT])  # the file's ads are in `batch`, prepared already
                break
            log.info("another process recorded a start-up intent first; reading the log again")
        else:
            raise StartupError("the start-up intent kept changing under this process")
        fresh = set(batch.ids) if batch is not None else set()  # the file's ads: prepared already
        every = [*models.values(), *(mv for vs in extra.values() for mv in vs.values())]
        view, refused = store.build({mv.key: mv.catalog_model for mv in every},
                                    [(i, f) for i, f in state.ads.items() if i not in fresh], progress=True)
        for ad_id, reason in refused:
            log.error("catalog: ad %r left out: %s", ad_id, reason)
        if batch is not None:
            view = store.merge(store.upsert(view, batch))
        default = self.settings.models[0].name
        self._publish(Snapshot(models, default, view, state.pos, extra=extra, traffic=traffic))
        for mv in every:
            metrics.model_swapped(mv.name, None, mv)
            metrics.MODEL_LOADS.labels(mv.name, "ok").inc()
        catalog_metrics.published(self.snapshot, "load", view.size)

    def _read_all(self, after: int) -> list[Entry]:
        out: list[Entry] = []
        while True:
            got = self.log.read(after, limit=10_000)
            if not got:
                return out
            out.extend(got)
            after = got[-1].pos

    def _reconcile(self, state: State, loaded: dict):
        """(models by name, entries to append, the new start-up intent, the --catalog batch or None)."""
        s = self.settings
        boot = state.boot or {}
        boot_models = boot.get("models") or {}
        models, entries = {}, []
        for spec in s.models:
            arg = str(Path(spec.path).expanduser().resolve())
            logged = state.models.get(spec.name)
            if boot_models.get(spec.name) != arg or logged is None:
                intent, path = True, arg  # a new start-up argument (or a model never served)
            else:
                intent, path = False, logged["path"]
            mv = self._load_cached(loaded, spec.name, path, fallback=None if intent else arg)
            models[spec.name] = mv
            if intent or mv.path != Path(path):
                entries.append((LOAD, {"name": spec.name, "path": str(mv.path), "version": mv.version,
                                       "force": True}))
        catalog, batch = boot.get("catalog"), None
        if s.catalog:
            catalog = {"path": str(Path(s.catalog).resolve()), "sha256": file_digest(Path(s.catalog))}
            if catalog != boot.get("catalog"):
                ads, lines = store.read_jsonl(s.catalog)
                view = store.empty({mv.key: mv.catalog_model for mv in models.values()})
                try:
                    batch = store.prepare(view, ads, lambda i: f"{s.catalog} line {lines[i]}", progress=True)
                except CatalogError as exc:
                    raise StartupError(str(exc)) from None
                rows = store.log_rows(batch)
                entries += [(UPSERT, {"ads": rows[lo : lo + BOOT_CHUNK]}) for lo in range(0, len(rows), BOOT_CHUNK)]
        new_boot = {"models": {spec.name: str(Path(spec.path).expanduser().resolve()) for spec in s.models},
                    "catalog": catalog}
        return models, entries, new_boot, batch

    def _kept(self, state: State, models: dict, loaded: dict) -> tuple[dict, dict]:
        """The versions logged as kept beside the current ones, and the logged splits: a kept
        version that cannot be loaded now is left out (logged), a split that no longer parses too."""
        extra: dict[str, dict[str, ModelVersion]] = {}
        traffic: dict[str, Split] = {}
        for name, cur in models.items():
            logged = state.models.get(name) or {}
            for version, path in (logged.get("kept") or {}).items():
                if version == cur.version:
                    continue
                try:
                    mv = self._load_cached(loaded, name, path, fallback=None)
                except StartupError as exc:
                    log.error("kept version %s of %s left out: %s", version, name, exc)
                    continue
                if mv.version != cur.version:
                    extra.setdefault(name, {})[mv.version] = mv
            try:
                split = Split.from_dict(logged["traffic"]) if logged.get("traffic") else None
            except TrafficError as exc:
                log.error("the logged traffic split of %s is left out: %s", name, exc)
                split = None
            if split is not None:
                traffic[name] = split
        return extra, traffic

    def _load_cached(self, loaded: dict, name: str, path: str, fallback: str | None) -> ModelVersion:
        key = (name, path)
        if key not in loaded:
            try:
                loaded[key] = self._load(name, path)
            except ModelLoadError as exc:
                if fallback is None or fallback == path:
                    raise StartupError(str(exc)) from None
                log.error("the log serves %s from %s, which cannot be loaded now (%s): serving the start-up "
                          "argument %s instead", name, path, exc.code, fallback)
                return self._load_cached(loaded, name, fallback, None)
        return loaded[key]

    def _load(self, name: str, path) -> ModelVersion:
        mv = load_version(name, path, self.loader)
        metrics.MODEL_LOAD_DURATION.labels(name).observe(mv.load_seconds)
        return mv

    # --- publishing ----------------------------------------------------------------------------
    def _publish(self, snap: Snapshot) -> None:
        old, self._snapshot = self._snapshot, snap  # the one swap
        if old is not None:  # freed later by the merger thread, not by the request that drops it last
            self._retired.append((time.monotonic(), old))
        metrics.snapshot_published(snap)

    def _next(self, position: int, catalog=None, models=None, extra=None, traffic=None) -> Snapshot:
        cur = self.snapshot
        snap = Snapshot(cur.models if models is None else models, cur.default,
                        cur.catalog if catalog is None else catalog, max(position, cur.position),
                        extra=cur.extra if extra is None else extra, traffic=cur.traffic if traffic is None else traffic)
        self._publish(snap)
        return snap

    # --- writes from this process --------------------------------------------------------------
    def _append(self, kind: str, data: dict) -> int:
        """Commit one entry; its position (the write is durable once this returns)."""
        positions = self.log.append([(kind, data)])
        assert positions, "an append without a start-up intent always commits"
        return positions[0]

    def upsert(self, ads: list) -> Snapshot:
        """Validate + prepare (CatalogError: nothing written), log, apply; returns the snapshot
        that includes the write."""
        self._yielded.t = 0.0
        try:
            batch = store.prepare(self.snapshot.catalog, ads, lambda i: f"ads[{i}]", pause=self._yield_to_requests,
                                  slice_=WRITE_SLICE)
        except CatalogError:
            catalog_metrics.refused("upsert")
            raise
        rows = store.log_rows(batch)
        with self._apply:
            pos = self._append(UPSERT, {"ads": rows})
            self._catch_up(pos - 1)
            snap = self._next(pos, catalog=store.upsert(self.snapshot.catalog, batch))
        catalog_metrics.published(snap, "upsert", len(rows))
        self._want_merge(snap)
        return snap

    def _yield_to_requests(self) -> None:
        """Wait (at most WRITE_YIELD_MAX per write) until no ranking request is in flight: a write
        can wait a few ms, a request's latency is the product."""
        idle = self.idle
        if idle is None or idle.is_set():
            return
        left = WRITE_YIELD_MAX - self._yielded.t
        if left > 0:
            t0 = time.perf_counter()
            idle.wait(left)
            self._yielded.t += time.perf_counter() - t0

    def set_bids(self, bids: dict) -> tuple[Snapshot, list[str]]:
        """Log + apply new bids of ads in the catalog (id -> bid, NaN: none), no precompute;
        returns (the snapshot, the ids not in the catalog).  Any unknown id: nothing is written."""
        with self._apply:
            self._catch_up()
            _, missing = store.set_bids(self.snapshot.catalog, bids)
            if missing:
                return self.snapshot, missing
            # the ads' features go with their bids: the log's compaction keeps whole records
            pos = self._append(BIDS, {"bids": {i: (None if b != b else b) for i, b in bids.items()},
                                      "features": store.features_of(self.snapshot.catalog, bids)})
            self._catch_up(pos - 1)
            snap = self._next(pos, catalog=store.set_bids(self.snapshot.catalog, bids)[0])
        catalog_metrics.published(snap, "bids", len(bids))
        self._want_merge(snap)
        return snap, []

    def delete(self, ad_id: str) -> Snapshot | None:
        """Log + apply the deletion of one ad; None (nothing written) when it is not in the catalog."""
        with self._apply:
            self._catch_up()
            if self.snapshot.catalog.row_of(ad_id) < 0:
                return None
            pos = self._append(DELETE, {"ids": [ad_id]})
            self._catch_up(pos - 1)
            snap = self._next(pos, catalog=store.delete(self.snapshot.catalog, [ad_id])[0])
        catalog_metrics.published(snap, "delete", 1)
        self._want_merge(snap)
        return snap

    def reload(self, name: str, path: str | None = None, force: bool = False, keep: bool = False
               ) -> tuple[ModelVersion, ModelVersion]:
        """Load + verify + warm, compute the catalog's parts for the new version, log, publish model
        and parts in one swap; returns (new, old).  With ``keep`` the new version is loaded beside
        the current one (which keeps answering unpinned requests; ``old`` is the current version).
        Raises UnknownModel, ReloadBusy, ModelLoadError (SchemaChanged unless ``force``) or
        CatalogError (an ad the new version cannot encode)."""
        old = self.snapshot.model(name)
        if not self._reload.acquire(blocking=False):
            raise ReloadBusy(f"a reload of {name!r} or another model runs in this process; try again")
        try:
            mv = self._load(name, Path(path).expanduser() if path else old.path)
            with self._base:
                view = self.snapshot.catalog
                with gc_paused():
                    base = store.base_part(view, mv.catalog_model)
                with self._apply:
                    self._catch_up()
                    old = self.snapshot.models[name]
                    if not force and not same_schema(old.schema, mv.schema):
                        raise SchemaChanged(name, mv.path, old.schema, mv.schema)
                    delta: Part | None = store.delta_part(self.snapshot.catalog, mv.catalog_model)
                    before = self.snapshot.position
                    entry = {"name": name, "path": str(mv.path), "version": mv.version, "force": bool(force)}
                    pos = self._append(LOAD, {**entry, "keep": True} if keep else entry)
                    self._catch_up(pos - 1)
                    if self.snapshot.position != before:  # others' entries came first: recompute what changed
                        delta = None
                    old = self._swap(mv, pos, base if self.snapshot.catalog.base is view.base else None, delta,
                                     keep=keep)
        except (ModelLoadError, CatalogError):
            metrics.MODEL_LOADS.labels(name, "refused").inc()
            raise
        finally:
            self._reload.release()
        metrics.MODEL_LOADS.labels(name, "ok").inc()
        if self.settings.gc_freeze:
            gc.freeze()  # the new version's long-lived objects join the frozen generation
        return mv, old

    def retire(self, name: str, version: str) -> Snapshot:
        """Log + apply the unloading of a version kept beside the current one.  Raises
        UnknownModel, UnknownVersion, VersionInUse (the current version, or one with traffic)."""
        with self._apply:
            self._catch_up()
            snap = self.snapshot
            cur = snap.model(name)
            if version not in snap.versions(name):
                raise UnknownVersion(name, version, list(snap.versions(name)))
            if version == cur.version:
                raise VersionInUse(f"version {version!r} is the current version of {name!r}: make another "
                                   "version current first (reload with its path)")
            split = snap.traffic.get(name)
            if split is not None and (dict(split.weights).get(version, 0) > 0 or split.shadow == version):
                raise VersionInUse(f"version {version!r} of {name!r} has traffic ({split.to_dict()}): "
                                   "set its weight to 0 and remove it as shadow first")
            pos = self._append(RETIRE, {"name": name, "version": version})
            self._catch_up(pos - 1)
            return self._retire(name, version, pos)

    def _retire(self, name: str, version: str, pos: int) -> Snapshot:
        cur = self.snapshot
        kept = dict(cur.extra.get(name, {}))
        mv = kept.pop(version, None)
        if mv is None:
            return self._next(pos)
        snap = self._next(pos, catalog=store.without_model(cur.catalog, mv.key), extra={**cur.extra, name: kept})
        metrics.model_retired(name, version)
        catalog_metrics.retired(name, version)
        log.info("model %r retired version %s", name, version)
        return snap

    def set_traffic(self, name: str, data: dict) -> Snapshot:
        """Log + apply a name's split (``{}``: none).  Raises UnknownModel or TrafficError (a
        version not loaded, a bad weight)."""
        split = Split.from_dict(data)
        with self._apply:
            self._catch_up()
            snap = self.snapshot
            snap.model(name)
            if split is not None:
                split.check(name, list(snap.versions(name)))
            pos = self._append(TRAFFIC, {"name": name, "traffic": split.to_dict() if split else {}})
            self._catch_up(pos - 1)
            return self._set_traffic(name, split, pos)

    def _set_traffic(self, name: str, split: Split | None, pos: int) -> Snapshot:
        traffic = {n: t for n, t in self.snapshot.traffic.items() if n != name}
        if split is not None:
            traffic[name] = split
        log.info("model %r traffic: %s", name, split.to_dict() if split else "current version only")
        return self._next(pos, traffic=traffic)

    def reload_all(self) -> None:
        """SIGHUP: every served model re-read from its path; failures are logged, not raised."""
        for name in list(self.snapshot.models):
            try:
                self.reload(name)
            except Exception as exc:  # noqa: BLE001 - one model's failure never stops the others
                log.error("reload of %s refused, keeping the old version: %s", name, exc)

    def _swap(self, mv: ModelVersion, pos: int, base=None, delta=None, keep: bool = False) -> ModelVersion:
        """Publish ``mv`` under its name with its catalog parts (under ``_apply``); returns the
        current version it replaces (``keep``: loaded beside it, the current one stays)."""
        cur = self.snapshot
        old = cur.models[mv.name]
        kept = dict(cur.extra.get(mv.name, {}))
        if keep and mv.version != old.version:
            kept[mv.version] = mv
            view = store.with_model(cur.catalog, mv.key, mv.catalog_model, base, delta=delta)
            snap = self._next(pos, catalog=view, extra={**cur.extra, mv.name: kept})
            metrics.model_kept(mv.name, mv)
            catalog_metrics.published(snap, "reload", view.size)
            log.info("model %r loaded version %s from %s beside the current %s", mv.name, mv.version, mv.path,
                     old.version)
            return old
        kept.pop(mv.version, None)  # a kept version made current
        view = store.with_model(cur.catalog, mv.key, mv.catalog_model, base,
                                drop=[old.key] if old.key != mv.key else [], delta=delta)
        snap = self._next(pos, catalog=view, models={**cur.models, mv.name: mv}, extra={**cur.extra, mv.name: kept})
        metrics.model_swapped(mv.name, old, mv)
        if old.version != mv.version:
            catalog_metrics.retired(mv.name, old.version)
        catalog_metrics.published(snap, "reload", view.size)
        log.info("model %r now serves version %s from %s (%d catalog ads recomputed)", mv.name, mv.version,
                 mv.path, view.size)
        return old

    # --- applying the log ----------------------------------------------------------------------
    def _catch_up(self, until: int | None = None, pre: dict | None = None) -> int:
        """Apply every entry after the snapshot's position (up to ``until``), in order (under _apply)."""
        n = 0
        while until is None or self.snapshot.position < until:
            entries = self.log.read(self.snapshot.position, limit=1000)
            if until is not None:
                entries = [e for e in entries if e.pos <= until]
            if not entries:
                return n
            for e in entries:
                self._apply_entry(e, (pre or {}).get(e.pos))
                n += 1
        return n

    def _apply_entry(self, e: Entry, pre=None) -> None:
        cur = self.snapshot
        if e.data is None:
            self._skipped(e, e.error)
            self._next(e.pos)
            return
        try:
            if e.kind == UPSERT:
                batch = store.prepare(cur.catalog, e.data["ads"], lambda i: f"ads[{i}]")
                snap = self._next(e.pos, catalog=store.upsert(cur.catalog, batch))
                catalog_metrics.published(snap, "upsert", len(batch))
                self._want_merge(snap)
            elif e.kind == DELETE:
                view, removed = store.delete(cur.catalog, e.data["ids"])
                catalog_metrics.published(self._next(e.pos, catalog=view), "delete", len(removed))
            elif e.kind == BIDS:
                bids = {str(i): store.check_bid(b, "ads.bids", str(i)) for i, b in e.data["bids"].items()}
                view, _ = store.set_bids(cur.catalog, bids)
                catalog_metrics.published(self._next(e.pos, catalog=view), "bids", len(bids))
            elif e.kind == LOAD:
                self._apply_load(e, pre)
            elif e.kind == RETIRE:
                if e.data["name"] in cur.models:
                    self._retire(e.data["name"], e.data["version"], e.pos)
                else:
                    self._next(e.pos)
            elif e.kind == TRAFFIC:
                if e.data["name"] in cur.models:
                    self._set_traffic(e.data["name"], Split.from_dict(e.data["traffic"] or {}), e.pos)
                else:
                    self._next(e.pos)
            metrics.LOG_ENTRIES.labels(e.kind, "applied").inc()
        except (CatalogError, ModelLoadError, KeyError, TypeError, ValueError, TrafficError) as exc:
            self._skipped(e, str(exc))
            self._next(e.pos)

    def _apply_load(self, e: Entry, pre=None) -> None:
        data = e.data or {}
        name = data["name"]
        cur = self.snapshot
        if name not in cur.models:
            self._next(e.pos)  # a model this process does not serve
            return
        mv, base, at = pre if pre is not None else (self._load(name, data["path"]), None, None)
        if isinstance(mv, Exception):
            raise mv
        if data.get("version") and mv.version != data["version"]:
            log.warning("log entry %d loads %s version %s from %s, which now holds version %s: serving that",
                        e.pos, name, data["version"], mv.path, mv.version)
        if not data.get("force") and not same_schema(cur.models[name].schema, mv.schema):
            raise SchemaChanged(name, mv.path, cur.models[name].schema, mv.schema)
        self._swap(mv, e.pos, base if at is not None and cur.catalog.base is at else None, keep=bool(data.get("keep")))
        metrics.MODEL_LOADS.labels(name, "ok").inc()

    def _skipped(self, e: Entry, reason: str | None) -> None:
        self.skipped.append((e.pos, e.kind, reason))
        metrics.LOG_ENTRIES.labels(e.kind if e.kind in (UPSERT, DELETE, LOAD, RETIRE, TRAFFIC) else "other", "skipped").inc()
        if e.kind == LOAD and e.data:
            metrics.MODEL_LOADS.labels(str(e.data.get("name")), "skipped").inc()
        log.error("replication log entry %d (%s) skipped: %s", e.pos, e.kind, reason)

    # --- background threads --------------------------------------------------------------------
    def _spawn(self, target, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _follow(self) -> None:
        last_compact = 0.0
        while not self._stop.is_set():
            try:
                entries = self.log.read(self.snapshot.position, limit=1000, block=self.settings.log_poll)
                if entries:
                    self._apply_batch(entries)
                if time.monotonic() - last_compact > 5:
                    last_compact = time.monotonic()
                    self.compact()
            except LogError as exc:
                log.error("following the replication log failed (retrying in 1 s): %s", exc)
                self._stop.wait(1.0)
            except Exception:  # noqa: BLE001 - the follower must survive anything
                log.exception("following the replication log failed")
                self._stop.wait(1.0)

    def _apply_batch(self, entries: list[Entry]) -> None:
        """Apply entries appended by other processes; a model load is read, warmed and its base
        parts computed before taking ``_apply``, so this process' own writes are not held up."""
        loads = [e for e in entries if e.kind == LOAD and e.data and e.data.get("name") in self.snapshot.models]
        if not loads:
            with self._apply:
                self._catch_up(entries[-1].pos)
            return
        with self._base:
            position = self.snapshot.position  # this process' own reloads hold _base until applied
            loads = [e for e in loads if e.pos > position]
            pre: dict[int, tuple] = {}
            for e in loads:
                data = e.data or {}
                try:
                    mv = self._load(data["name"], data["path"])
                    view = self.snapshot.catalog
                    with gc_paused():
                        pre[e.pos] = (mv, store.base_part(view, mv.catalog_model), view.base)
                except (ModelLoadError, CatalogError) as exc:
                    pre[e.pos] = (exc, None, None)
            with self._apply:
                self._catch_up(entries[-1].pos, pre)
        if self.settings.gc_freeze:
            gc.freeze()

    def compact(self, serving: bool = True) -> int:
        """Fold the log's oldest entries into its snapshot while more than ADRANK_LOG_COMPACT wait:
        while serving, in short transactions with pauses between them (requests and writes first)."""
        n = 0
        while self.log.backlog() > self.settings.compact_entries and not self._stop.is_set():
            got = self.log.compact(max_entries=500, max_ads=COMPACT_ADS if serving else 100 * COMPACT_ADS)
            if not got:
                break
            n += got
            if serving:
                time.sleep(0.005)
        return n

    def _want_merge(self, snap: Snapshot) -> None:
        view = snap.catalog
        if len(view.delta) + len(view.dead) >= self.settings.merge_rows:
            self._merge_wanted.set()

    def _merge_loop(self) -> None:
        with contextlib.suppress(AttributeError, OSError):  # Linux: a thread has its own nice value
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), MERGE_NICE)
        while not self._stop.is_set():
            self._release()
            if not self._merge_wanted.wait(1.0):
                continue
            self._merge_wanted.clear()
            try:
                self.merge()
            except Exception:  # noqa: BLE001
                log.exception("catalog merge failed")

    def _release(self) -> None:
        """Drop the snapshots replaced more than RETIRE_SECONDS ago, in this (background) thread: the
        last reference to a replaced catalog base or model version (hundreds of MB for a large
        catalog) is then dropped here, and its memory unmapped here, instead of in whichever request
        held it last."""
        now = time.monotonic()
        while self._retired and now - self._retired[0][0] > RETIRE_SECONDS:
            self._retired.popleft()

    def merge(self) -> bool:
        """Fold the catalog's delta into a new base off the writers' path, then publish it with what
        was written meanwhile; False when there was nothing to merge or the models changed meanwhile."""
        with self._base:
            at = self.snapshot.catalog
            if not len(at.delta) and not len(at.dead):
                return False
            merged = store.merge(at)
            with self._apply:
                view = store.rebase(merged, at, self.snapshot.catalog)
                if view is None:
                    return False
                self._next(self.snapshot.position, catalog=view)
        catalog_metrics.MERGES.inc()
        return True

    def stop(self) -> None:
        self._stop.set()
        self._retired.clear()
        self._merge_wanted.set()
        for t in self._threads:
            t.join(5)
        try:
            self.log.close()
        except Exception:  # noqa: BLE001 - closing is best effort at shut-down
            pass

    # --- reporting -----------------------------------------------------------------------------
    def describe(self) -> dict:
        snap = self.snapshot
        try:
            head, backlog = self.log.head(), self.log.backlog()
        except LogError:
            head = backlog = None
        view = snap.catalog
        return {"log": self.log.name, "position": snap.position, "head": head, "backlog": backlog,
                "snapshot_age_seconds": round(time.time() - snap.published, 3),
                "catalog": {"ads": view.size, "version": view.version, "base": len(view.base),
                            "delta": len(view.delta), "dead": len(view.dead)},
                "models": {n: {"version": m.version, "path": str(m.path), "catalog_ads": view.size,
                               "versions": {v: str(mv.path) for v, mv in snap.versions(n).items()},
                               "traffic": snap.traffic[n].to_dict() if n in snap.traffic else None}
                           for n, m in snap.models.items()},
                "skipped": [{"position": p, "kind": k, "reason": r} for p, k, r in self.skipped]}



def request_reload_all(settings) -> list[int] | None:
    """SIGHUP to a server with several workers: log a reload of every served model from the path
    it serves now; every worker (and every replica of a fleet) applies it.  Returns the positions."""
    from service.replog import changes

    replog = open_log(settings.log_url, settings.state_dir, settings.log_key, settings.log_poll)
    try:
        state = replog.meta()
        after = state.pos
        while entries := replog.read(after, limit=10_000):
            changes(entries, state.models)
            after = entries[-1].pos
        return replog.append([(LOAD, {"name": s.name, "path": (state.models.get(s.name) or {}).get("path")
                                      or str(Path(s.path).resolve()), "version": None, "force": False})
                              for s in settings.models])
    finally:
        replog.close()
