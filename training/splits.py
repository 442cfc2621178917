"""Which raw row goes to train / valid / test, and the raw rows of one split written back out.

Two ways to split 80/10/10 (``adrank.core.train_config.SPLITS``):

* ``random``: row i goes by a stable hash of (seed, i) (:func:`split_of_rows`) -- the DPLR-FwFM
  paper's protocol (Sec. 5.1), right when rows are exchangeable (generated data, MovieLens
  ratings, which are sorted by user).
* ``ordered``: the first 80% of rows train, the next 10% validate, the last 10% test.  Criteo
  and Avazu files are in time order, so this is the held-out set a user would trust: the
  model is judged on what happens after the rows it learned from.  The split needs the row
  count first (:func:`count_rows`, one pass over the raw lines).

``write_split`` writes the raw rows of one split in the input's own format, so a held-out file
can be scored with ``adrank evaluate`` (``adrank train ... --test-out FILE``).
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np

from adrank.core.files import replacing
from training.datasets.io import DataError, iter_lines
from training.datasets.movielens import movielens_file

SPLIT_NAMES = ("train", "valid", "test")
HEADER = {"criteo": False, "avazu": True, "synthetic": True, "movielens": False}


def split_of_rows(idx: np.ndarray, seed: int) -> np.ndarray:
    """uint8 split of each row index: 0 train (80%), 1 valid (10%), 2 test (10%).

    splitmix64 of ``seed * golden + i``: depends only on (seed, i), never on chunking.
    """
    with np.errstate(over="ignore"):
        h = np.asarray(idx, dtype=np.uint64) + np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    bucket = h % np.uint64(10)
    return np.where(bucket < 8, 0, np.where(bucket == 8, 1, 2)).astype(np.uint8)


def ordered_bounds(total: int) -> tuple[int, int]:
    """(first valid row, first test row) of an ordered split of ``total`` rows."""
    return int(total * 0.8), int(total * 0.9)


class Splitter:
    """``of(start, n)``: the split of rows start..start+n-1 under one split kind."""

    def __init__(self, kind: str, seed: int = 0, total: int | None = None):
        if kind not in ("random", "ordered"):
            raise ValueError(f"split must be 'random' or 'ordered', got {kind!r}")
        if kind == "ordered" and total is None:
            raise ValueError("an ordered split needs the number of rows")
        self.kind, self.seed, self.total = kind, seed, total

    def of(self, start: int, n: int) -> np.ndarray:
        idx = np.arange(start, start + n)
        if self.kind == "random":
            return split_of_rows(idx, self.seed)
        v, t = ordered_bounds(self.total)
        return np.where(idx < v, 0, np.where(idx < t, 1, 2)).astype(np.uint8)

    def describe(self) -> dict:
        return {"kind": self.kind, "seed": self.seed if self.kind == "random" else None, "rows": self.total}


def data_file(dataset: str, path) -> Path:
    """The file whose lines are the data rows (MovieLens: ratings; generated: data.tsv[.gz])."""
    p = Path(path)
    if dataset == "movielens":
        return movielens_file(p, "ratings")
    if dataset == "synthetic":
        for name in ("data.tsv.gz", "data.tsv"):
            if (p / name).is_file():
                return p / name
        raise DataError(f"{p}: no data.tsv.gz or data.tsv")
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    return p


def _data_lines(dataset: str, path):
    """(raw line, header line or None) iterator over the data rows of the raw input."""
    lines = iter_lines(data_file(dataset, path), "utf-8")
    header = None
    if HEADER[dataset]:
        try:
            header = next(lines)[1]
        except StopIteration:
            raise DataError(f"{data_file(dataset, path)}: empty file, expected a header row") from None
    return lines, header


def count_rows(dataset: str, path, max_rows: int | None = None) -> int:
    """Data rows of a raw input (as the readers count them), at most ``max_rows``."""
    lines, _ = _data_lines(dataset, path)
    n = 0
    for _ in lines:
        n += 1
        if max_rows is not None and n >= max_rows:
            break
    return n


def write_split(dataset: str, path, out, splitter: Splitter, which: str = "test",
                max_rows: int | None = None) -> int:
    """Write the raw rows of split ``which`` to ``out`` in the input's format; returns the count.

    Criteo / Avazu: one file (gzip when ``out`` ends in .gz; Avazu keeps its header).  MovieLens
    and generated data: a directory like the input (the ratings or data.tsv lines of the split,
    the users/movies tables or schema.json copied beside them), readable with the same
    ``--dataset``.  Written atomically: a crash leaves no half file.
    """
    code = SPLIT_NAMES.index(which)
    lines, header = _data_lines(dataset, path)
    out = Path(out)
    if dataset in ("movielens", "synthetic"):
        out.mkdir(parents=True, exist_ok=True)
        src = Path(path)
        if dataset == "movielens":
            for name in ("users", "movies"):
                f = movielens_file(src, name)
                shutil.copyfile(f, out / f.name)
            target = out / "ratings.dat.gz"
        else:
            shutil.copyfile(src / "schema.json", out / "schema.json")
            target = out / "data.tsv.gz"
    else:
        target = out
    n = 0
    with replacing(target) as tmp:
        opener = gzip.open(tmp, "wt", compresslevel=6) if target.suffix == ".gz" else open(tmp, "w")
        with opener as fh:
            if header is not None:
                fh.write(header + "\n")
            i = 0
            buf: list[str] = []
            for _, line in lines:
                if max_rows is not None and i >= max_rows:
                    break
                buf.append(line)
                i += 1
                if len(buf) == 65536:
                    n += _emit(fh, buf, splitter.of(i - len(buf), len(buf)), code)
                    buf = []
            if buf:
                n += _emit(fh, buf, splitter.of(i - len(buf), len(buf)), code)
    return n


def _emit(fh, lines: list[str], split: np.ndarray, code: int) -> int:
    picked = [ln for ln, s in zip(lines, split.tolist(), strict=True) if s == code]
    fh.write("".join(ln + "\n" for ln in picked))
    return len(picked)
