"""Data sets on disk: raw file -> two streaming passes -> memory-mapped encoded arrays.

Protocol of the DPLR-FwFM paper, Sec. 5.1: an 80/10/10 train/valid/test split (random, or
in file order for the chronological Criteo / Avazu files: :mod:`training.splits`);
values seen fewer than ``min_count`` (10) times in the *training* split, and values never
seen there, map to their field's rare id; missing values have their own id; numbers are
binned by floor(ln(x)^2).  The value -> id definition is :class:`adrank.core.preprocess.Preprocessor`.

``prepare`` streams the raw file twice in chunks, so a data set larger than RAM works:
pass 1 splits rows and counts tokens per field on train rows; pass 2 encodes each chunk and
writes it into preallocated ``np.lib.format.open_memmap`` files.  The result is cached under
``cache_dir`` (default ``.adrank/cache``; the CLI passes ``$ADRANK_CACHE``) keyed by (dataset, absolute path, size, mtime,
seed, min_count, max_rows), written to a temporary directory and renamed into place, so a
crash never leaves a half-written cache (the split kind is part of the key).  Layout (docs/internals.md)::

    DIR/preprocess.json  DIR/vocab.npz
    DIR/{train,valid,test}_X.npy   int32 [N, S]
    DIR/{train,valid,test}_y.npy   float32 [N]

A random split puts row ``i`` by a stable hash of (seed, i), so it is the same whatever the
chunk size, and :mod:`training.generate` can report its planted model's metrics per split.
Seed 0 is the trainer's default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from adrank.core.datasets import DATASETS
from adrank.core.gcpause import gc_paused
from adrank.core.hashing import hash_tokens
from adrank.core.preprocess import EncodeError, Preprocessor, Vocab, field_tokens
from adrank.core.schema import Schema
from training.datasets.io import DataError
from training.datasets.movielens import movielens_files, read_movielens
from training.datasets.readers import read_avazu, read_criteo, read_synthetic_tsv
from training.datasets.schemas import AVAZU, CRITEO, MOVIELENS
from training.splits import SPLIT_NAMES, Splitter, count_rows, split_of_rows  # noqa: F401 (re-exported)

SPLITS = SPLIT_NAMES
CACHE_VERSION = 2


# --- schemas and raw readers ------------------------------------------------------------------
def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")


def synthetic_files(path) -> tuple[Path, Path]:
    """(schema.json, data file) of a generated directory."""
    root = Path(path)
    if not (root / "schema.json").is_file():
        raise DataError(f"{root}: not a generated data set (no schema.json); run `adrank generate`")
    for name in ("data.tsv.gz", "data.tsv"):
        if (root / name).is_file():
            return root / "schema.json", root / name
    raise DataError(f"{root}: no data.tsv.gz or data.tsv")


def schema_for(dataset: str, path=None) -> Schema:
    """The declared schema of a data set (synthetic: read from ``DIR/schema.json``)."""
    _check_dataset(dataset)
    if dataset == "synthetic":
        schema_p, _ = synthetic_files(path)
        try:
            return Schema.from_dict(json.loads(schema_p.read_text()))
        except (json.JSONDecodeError, ValueError) as exc:
            raise DataError(f"{schema_p}: invalid schema ({exc})") from None
    return {"criteo": CRITEO, "avazu": AVAZU, "movielens": MOVIELENS}[dataset]


def read_raw(dataset: str, path, chunk_rows: int = 65536, max_rows: int | None = None
             ) -> Iterator[tuple[dict[str, list], np.ndarray]]:
    """Raw columns (field name -> list of raw values) and float32 labels, chunk by chunk."""
    _check_dataset(dataset)
    if dataset == "criteo":
        return read_criteo(path, chunk_rows, max_rows)
    if dataset == "avazu":
        return read_avazu(path, chunk_rows, max_rows)
    if dataset == "movielens":
        return read_movielens(path, chunk_rows, max_rows)
    _, data_p = synthetic_files(path)
    return read_synthetic_tsv(data_p, schema_for("synthetic", path), chunk_rows, max_rows)


def source_files(dataset: str, path) -> list[Path]:
    """The raw files a data set is read from (for cache keys)."""
    _check_dataset(dataset)
    if dataset == "movielens":
        return movielens_files(path)
    if dataset == "synthetic":
        return list(synthetic_files(path))
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    return [p]




# --- pass 1: counts ----------------------------------------------------------------------------
class _Counter:
    """Streaming (hash -> count) per field: chunk uniques merged every few chunks."""

    def __init__(self):
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, hashes: np.ndarray, counts: np.ndarray) -> None:
        if len(hashes):
            self.parts.append(self._merge([hashes], [counts]))
        if len(self.parts) >= 16:
            self.parts = [self.result()]

    @staticmethod
    def _merge(keys: list[np.ndarray], counts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        uniq, inv = np.unique(np.concatenate(keys), return_inverse=True)
        return uniq, np.bincount(inv, weights=np.concatenate(counts), minlength=len(uniq)).astype(np.int64)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.parts:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64)
        return self._merge([k for k, _ in self.parts], [c for _, c in self.parts])


def _distinct(f, col) -> tuple[list, np.ndarray]:
    """(distinct raw values, inverse index) of a column; multi-valued lists keyed as tuples.

    The readers yield homogeneous columns (str/int/None, or lists of str), so values that
    compare equal also tokenize equally; each distinct value is then tokenized only once.
    """
    index: dict = {}
    if f.type == "multi":
        inv = [index.setdefault(tuple(v) if isinstance(v, list) else v, len(index)) for v in col]
        uniq = [list(k) if isinstance(k, tuple) else k for k in index]
    else:
        inv = [index.setdefault(v, len(index)) for v in col]
        uniq = list(index)
    return uniq, np.asarray(inv, dtype=np.int64)


def _train_counts(schema: Schema, cols: dict, train: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(token hashes, counts) of the train rows per field (a multi field counts each distinct value)."""
    out = []
    rows = np.flatnonzero(train)
    for f in schema.fields:
        col = cols.get(f.name) or [None] * len(train)
        uniq, inv = _distinct(f, [col[i] for i in rows])
        n_of = np.bincount(inv, minlength=len(uniq))
        toks = field_tokens(f, uniq)
        if f.type == "multi":
            flat = [t for ts in toks for t in ts]
            counts = np.repeat(n_of, [len(ts) for ts in toks])
        else:
            keep = [i for i, t in enumerate(toks) if t is not None]
            flat, counts = [toks[i] for i in keep], n_of[keep]
        out.append((hash_tokens(flat), counts))
    return out


def encode_chunk(pp: Preprocessor, cols: dict, n_rows: int) -> np.ndarray:
    """``pp.encode_columns(cols)``, calling the preprocessor once per distinct value of a column."""
    blocks = []
    for f, fld in enumerate(pp.schema.fields):
        col = cols.get(fld.name)
        if col is None:
            col = [None] * n_rows
        elif len(col) != n_rows:
            raise EncodeError(fld.name, f"column has {len(col)} values, expected {n_rows}")
        uniq, inv = _distinct(fld, col)
        blocks.append(pp.encode_field(f, uniq)[inv])
    return np.ascontiguousarray(np.concatenate(blocks, axis=1))


def _count_pass(dataset, path, schema, splitter, max_rows, chunk_rows, progress):
    counters = [_Counter() for _ in schema.fields]
    n_split = np.zeros(3, dtype=np.int64)
    start = 0
    bar = tqdm(desc=f"{dataset}: pass 1/2 (counting)", unit=" rows", disable=None if progress else True)
    for cols, y in read_raw(dataset, path, chunk_rows, max_rows):
        n = len(y)
        split = splitter.of(start, n)
        n_split += np.bincount(split, minlength=3)
        for c, (h, k) in zip(counters, _train_counts(schema, cols, split == 0), strict=True):
            c.add(h, k)
        start += n
        bar.update(n)
    bar.close()
    return [c.result() for c in counters], n_split


# --- the encoded directory -------------------------------------------------------------------
@dataclass
class EncodedData:
    """An encoded data set directory; arrays are opened as read-only memory maps."""

    path: Path
    preprocessor: Preprocessor
    target: str
    info: dict = dataclasses.field(default_factory=dict)  # dataset, source, split, rows (preprocess.json)

    @property
    def schema(self) -> Schema:
        return self.preprocessor.schema

    @property
    def n_features(self) -> int:
        return self.preprocessor.vocab.n_features

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(X int32 [N, S], y float32 [N]) of 'train', 'valid' or 'test', memory-mapped."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return (np.load(self.path / f"{name}_X.npy", mmap_mode="r"),
                np.load(self.path / f"{name}_y.npy", mmap_mode="r"))


def load_encoded(path) -> EncodedData:
    """Open an encoded data set directory written by :func:`prepare`."""
    path = Path(path)
    need = ["preprocess.json", "vocab.npz"] + [f"{s}_{a}.npy" for s in SPLITS for a in "Xy"]
    absent = [n for n in need if not (path / n).is_file()]
    if absent:
        raise DataError(f"{path}: not an encoded data set (missing {', '.join(absent)})")
    desc = json.loads((path / "preprocess.json").read_text())
    with np.load(path / "vocab.npz") as z:
        pp = Preprocessor.from_state(desc, dict(z))
    info = {k: desc[k] for k in ("dataset", "source", "split", "rows") if k in desc}
    return EncodedData(path, pp, pp.schema.target, info)


def _cache_key(dataset, path, seed, min_count, max_rows, split) -> str:
    files = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in source_files(dataset, path)]
    key = json.dumps([CACHE_VERSION, dataset, str(Path(path).resolve()), files, seed, min_count, max_rows, split])
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def default_cache_dir() -> Path:
    return Path.cwd() / ".adrank" / "cache"


def prepare(dataset: str, path, seed: int = 0, min_count: int = 10, max_rows: int | None = None,
            cache_dir=None, progress: bool = True, chunk_rows: int = 65536, split: str = "random") -> EncodedData:
    """Encode a raw data set to memory-mapped arrays (or reuse the cached encoding).

    ``split``: "random" (by a hash of (``seed``, row)) or "ordered" (file order; ``seed`` unused).
    """
    _check_dataset(dataset)
    if split not in ("random", "ordered"):
        raise DataError(f"split must be 'random' or 'ordered', got {split!r}")
    if split == "ordered":
        seed = 0
    if min_count < 1:
        raise DataError(f"min_count must be >= 1, got {min_count}")
    if max_rows is not None and max_rows < 1:
        raise DataError(f"max_rows must be >= 1, got {max_rows}")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = cache_dir / f"{dataset}-{_cache_key(dataset, path, seed, min_count, max_rows, split)}"
    if (final / "preprocess.json").is_file():
        return load_encoded(final)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=cache_dir))
    try:
        with gc_paused():
            _write_encoded(tmp, dataset, path, seed, min_count, max_rows, chunk_rows, progress, split)
        tmp.chmod(0o755)  # mkdtemp makes it private
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first: keep its copy
            if not (final / "preprocess.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_encoded(final)


def _write_encoded(out: Path, dataset, path, seed, min_count, max_rows, chunk_rows, progress, split) -> None:
    schema = schema_for(dataset, path)
    splitter = Splitter(split, seed, count_rows(dataset, path, max_rows) if split == "ordered" else None)
    counts, n_split = _count_pass(dataset, path, schema, splitter, max_rows, chunk_rows, progress)
    if n_split.sum() == 0:
        raise DataError(f"{path}: no data rows")
    vocab = Vocab.from_counts([h for h, _ in counts], [c for _, c in counts], min_count)
    pp = Preprocessor(schema, vocab)
    S = schema.n_slots
    X = [np.lib.format.open_memmap(out / f"{s}_X.npy", "w+", np.int32, (int(n), S))
         for s, n in zip(SPLITS, n_split, strict=True)]
    Y = [np.lib.format.open_memmap(out / f"{s}_y.npy", "w+", np.float32, (int(n),))
         for s, n in zip(SPLITS, n_split, strict=True)]
    pos = np.zeros(3, dtype=np.int64)
    start = 0
    bar = tqdm(total=int(n_split.sum()), desc=f"{dataset}: pass 2/2 (encoding)", unit=" rows",
               disable=None if progress else True)
    for cols, y in read_raw(dataset, path, chunk_rows, max_rows):
        n = len(y)
        split = splitter.of(start, n)
        enc = encode_chunk(pp, cols, n)
        for s in range(3):
            rows = split == s
            k = int(rows.sum())
            X[s][pos[s] : pos[s] + k] = enc[rows]
            Y[s][pos[s] : pos[s] + k] = y[rows]
            pos[s] += k
        start += n
        bar.update(n)
    bar.close()
    if not np.array_equal(pos, n_split):
        raise DataError(f"{path}: changed while it was being read ({pos.sum()} rows, then {n_split.sum()})")
    for a in X + Y:
        a.flush()
    del X, Y
    desc, arrays = pp.to_state()
    desc.update(min_count=min_count, dataset=dataset, source=str(Path(path).resolve()), seed=seed,
                max_rows=max_rows, split=splitter.describe(),
                rows={s: int(n) for s, n in zip(SPLITS, n_split, strict=True)})
    np.savez(out / "vocab.npz", **arrays)
    (out / "preprocess.json").write_text(json.dumps(desc, indent=1))


def encode_file(dataset: str, path, preprocessor: Preprocessor, max_rows: int | None = None,
                chunk_rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Encode a whole raw file in memory with a *given* preprocessor: (X int32 [N, S], y float32 [N]).

    For evaluating a trained model on new data: values the model never kept map to rare ids.
    """
    theirs = [f.name for f in preprocessor.schema.fields]
    ours = [f.name for f in schema_for(dataset, path).fields]
    if theirs != ours:
        raise DataError(f"{path}: {dataset} fields {ours} do not match the model's fields {theirs}")
    Xs, ys = [], []
    with gc_paused():
        for cols, y in read_raw(dataset, path, chunk_rows, max_rows):
            Xs.append(encode_chunk(preprocessor, cols, len(y)))
            ys.append(y)
    if not Xs:
        raise DataError(f"{path}: no data rows")
    return np.concatenate(Xs), np.concatenate(ys)
