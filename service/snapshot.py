"""The serving snapshot: everything one request is answered from, immutable, read once.

A :class:`Snapshot` holds every served :class:`ModelVersion` (its arrays in private memory, its
encoder, fast-path scanner and kernels), the ad catalog's view with per-ad parts computed for
exactly those versions (parts are keyed by :attr:`ModelVersion.key`), the default model name
and the replication-log position it reflects.  A request reads ``state.snapshot`` once and takes
everything from that object; a reload or a catalog write builds the next snapshot off the request
path and publishes it with one assignment (service/state.py), so no reply mixes two versions.

``models`` maps a served name to its *current* version; ``extra`` holds the versions loaded beside
it (``{"keep": true}``), ``traffic`` the name's split and shadow (service/traffic.py).
:meth:`Snapshot.route` chooses the version that answers one request.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from service.catalog.segments import View
from service.traffic import Split, UnknownVersion, key_point

if TYPE_CHECKING:
    from service.catalog.store import Model
    from service.ranker import Ranker


class UnknownModel(LookupError):
    def __init__(self, name: str, known: list[str]):
        super().__init__(f"unknown model {name!r}; loaded models: {', '.join(known) or 'none'}")
        self.name = name


@dataclass(frozen=True)
class ModelVersion:
    """One loaded, verified and warmed model version under a served name."""

    name: str
    ranker: Ranker  # encoder, scorer, fast-path scanner, arrays
    catalog_model: Model  # the catalog's view of the same arrays
    path: Path | None = None
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0

    @property
    def version(self) -> str:
        return self.ranker.version

    @property
    def calibration(self):
        """The raw -> CTR map of this version (service/link.py; the identity without one)."""
        return self.ranker.ctr_map

    @property
    def key(self) -> str:
        """The catalog's key for this version's per-ad parts."""
        return f"{self.name}@{self.version}"

    @property
    def schema(self):
        return self.ranker.schema

    def info(self) -> dict:
        return {**self.ranker.info(), "name": self.name, "path": None if self.path is None else str(self.path),
                "loaded_at": round(self.loaded_at, 3)}


@dataclass(frozen=True)
class Snapshot:
    models: dict[str, ModelVersion]
    default: str
    catalog: View
    position: int = 0  # the last replication-log entry reflected here
    published: float = field(default_factory=time.time)
    extra: dict[str, dict[str, ModelVersion]] = field(default_factory=dict)  # name -> version -> loaded beside
    traffic: dict[str, Split] = field(default_factory=dict)  # name -> split (absent: the current version)

    def versions(self, name: str) -> dict[str, ModelVersion]:
        """Every loaded version of ``name``, the current one first."""
        cur = self.models[name]
        return {cur.version: cur, **{v: mv for v, mv in self.extra.get(name, {}).items() if v != cur.version}}

    def every_version(self) -> list[ModelVersion]:
        """Every loaded version of every name (the catalog holds parts for each)."""
        return [mv for name in self.models for mv in self.versions(name).values()]

    def route(self, name: str | None, version: str | None = None, key: str | None = None,
              draw=random.random) -> ModelVersion:
        """The version that answers a request naming ``name`` (module doc of service/traffic.py):
        raises UnknownModel / UnknownVersion."""
        cur = self.model(name)
        if version is not None:
            if version == cur.version:
                return cur
            mv = self.extra.get(cur.name, {}).get(version)
            if mv is None:
                raise UnknownVersion(cur.name, version, list(self.versions(cur.name)))
            return mv
        split = self.traffic.get(cur.name)
        if split is None or not split.weights:
            return cur
        extra = self.extra.get(cur.name, {})
        v = split.pick(key_point(cur.name, key) if key is not None else draw(),
                       extra.keys() | {cur.version})
        return cur if v is None or v == cur.version else extra[v]

    def shadow_of(self, mv: ModelVersion, draw=random.random) -> ModelVersion | None:
        """The shadow version to score this request on too, or None (no shadow, not sampled, or
        the shadow is the version that answered)."""
        split = self.traffic.get(mv.name)
        if split is None or split.shadow is None or split.shadow == mv.version or split.shadow_fraction <= 0:
            return None
        if split.shadow_fraction < 1.0 and draw() >= split.shadow_fraction:
            return None
        return self.versions(mv.name).get(split.shadow)

    def model(self, name: str | None) -> ModelVersion:
        try:
            return self.models[self.default if name is None else name]
        except KeyError:
            raise UnknownModel(self.default if name is None else name, list(self.models)) from None

    def get(self, name: str | None) -> ModelVersion | None:
        """:meth:`model`, or None for an unknown name (the fast path's probe)."""
        return self.models.get(self.default if name is None else name)


def of_rankers(rankers: dict, ads: list | None = None, progress: bool = False) -> Snapshot:
    """A snapshot of rankers loaded already, with ``ads`` ({"id", "features"}) in its catalog: no
    log and no threads (benchmarks, tools).  The first ranker is the default."""
    from service.catalog import store

    models = {n: ModelVersion(n, r, store.Model.from_ranker(r, n)) for n, r in rankers.items()}
    view = store.empty({mv.key: mv.catalog_model for mv in models.values()})
    if ads:
        view = store.merge(store.upsert(view, store.prepare(view, ads, progress=progress)))
    return Snapshot(models, next(iter(models)), view)
