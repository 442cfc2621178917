"""Streaming parsers of the raw formats: each yields ``(columns, labels)`` chunks.

``columns`` maps a schema field name to a list of raw Python values (``str``, ``int``,
``None`` for missing, ``list[str]`` for a multi-valued field); ``labels`` is float32.
Every reader takes ``chunk_rows`` (rows per chunk) and ``max_rows`` (stop after that many
rows) and fails fast on malformed lines (see :mod:`training.datasets.io`).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from adrank.schema import Schema
from training.datasets.io import DataError, bad_line, iter_lines, parse_int, parse_label
from training.datasets.schemas import AVAZU, AVAZU_COLUMNS, CRITEO_CAT, CRITEO_INT

Chunk = tuple[dict[str, list], np.ndarray]


def _limit(lines, max_rows):
    for n, item in enumerate(lines):
        if max_rows is not None and n >= max_rows:
            return
        yield item


def _batches(rows: Iterator, chunk_rows: int):
    """Group an iterator of (values tuple, label) into lists of at most chunk_rows."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    buf = []
    for r in rows:
        buf.append(r)
        if len(buf) == chunk_rows:
            yield buf
            buf = []
    if buf:
        yield buf


def _to_chunk(names, batch) -> Chunk:
    values, labels = zip(*batch, strict=True)
    cols = {n: list(c) for n, c in zip(names, zip(*values, strict=True), strict=True)}
    return cols, np.asarray(labels, dtype=np.float32)


# --- Criteo ---------------------------------------------------------------------------------
CRITEO_N_COLUMNS = 1 + len(CRITEO_INT) + len(CRITEO_CAT)


def read_criteo(path, chunk_rows=65536, max_rows=None) -> Iterator[Chunk]:
    """Criteo DAC TSV: label, I1-I13 (ints, may be negative), C1-C26; empty = missing."""
    path = Path(path)
    names = CRITEO_INT + CRITEO_CAT

    def rows():
        for lineno, line in _limit(iter_lines(path), max_rows):
            p = line.split("\t")
            if len(p) != CRITEO_N_COLUMNS:
                raise bad_line(path, lineno, f"expected {CRITEO_N_COLUMNS} tab-separated columns "
                                             f"(label, I1-I13, C1-C26), got {len(p)}")
            y = parse_label(path, lineno, p[0])
            ints = tuple(parse_int(path, lineno, CRITEO_INT[i], p[1 + i]) for i in range(13))
            cats = tuple(v or None for v in p[14:])
            yield ints + cats, y

    for batch in _batches(rows(), chunk_rows):
        yield _to_chunk(names, batch)


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


def read_avazu(path, chunk_rows=65536, max_rows=None) -> Iterator[Chunk]:
    """Avazu CSV with a header; ``id`` dropped, ``hour`` expanded, ``click`` is the label."""
    path = Path(path)
    names = [f.name for f in AVAZU.fields]
    lines = iter_lines(path)
    try:
        _, header = next(lines)
    except StopIteration:
        raise DataError(f"{path}: empty file, expected an Avazu CSV header") from None
    cols = header.split(",")
    missing = [c for c in AVAZU_COLUMNS if c not in cols]
    if missing:
        raise bad_line(path, 1, f"header lacks Avazu columns {missing}")
    where = {c: i for i, c in enumerate(cols)}
    i_click, i_hour = where["click"], where["hour"]
    i_fields = [where[n] for n in names if n not in ("hour_of_day", "day_of_week")]
    cache: dict = {}

    def rows():
        for lineno, line in _limit(lines, max_rows):
            p = line.split(",")
            if len(p) != len(cols):
                raise bad_line(path, lineno, f"expected {len(cols)} comma-separated columns, got {len(p)}")
            y = parse_label(path, lineno, p[i_click])
            hod, dow = _expand_hour(path, lineno, p[i_hour], cache)
            yield (hod, dow, *(p[i] or None for i in i_fields)), y

    for batch in _batches(rows(), chunk_rows):
        yield _to_chunk(names, batch)


# --- generated data (training/generate.py) ---------------------------------------------------
def read_synthetic_tsv(path, schema: Schema, chunk_rows=65536, max_rows=None) -> Iterator[Chunk]:
    """A TSV with a header naming the label and every field; multi values joined by ``|``."""
    path = Path(path)
    lines = iter_lines(path)
    try:
        _, header = next(lines)
    except StopIteration:
        raise DataError(f"{path}: empty file, expected a header row") from None
    cols = header.split("\t")
    names = [f.name for f in schema.fields]
    missing = [c for c in [schema.label, *names] if c not in cols]
    if missing:
        raise bad_line(path, 1, f"header lacks columns {missing}")
    where = {c: i for i, c in enumerate(cols)}
    i_label = where[schema.label]
    idx = [where[n] for n in names]
    multi = [f.type == "multi" for f in schema.fields]
    binary = schema.target == "binary"

    def rows():
        for lineno, line in _limit(lines, max_rows):
            p = line.split("\t")
            if len(p) != len(cols):
                raise bad_line(path, lineno, f"expected {len(cols)} tab-separated columns, got {len(p)}")
            y = parse_label(path, lineno, p[i_label], binary)
            vals = tuple((p[i].split("|") if p[i] else []) if mv else (p[i] or None)
                         for i, mv in zip(idx, multi, strict=True))
            yield vals, y

    for batch in _batches(rows(), chunk_rows):
        yield _to_chunk(names, batch)
