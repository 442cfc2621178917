"""Streaming parsers of the raw formats: each yields ``(columns, labels)`` chunks.

``columns`` maps a schema field name to a list of raw Python values (``str``, ``int``,
``None`` for missing, ``list[str]`` for a multi-valued field); ``labels`` is float32.
Every reader takes ``chunk_rows`` (rows per chunk) and ``max_rows`` (stop after that many
rows) and fails fast on malformed lines (see :mod:`training.datasets.io`).  Parsing is
column-wise per chunk (split lines, transpose, convert whole columns), which is several
times faster in Python than building one tuple per row.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from adrank.core.schema import Schema
from training.datasets.io import DataError, bad_line, iter_lines, parse_int, parse_label
from training.datasets.schemas import AVAZU, AVAZU_COLUMNS, CRITEO_CAT, CRITEO_INT

Chunk = tuple[dict[str, list], np.ndarray]


def split_chunks(path: Path, lines: Iterator, sep: str, n_cols: int, what: str, chunk_rows: int,
                 max_rows: int | None) -> Iterator[tuple[list[int], list[tuple[str, ...]]]]:
    """(line numbers, columns as tuples of strings) per chunk of at most chunk_rows lines."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    done = 0
    while max_rows is None or done < max_rows:
        want = chunk_rows if max_rows is None else min(chunk_rows, max_rows - done)
        nums, rows = [], []
        for lineno, line in lines:
            nums.append(lineno)
            rows.append(line.split(sep))
            if len(rows) == want:
                break
        if not rows:
            return
        for lineno, p in zip(nums, rows, strict=True):
            if len(p) != n_cols:
                raise bad_line(path, lineno, f"expected {n_cols} {what} columns, got {len(p)}")
        done += len(rows)
        yield nums, list(zip(*rows, strict=True))


def labels_of(path: Path, nums: list[int], col: tuple[str, ...], binary: bool = True) -> np.ndarray:
    """float32 labels of a column; names the first bad line."""
    if binary and set(col) <= {"0", "1"}:
        return (np.asarray(col) == "1").astype(np.float32)
    return np.array([parse_label(path, n, v, binary) for n, v in zip(nums, col, strict=True)], dtype=np.float32)


def ints_of(path: Path, nums: list[int], name: str, col: tuple[str, ...]) -> list:
    """Integer column, empty = None; names the first bad line."""
    try:
        return [int(v) if v else None for v in col]
    except ValueError:
        return [parse_int(path, n, name, v) for n, v in zip(nums, col, strict=True)]


def strs_of(col: tuple[str, ...]) -> list:
    return [v or None for v in col]


# --- Criteo ---------------------------------------------------------------------------------
CRITEO_N_COLUMNS = 1 + len(CRITEO_INT) + len(CRITEO_CAT)


def read_criteo(path, chunk_rows=65536, max_rows=None) -> Iterator[Chunk]:
    """Criteo DAC TSV: label, I1-I13 (ints, may be negative), C1-C26; empty = missing."""
    path = Path(path)
    for nums, c in split_chunks(path, iter_lines(path), "\t", CRITEO_N_COLUMNS,
                                "tab-separated (label, I1-I13, C1-C26)", chunk_rows, max_rows):
        cols = {n: ints_of(path, nums, n, c[1 + i]) for i, n in enumerate(CRITEO_INT)}
        cols.update({n: strs_of(c[14 + i]) for i, n in enumerate(CRITEO_CAT)})
        yield cols, labels_of(path, nums, c[0])


# --- Avazu ----------------------------------------------------------------------------------
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _expand_hour(path, lineno, text, cache) -> tuple[str, str]:
    """YYMMDDHH -> (hour of day "00".."23", day of week "mon".."sun")."""
    got = cache.get(text)
    if got is None:
        try:
            if len(text) != 8 or not text.isdigit():
                raise ValueError
            d = _dt.datetime(2000 + int(text[:2]), int(text[2:4]), int(text[4:6]), int(text[6:8]))
        except ValueError:
            raise bad_line(path, lineno, f"hour must be YYMMDDHH, got {text!r}") from None
        got = cache[text] = (text[6:8], _WEEKDAYS[d.weekday()])
    return got


def _header(path: Path, lines: Iterator, sep: str, required: list[str]) -> list[str]:
    try:
        _, header = next(lines)
    except StopIteration:
        raise DataError(f"{path}: empty file, expected a header row") from None
    cols = header.split(sep)
    missing = [c for c in required if c not in cols]
    if missing:
        raise bad_line(path, 1, f"header lacks columns {missing}")
    return cols


def read_avazu(path, chunk_rows=65536, max_rows=None) -> Iterator[Chunk]:
    """Avazu CSV with a header; ``id`` dropped, ``hour`` expanded, ``click`` is the label."""
    path = Path(path)
    lines = iter_lines(path)
    header = _header(path, lines, ",", list(AVAZU_COLUMNS))
    where = {c: i for i, c in enumerate(header)}
    cache: dict = {}
    for nums, c in split_chunks(path, lines, ",", len(header), "comma-separated", chunk_rows, max_rows):
        hours = [_expand_hour(path, n, h, cache) for n, h in zip(nums, c[where["hour"]], strict=True)]
        cols = {"hour_of_day": [h for h, _ in hours], "day_of_week": [d for _, d in hours]}
        cols.update({f.name: strs_of(c[where[f.name]]) for f in AVAZU.fields if f.name not in cols})
        yield cols, labels_of(path, nums, c[where["click"]])


# --- generated data (training/generate.py) ---------------------------------------------------
def read_synthetic_tsv(path, schema: Schema, chunk_rows=65536, max_rows=None) -> Iterator[Chunk]:
    """A TSV with a header naming the label and every field; multi values joined by ``|``."""
    path = Path(path)
    lines = iter_lines(path)
    header = _header(path, lines, "\t", [schema.label] + [f.name for f in schema.fields])
    where = {c: i for i, c in enumerate(header)}
    for nums, c in split_chunks(path, lines, "\t", len(header), "tab-separated", chunk_rows, max_rows):
        cols = {}
        for f in schema.fields:
            col = c[where[f.name]]
            if f.type == "multi":
                cols[f.name] = [v.split("|") if v else [] for v in col]
            elif f.type == "numeric":
                cols[f.name] = [v or None for v in col]
            else:
                cols[f.name] = strs_of(col)
        yield cols, labels_of(path, nums, c[where[schema.label]], schema.target == "binary")
