"""The live ad catalog: ids -> item features -> per-model precomputed parts, in snapshots.

A :class:`Snapshot` is immutable: ids, their raw features (JSON bytes: not GC-tracked, used to
re-encode on reload and for GET), and per served model the encoded item rows and the per-ad
arrays (W_a, c_a) of precompute.py.  Writers (upsert, delete, set_model) serialise on one lock,
build a new snapshot copy-on-write from the latest one, and publish it with a single reference
assignment; readers take ``catalog.snapshot`` once per request and see either the old or the new
catalog, never a mix.  Every acknowledged write is in every later snapshot.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from tqdm import tqdm

from adrank.core.preprocess import Preprocessor
from service.catalog import idtable, kernels
from service.catalog.idtable import IdCollision, IdTable
from service.catalog.precompute import Plan, ad_parts, make_plan
from service.encode import RequestEncoder, RequestError
from service.kernels.memory import aligned_empty

BATCH = 20_000  # ads encoded + precomputed per step (bounded temporary memory, progress bar)


class CatalogError(ValueError):
    """An ad or a catalog file that cannot be used; the message names the ad / line and field."""


class AdEncodeError(CatalogError):
    """Ad number ``row`` of a batch has a value its model cannot encode."""

    def __init__(self, row: int, reason: str):
        super().__init__(f"ad #{row}: {reason}")
        self.row, self.reason = row, reason


@dataclass(frozen=True)
class Model:
    """What the catalog needs of a served model: kind, preprocessing, artifact arrays, and
    optionally the service's inline ``scorer`` (``Scorer.score(ctx, items)``, for inline ads)."""

    name: str
    kind: str
    preprocessor: Preprocessor
    arrays: dict
    target: str = "binary"
    scorer: object | None = None
    plan: Plan = field(init=False)
    encoder: RequestEncoder = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "plan", make_plan(self.kind, self.preprocessor.schema, self.arrays))
        kernels.warm(self.plan.D)
        idtable.warm()
        emb = self.arrays.get("emb")  # None for a codebook model: the plan decodes rows itself
        object.__setattr__(self, "arrays", {"emb": None if emb is None else np.ascontiguousarray(emb),
                                            "linear": np.ascontiguousarray(self.arrays["linear"]).ravel()})
        object.__setattr__(self, "encoder", RequestEncoder(self.preprocessor))

    @classmethod
    def from_ranker(cls, ranker, name: str | None = None) -> Model:
        """The catalog's view of a service Ranker (its kind, preprocessing, arrays and scorer)."""
        return cls(name or ranker.name, ranker.kind, ranker.preprocessor, ranker.arrays, ranker.target,
                   ranker.scorer)

    def encode_items(self, feats: Sequence[dict]) -> np.ndarray:
        """Item slot rows int32[N, S_I] of feature dicts (fields this model lacks are ignored)."""
        names = frozenset(self.encoder.item_names)
        ads = [{"id": i, "features": {k: v for k, v in f.items() if k in names}} for i, f in enumerate(feats)]
        try:
            return self.encoder.encode_ads(ads)[1]
        except RequestError as exc:
            if exc.ad_index is None:
                raise
            raise AdEncodeError(exc.ad_index, str(exc).rsplit(" (ad #", 1)[0]) from None

    def parts(self, items: np.ndarray):
        """(W float32[N, D], c float64[N]) of encoded item rows."""
        return ad_parts(self.plan, items, self.arrays["emb"], self.arrays["linear"])


@dataclass(frozen=True)
class Part:
    """One model's view of a snapshot: row a of each array is ad ``ids[a]``."""

    model: Model
    items: np.ndarray  # int32[N, S_I]
    W: np.ndarray  # float32[N, D]
    c: np.ndarray  # float64[N]


@dataclass(frozen=True)
class Snapshot:
    version: int
    ids: list[str]
    index: dict[str, int]  # id -> row, for writes and GET
    features: list[bytes]
    parts: dict[str, Part]
    hashes: np.ndarray  # uint64[N]: 64-bit hash of ids[a]
    table: IdTable  # hash -> row, for the ranking hot path

    @classmethod
    def of(cls, version: int, ids: list[str], features: list[bytes], parts: dict[str, Part],
           index: dict | None = None, hashes: np.ndarray | None = None, table: IdTable | None = None) -> Snapshot:
        """A snapshot; the id index, hashes and hash table are derived when not given."""
        index = {a: i for i, a in enumerate(ids)} if index is None else index
        hashes = IdTable.hash(ids) if hashes is None else hashes
        try:
            table = IdTable(hashes) if table is None else table
        except IdCollision as exc:
            raise CatalogError(f"ad id {ids[exc.row]!r}: its 64-bit hash equals another id's") from None
        return cls(version, ids, index, features, parts, hashes, table)

    def with_parts(self, parts: dict[str, Part]) -> Snapshot:
        return Snapshot(self.version + 1, self.ids, self.index, self.features, parts, self.hashes, self.table)

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, ad_id: str) -> dict | None:
        a = self.index.get(ad_id)
        return None if a is None else msgspec.json.decode(self.features[a])


def _aligned_copy(a: np.ndarray) -> np.ndarray:
    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


def _empty_part(model: Model) -> Part:
    n_slots = int(model.plan.item.offsets[-1])
    return Part(model, np.zeros((0, n_slots), np.int32), np.zeros((0, model.plan.D), np.float32), np.zeros(0))


def validate_ad(ad, where: str) -> tuple[str, dict]:
    """(id, features) of one {"id": str, "features": {name: value}} object, or a CatalogError."""
    if not isinstance(ad, dict):
        raise CatalogError(f"{where}: expected an object {{\"id\", \"features\"}}, got {type(ad).__name__}")
    ad_id, feats = ad.get("id"), ad.get("features")
    if isinstance(ad_id, int) and not isinstance(ad_id, bool):
        ad_id = str(ad_id)  # numeric ids are kept as their decimal string
    if not isinstance(ad_id, str) or not ad_id:
        raise CatalogError(f"{where}: 'id' must be a non-empty string, got {ad_id!r}")
    if not isinstance(feats, dict):
        raise CatalogError(f"{where} (id {ad_id!r}): 'features' must be an object")
    extra = set(ad) - {"id", "features"}
    if extra:
        raise CatalogError(f"{where} (id {ad_id!r}): unknown keys {sorted(extra)}")
    return ad_id, feats


class Catalog:
    """Ads of the service, with per-ad parts for every registered model (see module docstring)."""

    def __init__(self, models: Iterable[Model] = ()):
        self._lock = threading.Lock()
        self.journal: Any = None  # a journal.Journal, set by wiring.install when several workers share writes
        self.snapshot = Snapshot.of(0, [], [], {m.name: _empty_part(m) for m in models})

    # --- reads -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.snapshot)

    @property
    def version(self) -> int:
        return self.snapshot.version

    def get(self, ad_id: str) -> dict | None:
        return self.snapshot.get(ad_id)

    # --- writes ------------------------------------------------------------------------------
    def _item_names(self, snap: Snapshot) -> set[str] | None:
        names = set()
        for p in snap.parts.values():
            s = p.model.preprocessor.schema
            names |= {f.name for f in s.item_fields}
        return names if snap.parts else None

    def _check(self, snap: Snapshot, ads: Sequence, where) -> tuple[list[str], list[dict]]:
        names = self._item_names(snap)
        ids, feats = [], []
        for i, ad in enumerate(ads):
            ad_id, f = validate_ad(ad, where(i))
            if names is not None and not names.issuperset(f):
                bad = sorted(set(f) - names)
                raise CatalogError(f"{where(i)} (id {ad_id!r}): {bad} are not item fields of any served model")
            ids.append(ad_id)
            feats.append(f)
        return ids, feats

    def _encode(self, model: Model, feats: Sequence[dict], where, progress: bool):
        items, Ws, cs = [], [], []
        steps = range(0, len(feats), BATCH)
        quiet = not progress or len(steps) < 2  # else a bar on a terminal only (disable=None)
        for lo in tqdm(steps, desc=f"catalog {model.name}", unit="batch", disable=True if quiet else None):
            chunk = feats[lo : lo + BATCH]
            try:
                x = model.encode_items(chunk)
            except AdEncodeError as exc:
                raise CatalogError(f"{where(lo + exc.row)}, model {model.name!r}: {exc.reason}") from None
            W, c = model.parts(x)
            items.append(x)
            Ws.append(W)
            cs.append(c)
        if not items:
            return _empty_part(model)
        W = Ws[0] if len(Ws) == 1 else np.concatenate(Ws, out=aligned_empty((len(feats), model.plan.D)))
        return Part(model, np.concatenate(items), W, np.concatenate(cs))

    def validate(self, ads: Sequence, where=lambda i: f"ad #{i}") -> None:
        """Raise the CatalogError ``upsert(ads)`` would raise, without changing anything."""
        snap = self.snapshot
        ids, feats = self._check(snap, ads, where)
        for p in snap.parts.values():
            self._encode(p.model, feats, where, False)

    def upsert(self, ads: Sequence, where=lambda i: f"ad #{i}", progress: bool = False) -> Snapshot:
        """Insert or replace ads (all or nothing); returns the new snapshot. Last duplicate wins."""
        with self._lock:
            old = self.snapshot
            ids, feats = self._check(old, ads, where)
            last = {ad_id: i for i, ad_id in enumerate(ids)}  # dedupe: the last occurrence wins
            keep = sorted(last.values())
            ids, feats = [ids[i] for i in keep], [feats[i] for i in keep]
            new_parts = {name: self._encode(p.model, feats, lambda j: where(keep[j]), progress)
                         for name, p in old.parts.items()}
            n_old = len(old.ids)
            added = [ad_id for ad_id in ids if ad_id not in old.index]
            index, all_ids = (dict(old.index), list(old.ids)) if added else (old.index, old.ids)
            all_feats = list(old.features)
            for ad_id in added:
                index[ad_id] = len(all_ids)
                all_ids.append(ad_id)
                all_feats.append(b"")
            rows = np.fromiter((index[ad_id] for ad_id in ids), np.int64, len(ids))
            for j, a in enumerate(rows.tolist()):
                all_feats[a] = msgspec.json.encode(feats[j])
            n = len(all_ids)
            hashes = old.hashes  # unchanged unless ids were added
            table: IdTable | None = old.table  # None: the snapshot rebuilds it
            if added:
                new_hashes = IdTable.hash(added)
                hashes = np.concatenate([old.hashes, new_hashes])
                try:
                    table = old.table.with_rows(new_hashes, n_old)
                except IdCollision as exc:
                    raise CatalogError(f"ad id {all_ids[exc.row]!r}: its 64-bit hash equals another id's") from None
            parts = {}
            for name, p in old.parts.items():
                q = new_parts[name]
                arrays = []
                for old_a, new_a in ((p.items, q.items), (p.W, q.W), (p.c, q.c)):
                    out = aligned_empty((n,) + old_a.shape[1:], old_a.dtype)
                    out[: len(old_a)] = old_a
                    out[rows] = new_a
                    arrays.append(out)
                parts[name] = Part(p.model, *arrays)
            self.snapshot = snap = Snapshot.of(old.version + 1, all_ids, all_feats, parts, index, hashes, table)
            return snap

    def delete(self, ad_ids: Iterable[str]) -> tuple[Snapshot, list[str]]:
        """Remove ads (unknown ids ignored); returns (new snapshot, the ids that were removed).

        The last rows move into the holes, so only moved ids change row."""
        with self._lock:
            old = self.snapshot
            gone = sorted({old.index[i] for i in ad_ids if i in old.index}, reverse=True)
            if not gone:
                return old, []
            index, ids, feats, hashes = dict(old.index), list(old.ids), list(old.features), old.hashes.copy()
            parts = {name: Part(p.model, p.items.copy(), _aligned_copy(p.W), p.c.copy())
                     for name, p in old.parts.items()}
            removed = []
            for a in gone:  # descending, so `last` is never a row still to be removed
                last = len(ids) - 1
                removed.append(ids[a])
                del index[ids[a]]
                if a != last:
                    ids[a], feats[a], hashes[a] = ids[last], feats[last], hashes[last]
                    index[ids[a]] = a
                    for p in parts.values():
                        p.items[a], p.W[a], p.c[a] = p.items[last], p.W[last], p.c[last]
                ids.pop()
                feats.pop()
            n = len(ids)
            parts = {name: Part(p.model, p.items[:n], p.W[:n], p.c[:n]) for name, p in parts.items()}
            self.snapshot = snap = Snapshot.of(old.version + 1, ids, feats, parts, index, hashes[:n])
            return snap, removed

    def set_model(self, model: Model, progress: bool = False) -> Snapshot:
        """Register or replace (hot reload) a model: every ad's part is recomputed for it."""
        with self._lock:
            old = self.snapshot
            feats = [msgspec.json.decode(b) for b in old.features]
            part = self._encode(model, feats, lambda i: f"ad {old.ids[i]!r}", progress)
            parts = dict(old.parts)
            parts[model.name] = part
            self.snapshot = snap = old.with_parts(parts)
            return snap

    def remove_model(self, name: str) -> None:
        with self._lock:
            old = self.snapshot
            parts = {k: v for k, v in old.parts.items() if k != name}
            self.snapshot = old.with_parts(parts)

    # --- files -------------------------------------------------------------------------------
    def load_jsonl(self, path: str | Path, progress: bool = True) -> Snapshot:
        """Upsert every line of a JSONL file of {"id": ..., "features": {...}}; errors name the line."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise CatalogError(f"{path}: cannot read catalog: {exc.strerror}") from None
        ads, lines = [], []
        decoder = msgspec.json.Decoder()
        for no, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                ads.append(decoder.decode(line))
            except msgspec.DecodeError as exc:
                raise CatalogError(f"{path} line {no}: invalid JSON ({exc})") from None
            lines.append(no)
        return self.upsert(ads, where=lambda i: f"{path} line {lines[i]}", progress=progress)
