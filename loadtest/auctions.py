"""Realistic /v1/rank request bodies for load tests.

Where raw values come from.  An artifact's vocabulary stores only 64-bit hashes of tokens, so
a load generator cannot read raw values back out of it.  We use a *values file*: JSON
``{"schema": <schema dict>, "values": {field name: [raw values, most popular first]}}``.  Two
sources write one:

* ``loadtest.models.build_models`` invents each field's raw values itself (Criteo-like 8-hex
  strings, integer counts), builds the vocabulary from them and writes ``values.json`` next to
  the artifacts — popularity order is the order it planted;
* :func:`values_from_data` reads an ``adrank generate`` data directory (``data.tsv.gz`` +
  ``schema.json``) and ranks each field's raw values by how often they occur there, for models
  trained on that data.

The generator then draws, per request: a candidate count from a log-normal distribution (long
tail: median ``median``, shape ``sigma``, clipped to [1, ``max_candidates``]); each field's value
by Zipf popularity over its values list (rank p with probability ~ (p + 1)^-s); with probability
``unseen`` a value absent from the vocabulary (encodes to the rare id) and with ``missing`` a
null.  Requests are built once into a *pool* of encoded bodies (``write_pool``), so every model
of a comparison receives byte-identical traffic and the load generator spends no CPU building
JSON during the run.
"""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import msgspec
import numpy as np


def values_from_data(data_dir, max_rows: int = 100_000, keep: int = 50_000) -> dict:
    """The values file of an ``adrank generate`` directory: raw values ranked by frequency."""
    data_dir = Path(data_dir)
    schema = json.loads((data_dir / "schema.json").read_text())
    path = data_dir / "data.tsv.gz" if (data_dir / "data.tsv.gz").exists() else data_dir / "data.tsv"
    opener = gzip.open if path.suffix == ".gz" else open
    fields = schema["fields"]
    counts = {f["name"]: Counter() for f in fields}
    with opener(path, "rt") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        cols = [(i, f["name"], f["type"] == "multi") for i, name in enumerate(header)
                for f in fields if f["name"] == name]
        for n, line in enumerate(fh):
            if n >= max_rows:
                break
            parts = line.rstrip("\n").split("\t")
            for i, name, multi in cols:
                raw = parts[i] if i < len(parts) else ""
                for v in (raw.split("|") if multi else [raw]):
                    if v:
                        counts[name][v] += 1
    return {"schema": schema, "values": {name: [v for v, _ in c.most_common(keep)] for name, c in counts.items()}}


def load_values(path) -> dict:
    """A values file (JSON) or an ``adrank generate`` data directory."""
    path = Path(path)
    if path.is_dir():
        if not (path / "schema.json").exists():
            raise ValueError(f"{path}: a values directory must be an `adrank generate` output (no schema.json)")
        return values_from_data(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the values file: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("schema"), dict) or not isinstance(doc.get("values"), dict):
        raise ValueError(f"{path}: a values file needs 'schema' and 'values' objects")
    return doc


class AuctionGenerator:
    """Draws /v1/rank bodies: ``{"context": {...}, "ads": [{"id", "features"}, ...]}``."""

    def __init__(self, values_doc: dict, seed: int = 0, median: float = 200, sigma: float = 1.0,
                 max_candidates: int = 5000, zipf_s: float = 1.1, unseen: float = 0.02, missing: float = 0.01):
        if median < 1 or sigma < 0 or max_candidates < 1 or not (0 <= unseen <= 1 and 0 <= missing <= 1):
            raise ValueError("need median >= 1, sigma >= 0, max_candidates >= 1 and rates in [0, 1]")
        self.rng = np.random.default_rng(seed)
        self.median, self.sigma, self.max_candidates = median, sigma, max_candidates
        self.unseen, self.missing = unseen, missing
        self.fields = values_doc["schema"]["fields"]
        self.values, self.cdf = {}, {}
        for f in self.fields:
            vals = list(values_doc["values"].get(f["name"], []))
            if not vals:
                raise ValueError(f"values file has no values for field {f['name']!r}")
            self.values[f["name"]] = vals
            w = 1.0 / np.arange(1, len(vals) + 1) ** zipf_s
            self.cdf[f["name"]] = np.cumsum(w) / w.sum()
        self.n = 0

    def n_candidates(self) -> int:
        n = self.median * np.exp(self.sigma * self.rng.standard_normal())
        return int(np.clip(round(n), 1, self.max_candidates))

    def column(self, f: dict, n: int) -> list:
        """n raw values of field f: Zipf-popular known values, some unseen, some missing."""
        name, vals = f["name"], self.values[f["name"]]
        ranks = np.minimum(np.searchsorted(self.cdf[name], self.rng.random(n)), len(vals) - 1)
        u = self.rng.random(n)
        out = []
        for r, x in zip(ranks.tolist(), u.tolist(), strict=True):
            if x < self.missing:
                out.append(None)
            elif x < self.missing + self.unseen:
                out.append(self._unseen(vals[0]))
            else:
                out.append(vals[r])
        if f["type"] == "multi":  # 1..max_values distinct values per row
            width = self.rng.integers(1, f.get("max_values", 1) + 1, n)
            out = [None if v is None else list(dict.fromkeys([v] + [vals[int(j)] for j in
                   np.minimum(np.searchsorted(self.cdf[name], self.rng.random(w - 1)), len(vals) - 1)]))
                   for v, w in zip(out, width.tolist(), strict=True)]
        return out

    def _unseen(self, like):
        """A value the vocabulary has never seen, of the same type as the field's values."""
        if isinstance(like, (int, float)) and not isinstance(like, bool):
            return int(10**12 + self.rng.integers(0, 10**6))  # a count bin no training row reached
        return f"unseen-{int(self.rng.integers(0, 2**62)):x}"

    def request(self, catalog_size: int | None = None) -> dict:
        """One auction: a context and its candidates, inline ``{"id", "features"}`` ads, or with
        ``catalog_size`` distinct ads by id alone drawn uniformly from a catalog of ``ad-0`` ..
        ``ad-{catalog_size - 1}`` (see :meth:`catalog_ads`)."""
        n = self.n_candidates()
        ctx = {f["name"]: self.column(f, 1)[0] for f in self.fields if f["role"] == "context"}
        if catalog_size is not None:
            picks = self.rng.choice(catalog_size, min(n, catalog_size), replace=False)
            return {"context": ctx, "ads": [{"id": f"ad-{i}"} for i in picks.tolist()]}
        items = {f["name"]: self.column(f, n) for f in self.fields if f["role"] == "item"}
        base = self.n
        self.n += n
        ads = [{"id": f"ad-{base + i}", "features": {name: col[i] for name, col in items.items()}}
               for i in range(n)]
        return {"context": ctx, "ads": ads}


    def catalog_ads(self, count: int, chunk: int = 10_000):
        """``count`` catalog ads ``{"id": "ad-<i>", "features": {item field: raw value}}``, item
        values drawn like inline ads' (Zipf-popular, some unseen, some missing), in chunks."""
        items = [f for f in self.fields if f["role"] == "item"]
        for start in range(0, count, chunk):
            n = min(chunk, count - start)
            cols = {f["name"]: self.column(f, n) for f in items}
            for i in range(n):
                yield {"id": f"ad-{start + i}", "features": {name: col[i] for name, col in cols.items()}}


@contextmanager
def open_replacing(path, mode: str = "wb"):
    """An open temporary file beside ``path`` that replaces it once the block completes (removed on
    an error: no half-written pool).  adrank.core.files.replacing does this for the rest of the project;
    this module and the locustfile also run in the Locust image, which has no adrank package."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as fh:
            yield fh
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_catalog(gen: AuctionGenerator, path, count: int, progress: bool = False) -> None:
    """``count`` catalog ads as JSONL (``adrank serve --catalog``), written atomically."""
    from tqdm import tqdm

    enc = msgspec.json.Encoder()
    with open_replacing(path) as fh:
        for ad in tqdm(gen.catalog_ads(count), total=count, desc="ad catalog", disable=None if progress else True):
            fh.write(enc.encode(ad) + b"\n")


def write_pool(gen: AuctionGenerator, path, count: int, progress: bool = False,
               catalog_size: int | None = None) -> dict:
    """``count`` request bodies, one JSON object per line (no ``model`` key); returns stats.
    ``catalog_size``: ads by id from a catalog of that many ads (:meth:`AuctionGenerator.request`)."""
    from tqdm import tqdm

    enc = msgspec.json.Encoder()
    sizes = []
    with open_replacing(path) as fh:
        for _ in tqdm(range(count), desc="request pool", disable=None if progress else True):
            req = gen.request(catalog_size)
            sizes.append(len(req["ads"]))
            fh.write(enc.encode(req) + b"\n")
    s = np.asarray(sizes)
    return {"requests": count, "candidates_mean": float(s.mean()), "candidates_p50": float(np.median(s)),
            "candidates_p99": float(np.percentile(s, 99)), "candidates_max": int(s.max())}


def with_model(body: bytes, model: str) -> bytes:
    """Prefix a pooled body ``{...}`` with ``"model": NAME`` (no re-encoding)."""
    return b'{"model":' + msgspec.json.encode(model) + b"," + body.lstrip()[1:]
