"""The live ad catalog: ids -> item features -> per-model-version precomputed parts, in views.

Every operation is a function from one immutable :class:`~service.catalog.segments.View` to the
next (``upsert``, ``delete``, ``with_model``, ``without_model``, ``merge`` + ``rebase``); readers
take one view per request and see either the old or the new catalog, never a mix.

Costs: a write of n ads encodes and reduces those n ads (per served model version), then copies
the delta segment and the dead-row list, which the background merge keeps small (service/state.py
merges once they pass ``ADRANK_CATALOG_MERGE_ROWS``) — never the whole catalog.  A merge builds a
new base off the writers' path from one view (compiled, GIL-free gathers), and ``rebase`` re-applies
what was written meanwhile.  :class:`Catalog` wraps the functions with a lock and a current view,
for callers that hold one catalog (tests, benchmarks).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
from tqdm import tqdm

from adrank.core.preprocess import Preprocessor
from service.catalog import idtable, kernels, segments
from service.catalog.idtable import IdTable
from service.catalog.precompute import Plan, ad_parts, make_plan
from service.catalog.segments import Part, Segment, Strings, View
from service.encode import RequestEncoder, RequestError
from service.kernels.memory import aligned_empty

BATCH = 20_000  # ads encoded + precomputed per step (bounded temporary memory, progress bar)
_json = msgspec.json.Encoder()


class CatalogError(ValueError):
    """An ad or a catalog file that cannot be used; the message names the ad / line and field."""


class AdEncodeError(CatalogError):
    """Ad number ``row`` of a batch has a value its model cannot encode."""

    def __init__(self, row: int, reason: str):
        super().__init__(f"ad #{row}: {reason}")
        self.row, self.reason = row, reason


@dataclass(frozen=True)
class Model:
    """What the catalog needs of a served model version: kind, preprocessing, artifact arrays, and
    optionally the service's inline ``scorer`` (``Scorer.score(ctx, items)``, for inline ads)."""

    name: str
    kind: str
    preprocessor: Preprocessor
    arrays: dict
    target: str = "binary"
    scorer: object | None = None
    calibration: object | None = None  # the version's calibration map (service/link.py), or None
    plan: Plan = field(init=False)
    encoder: RequestEncoder = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "plan", make_plan(self.kind, self.preprocessor.schema, self.arrays))
        kernels.warm(self.plan.D)
        idtable.warm()
        segments.warm()
        emb = self.arrays.get("emb")  # None for a codebook model: the plan decodes rows itself
        object.__setattr__(self, "arrays", {"emb": None if emb is None else np.ascontiguousarray(emb),
                                            "linear": np.ascontiguousarray(self.arrays["linear"]).ravel()})
        object.__setattr__(self, "encoder", RequestEncoder(self.preprocessor))

    @classmethod
    def from_ranker(cls, ranker, name: str | None = None) -> Model:
        """The catalog's view of a service Ranker (its kind, preprocessing, arrays and scorer)."""
        return cls(name or ranker.name, ranker.kind, ranker.preprocessor, ranker.arrays, ranker.target,
                   ranker.scorer, getattr(ranker, "calibration", None))

    @property
    def item_names(self) -> frozenset[str]:
        return frozenset(self.encoder.item_names)

    def encode_items(self, feats: Sequence[dict]) -> np.ndarray:
        """Item slot rows int32[N, S_I] of feature dicts (fields this model lacks are ignored)."""
        names = self.item_names
        ads = [{"id": i, "features": f if names.issuperset(f) else {k: v for k, v in f.items() if k in names}}
               for i, f in enumerate(feats)]
        try:
            return self.encoder.encode_ads(ads)[1]
        except RequestError as exc:
            if exc.ad_index is None:
                raise
            raise AdEncodeError(exc.ad_index, str(exc).rsplit(" (ad #", 1)[0]) from None

    def parts(self, items: np.ndarray):
        """(W float32[N, D], c float64[N]) of encoded item rows."""
        return ad_parts(self.plan, items, self.arrays["emb"], self.arrays["linear"])

    def empty_part(self) -> Part:
        return Part(aligned_empty((0, self.plan.D)), np.zeros(0))


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


def compute_part(model: Model, feats: Sequence[dict], where=lambda i: f"ad #{i}", progress: bool = False,
                 pause=None, batch: int | None = None) -> Part:
    """Encode + reduce ads (feature dicts) for one model, in batches of ``batch`` (bounded temporary
    memory; ``pause()`` before each when given); errors name the ad."""
    Ws, cs = [], []
    batch = batch or BATCH
    steps = range(0, len(feats), batch)
    quiet = not progress or len(steps) < 2  # else a bar on a terminal only (disable=None)
    for lo in tqdm(steps, desc=f"catalog {model.name}", unit="batch", disable=True if quiet else None):
        if pause is not None:
            pause()
        try:
            x = model.encode_items(feats[lo : lo + batch])
        except AdEncodeError as exc:
            raise CatalogError(f"{where(lo + exc.row)}, model {model.name!r}: {exc.reason}") from None
        W, c = model.parts(x)
        Ws.append(W)
        cs.append(c)
    if not Ws:
        return model.empty_part()
    W = Ws[0] if len(Ws) == 1 else np.concatenate(Ws, out=aligned_empty((len(feats), model.plan.D)))
    return Part(W, np.concatenate(cs))


def decode_all(features: Strings) -> list[dict]:
    dec = msgspec.json.Decoder()
    return [dec.decode(features.raw(i)) for i in range(len(features))]


# --- writes --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Batch:
    """Validated ads of one upsert (duplicates resolved: the last wins), and their parts for the
    model versions known when it was prepared."""

    ids: list[str]
    feats: list[dict]
    hashes: np.ndarray
    parts: dict  # model key -> Part

    def __len__(self) -> int:
        return len(self.ids)


def empty(models: dict | None = None) -> View:
    models = dict(models or {})
    parts = {k: m.empty_part() for k, m in models.items()}
    return View(0, Segment.empty(parts), np.zeros(0, np.int64), _empty_delta(models), models)


def _empty_delta(models: dict) -> Segment:
    return segments.delta(Strings.of([]), Strings.of([]), np.zeros(0, np.uint64), np.zeros(0, np.int64),
                          {k: m.empty_part() for k, m in models.items()})


def prepare(view: View, ads: Sequence, where=lambda i: f"ad #{i}", progress: bool = False,
            pause=None, slice_: int | None = None) -> Batch:
    """Validate ads against every model version of ``view`` and compute their parts (no change).
    ``pause()``, when given, is called before every ``slice_`` ads of work (a server's write lets
    its ranking requests run first: service/state.py)."""
    names = frozenset().union(*(m.item_names for m in view.models.values())) if view.models else None
    last: dict[str, tuple[int, dict]] = {}
    for i, ad in enumerate(ads):
        if pause is not None and i % (slice_ or BATCH) == 0:
            pause()
        ad_id, f = validate_ad(ad, where(i))
        if names is not None and not names.issuperset(f):
            bad = sorted(set(f) - names)
            raise CatalogError(f"{where(i)} (id {ad_id!r}): {bad} are not item fields of any served model")
        last.pop(ad_id, None)  # the last occurrence wins, in its own position
        last[ad_id] = (i, f)
    ids = list(last)
    feats = [f for _, f in last.values()]
    pos = [i for i, _ in last.values()]
    hashes = IdTable.hash(ids)
    _check_collisions(view, ids, hashes)
    parts = {k: compute_part(m, feats, lambda j: where(pos[j]), progress, pause, slice_) for k, m in view.models.items()}
    return Batch(ids, feats, hashes, parts)


def _check_collisions(view: View, ids: list[str], hashes: np.ndarray) -> None:
    """Refuse an id whose 64-bit hash equals another id's anywhere in the view (dead rows too: the
    next merge would otherwise find two rows for one hash)."""
    for seg in (view.base, view.delta):
        rows = seg.table.rows_of_hashes(hashes)
        for j in np.flatnonzero((rows >= 0) & (rows < len(seg))).tolist():
            if seg.ids.str(int(rows[j])) != ids[j]:
                raise CatalogError(f"ad id {ids[j]!r}: its 64-bit hash equals another id's")


def _segment(ids: Strings, features: Strings, hashes: np.ndarray, born: np.ndarray, parts: dict,
             grow: bool = False) -> Segment:
    """A base segment (``grow=False``: its table exactly sized) or a delta in buffers with room."""
    try:
        if grow:
            return segments.delta(ids, features, hashes, born, parts)
        return Segment(ids, features, hashes, IdTable(hashes), born, parts)
    except idtable.IdCollision as exc:
        raise CatalogError(f"ad id {ids.str(exc.row)!r}: its 64-bit hash equals another id's") from None


def _take_part(p: Part, rows: np.ndarray) -> Part:
    W = aligned_empty((len(rows), p.W.shape[1]))
    W[...] = p.W[rows]
    return Part(W, p.c[rows])


def _cat_part(a: Part, b: Part) -> Part:
    W = aligned_empty((len(a.c) + len(b.c), a.W.shape[1]))
    W[: len(a.c)], W[len(a.c) :] = a.W, b.W
    return Part(W, np.concatenate([a.c, b.c]))


def upsert(view: View, batch: Batch) -> View:
    """Insert or replace ads.  An ad already in the delta moves to its end; one in the base is
    marked dead there and appended to the delta."""
    _check_collisions(view, batch.ids, batch.hashes)
    parts = dict(batch.parts)
    for k, m in view.models.items():  # a model version loaded since the batch was prepared
        if k not in parts:
            parts[k] = compute_part(m, batch.feats)
    g, _ = view.rows(batch.hashes)
    nb, d = len(view.base), view.delta
    moved = g[g >= nb] - nb
    born = np.full(len(batch), view.version + 1, np.int64)
    ids = Strings.of([i.encode() for i in batch.ids])
    features = Strings.of([_json.encode(f) for f in batch.feats])
    parts = {k: parts[k] for k in view.models}
    buf = d.buffers
    if not len(moved) and buf is not None and buf.length == len(d) and \
            buf.fits(len(batch), len(ids.data), len(features.data), parts):
        delta = buf.append(ids, features, batch.hashes, born, parts)  # in place: O(len(batch))
    else:  # ads already in the delta leave their row for the end; or the buffers are full: copy
        keep = np.setdiff1d(np.arange(len(d), dtype=np.int64), moved, assume_unique=True)
        delta = _segment(d.ids.take(keep) + ids, d.features.take(keep) + features,
                         np.concatenate([d.hashes[keep], batch.hashes]), np.concatenate([d.born[keep], born]),
                         {k: _cat_part(_take_part(d.parts[k], keep), parts[k]) for k in view.models}, grow=True)
    dead = np.union1d(view.dead, g[(g >= 0) & (g < nb)])
    return View(view.version + 1, view.base, dead, delta, view.models)


def delete(view: View, ad_ids: Iterable[str]) -> tuple[View, list[str]]:
    """Remove ads (unknown ids ignored); returns (the next view, the ids that were removed)."""
    ids = list(dict.fromkeys(map(str, ad_ids)))
    g, _ = view.rows(IdTable.hash(ids))
    found = [j for j in range(len(ids)) if g[j] >= 0 and view.id_of(int(g[j])) == ids[j]]
    if not found:
        return view, []
    g = g[found]
    nb, d = len(view.base), view.delta
    keep = np.setdiff1d(np.arange(len(d), dtype=np.int64), g[g >= nb] - nb, assume_unique=True)
    delta = d if len(keep) == len(d) else _segment(
        d.ids.take(keep), d.features.take(keep), d.hashes[keep], d.born[keep],
        {k: _take_part(p, keep) for k, p in d.parts.items()}, grow=True)
    dead = np.union1d(view.dead, g[g < nb])
    return View(view.version + 1, view.base, dead, delta, view.models), [ids[j] for j in found]


def base_part(view: View, model: Model, progress: bool = False) -> Part:
    """Parts of every base row (dead ones too: rows stay aligned) for ``model``: the slow half of
    adding a model version, done before taking the writers' lock (the base changes only by merge)."""
    return compute_part(model, decode_all(view.base.features), lambda i: f"ad {view.base.ids.str(i)!r}", progress)


def with_model(view: View, key: str, model: Model, base: Part | None = None, drop: Iterable[str] = (),
               progress: bool = False, delta: Part | None = None) -> View:
    """Add (or replace) model version ``key``: every ad's part is computed for it (``base`` /
    ``delta``: the segments' parts if computed already, by :func:`base_part` on this view's base and
    :func:`delta_part`); ``drop`` keys are removed in the same step (a reload replaces a version)."""
    base = base if base is not None else base_part(view, model, progress)
    d = view.delta
    delta_part_ = delta if delta is not None else delta_part(view, model)
    models = {k: m for k, m in view.models.items() if k not in set(drop)}
    models[key] = model
    bp = {k: view.base.parts[k] for k in models if k != key}
    dp = {k: d.parts[k] for k in models if k != key}
    bp[key], dp[key] = base, delta_part_
    return View(view.version + 1, view.base.with_parts(bp), view.dead, d.with_parts(dp), models)


def without_model(view: View, key: str) -> View:
    models = {k: m for k, m in view.models.items() if k != key}
    return View(view.version + 1, view.base.with_parts({k: view.base.parts[k] for k in models}), view.dead,
                view.delta.with_parts({k: view.delta.parts[k] for k in models}), models)


def merge(view: View) -> View:
    """The same catalog as ``view`` with every live ad in a new base and an empty delta (O(N) in
    compiled copies that release the GIL, segments.take_concat: run it off the request and writer
    paths)."""
    live = view.live_base_rows()
    b, d = view.base, view.delta
    n = len(live) + len(d)
    take = segments.take_concat
    parts = {k: Part(take(b.parts[k].W, live, d.parts[k].W, aligned_empty((n, b.parts[k].W.shape[1]))),
                     take(b.parts[k].c, live, d.parts[k].c)) for k in view.models}
    base = _segment(b.ids.take_concat(live, d.ids), b.features.take_concat(live, d.features),
                    take(b.hashes, live, d.hashes), take(b.born, live, d.born), parts)
    return View(view.version, base, np.zeros(0, np.int64), _empty_delta(view.models), view.models)


def build(models: dict, ads: list[tuple[str, bytes]], progress: bool = False) -> tuple[View, list[tuple[str, str]]]:
    """A view with ``ads`` (id, features JSON: the catalog as logged) all in its base, and the
    (id, reason) of those a model cannot encode, left out: a model whose schema changed since the
    ads were written ignores the fields it lacks (as a reload does) and refuses only bad values."""
    dec = msgspec.json.Decoder()
    ids, feats = [i for i, _ in ads], [dec.decode(f) for _, f in ads]
    refused = []
    try:
        parts = {k: compute_part(m, feats, lambda i: f"ad {ids[i]!r}", progress) for k, m in models.items()}
    except CatalogError:  # rare: find every ad that fails, leave them out
        keep = []
        for j in range(len(ids)):
            try:
                for m in models.values():
                    compute_part(m, feats[j : j + 1], lambda _, ad_id=ids[j]: f"ad {ad_id!r}")
                keep.append(j)
            except CatalogError as exc:
                refused.append((ids[j], str(exc)))
        ids, feats = [ids[j] for j in keep], [feats[j] for j in keep]
        parts = {k: compute_part(m, feats, lambda i: f"ad {ids[i]!r}", progress) for k, m in models.items()}
    built = merge(upsert(empty(models), Batch(ids, feats, IdTable.hash(ids), parts)))
    return View(0, built.base, built.dead, built.delta, built.models), refused  # version 0: nothing written yet


def delta_part(view: View, model: Model) -> Part:
    """Parts of the delta rows for ``model`` (raises CatalogError naming an ad it cannot encode)."""
    d = view.delta
    return compute_part(model, decode_all(d.features), lambda i: f"ad {d.ids.str(i)!r}")


def rebase(merged: View, at: View, now: View) -> View | None:
    """``merged`` (= merge(at)) plus what was written between ``at`` and ``now`` (same base), as the
    view that follows ``now``; None when the model versions changed meanwhile (merge again)."""
    if now.base is not at.base or now.models.keys() != at.models.keys():
        return None
    d = now.delta
    fresh = np.flatnonzero(d.born > at.version)  # upserted after `at`
    gone = []
    if len(at.delta):  # in at's delta but no longer in now's (deleted since; re-upserted ones are fresh)
        r = d.table.rows_of_hashes(at.delta.hashes)
        gone.append(at.delta.hashes[(r < 0) | (r >= len(d))])
    died = np.setdiff1d(now.dead, at.dead, assume_unique=True)  # base rows deleted or overridden since
    gone.append(at.base.hashes[died])
    touched = np.concatenate([d.hashes[fresh], *gone])
    rows = merged.base.table.rows_of_hashes(touched)
    delta = _segment(d.ids.take(fresh), d.features.take(fresh), d.hashes[fresh], d.born[fresh],
                     {k: _take_part(p, fresh) for k, p in d.parts.items()}, grow=True)
    return View(now.version, merged.base, np.unique(rows[rows >= 0]), delta, now.models)  # same catalog


def read_jsonl(path: str | Path) -> tuple[list, list[int]]:
    """The ads of a JSONL file of {"id": ..., "features": {...}} and their line numbers."""
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
    return ads, lines


class Catalog:
    """One catalog with a current view and a writers' lock (tests, benchmarks, tools); the service
    holds its views inside its serving snapshot instead (service/state.py)."""

    def __init__(self, models: Iterable[Model] = ()):
        self._lock = threading.Lock()
        self.view = empty({m.name: m for m in models})

    def __len__(self) -> int:
        return self.view.size

    @property
    def version(self) -> int:
        return self.view.version

    def get(self, ad_id: str) -> dict | None:
        return self.view.get(ad_id)

    def validate(self, ads: Sequence, where=lambda i: f"ad #{i}") -> None:
        prepare(self.view, ads, where)

    def upsert(self, ads: Sequence, where=lambda i: f"ad #{i}", progress: bool = False) -> View:
        with self._lock:
            self.view = upsert(self.view, prepare(self.view, ads, where, progress))
            return self.view

    def delete(self, ad_ids: Iterable[str]) -> tuple[View, list[str]]:
        with self._lock:
            self.view, removed = delete(self.view, ad_ids)
            return self.view, removed

    def set_model(self, model: Model, progress: bool = False) -> View:
        with self._lock:
            self.view = with_model(self.view, model.name, model, progress=progress)
            return self.view

    def remove_model(self, name: str) -> View:
        with self._lock:
            self.view = without_model(self.view, name)
            return self.view

    def merge(self) -> View:
        at = self.view
        merged = merge(at)
        with self._lock:
            self.view = rebase(merged, at, self.view) or self.view
            return self.view

    def load_jsonl(self, path: str | Path, progress: bool = True) -> View:
        """Upsert every line of a JSONL file; errors name the line."""
        ads, lines = read_jsonl(path)
        return self.upsert(ads, where=lambda i: f"{path} line {lines[i]}", progress=progress)
