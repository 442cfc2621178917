"""Preprocessing defined once: raw value -> token -> stable 64-bit hash -> feature id.

The same code encodes training rows offline and request values online, and its state
(schema + vocabulary arrays) travels inside every checkpoint and artifact, so a value
encodes to the same id everywhere.

Tokens
    categorical  ``str(v)``; integral floats as ints (``5``, ``5.0`` and ``"5"`` agree);
                 ``None``/``""``/NaN are *missing*.
    numeric      ``x > 2`` -> ``"b<floor(ln(x)^2)>"`` (the Criteo winners' binning),
                 otherwise ``"v<floor(x)>"``; ``None``/``""``/NaN are missing.
    multi        a list of categorical values; the first ``max_values`` distinct tokens
                 are kept (order preserved), an empty list is missing.

Feature ids
    Field f owns ids ``[id_offsets[f], id_offsets[f+1])``: ``+0`` = missing, ``+1`` = rare
    (seen < min_count times in the training split, or never seen), ``+2+p`` = the p-th kept
    value in ascending hash order.  Kept hashes are stored sorted per field, so a lookup
    is one ``searchsorted`` and no per-process Python dict is ever built.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from adrank.core.hashing import hash_tokens
from adrank.core.schema import Field, Schema

MISSING = 0
RARE = 1
N_SPECIAL = 2
PAD = -1


class EncodeError(ValueError):
    """A raw value that cannot be encoded; ``field`` names where."""

    def __init__(self, field: str, message: str):
        super().__init__(f"field {field!r}: {message}")
        self.field = field


# --- tokens --------------------------------------------------------------------------------
def _is_missing(v) -> bool:
    return v is None or v == "" or (isinstance(v, float) and math.isnan(v))


def categorical_token(v, field: str = "?") -> str | None:
    if _is_missing(v):
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isinf(v):
            return str(v)
        return str(int(v)) if v.is_integer() else repr(v)
    raise EncodeError(field, f"expected a string or number, got {type(v).__name__}")


def numeric_token(v, field: str = "?") -> str | None:
    if _is_missing(v):
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise EncodeError(field, f"expected a number, got {type(v).__name__}")
    try:
        x = float(v)
    except ValueError:
        raise EncodeError(field, f"expected a number, got {v!r}") from None
    if math.isnan(x):
        return None
    if math.isinf(x):
        raise EncodeError(field, f"expected a finite number, got {v!r}")
    if x > 2:
        return f"b{int(math.floor(math.log(x) ** 2))}"
    return f"v{int(math.floor(x))}"


def multi_tokens(v, max_values: int, field: str = "?") -> list[str]:
    if _is_missing(v):
        return []
    if not isinstance(v, (list, tuple)):
        v = [v]
    out: list[str] = []
    for x in v:
        t = categorical_token(x, field)
        if t is not None and t not in out:
            out.append(t)
            if len(out) == max_values:
                break
    return out


def field_tokens(f: Field, values: Iterable) -> list:
    """Tokens of one column: ``str | None`` per value, or ``list[str]`` for multi fields."""
    if f.type == "numeric":
        return [numeric_token(v, f.name) for v in values]
    if f.type == "multi":
        return [multi_tokens(v, f.max_values, f.name) for v in values]
    return [categorical_token(v, f.name) for v in values]


# --- vocabulary ----------------------------------------------------------------------------
@dataclass
class Vocab:
    """Kept token hashes per field, sorted; ids are positional (see module docstring)."""

    keys: np.ndarray  # uint64, concatenated per field, each slice sorted ascending
    key_offsets: np.ndarray  # int64[m+1]
    id_offsets: np.ndarray  # int64[m+1]; n_features = id_offsets[-1]

    @property
    def n_features(self) -> int:
        return int(self.id_offsets[-1])

    def field_keys(self, f: int) -> np.ndarray:
        return self.keys[self.key_offsets[f] : self.key_offsets[f + 1]]

    @classmethod
    def from_kept(cls, kept_per_field: Sequence[np.ndarray]) -> Vocab:
        """Build from each field's kept hashes (any order, duplicates removed)."""
        parts = [np.unique(np.asarray(k, dtype=np.uint64)) for k in kept_per_field]
        key_offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        id_offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        for f, p in enumerate(parts):
            key_offsets[f + 1] = key_offsets[f] + len(p)
            id_offsets[f + 1] = id_offsets[f] + N_SPECIAL + len(p)
        keys = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
        return cls(keys.astype(np.uint64), key_offsets, id_offsets)

    @classmethod
    def from_counts(cls, hashes_per_field: Sequence[np.ndarray], counts_per_field: Sequence[np.ndarray],
                    min_count: int = 10) -> Vocab:
        """Keep the hashes seen at least ``min_count`` times (counts from the training split)."""
        kept = [np.asarray(h, dtype=np.uint64)[np.asarray(c) >= min_count]
                for h, c in zip(hashes_per_field, counts_per_field, strict=True)]
        return cls.from_kept(kept)

    def lookup(self, f: int, hashes: np.ndarray) -> np.ndarray:
        """Feature ids (int32) of hashes in field f; unknown hashes get the rare id."""
        keys = self.field_keys(f)
        base = int(self.id_offsets[f])
        if len(keys) == 0:
            return np.full(len(hashes), base + RARE, dtype=np.int32)
        pos = np.searchsorted(keys, hashes)
        pos_c = np.minimum(pos, len(keys) - 1)
        hit = keys[pos_c] == hashes
        return np.where(hit, base + N_SPECIAL + pos_c, base + RARE).astype(np.int32)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"vocab_keys": self.keys, "vocab_key_offsets": self.key_offsets,
                "vocab_id_offsets": self.id_offsets}

    @classmethod
    def from_arrays(cls, a: dict) -> Vocab:
        return cls(np.asarray(a["vocab_keys"]), np.asarray(a["vocab_key_offsets"]),
                   np.asarray(a["vocab_id_offsets"]))


# --- the preprocessor ----------------------------------------------------------------------
class Preprocessor:
    """schema + vocab: raw columns -> int32 slot matrix (PAD = -1 in unused multi slots)."""

    def __init__(self, schema: Schema, vocab: Vocab):
        if len(vocab.id_offsets) != schema.m + 1:
            raise ValueError("vocabulary and schema disagree on the number of fields")
        self.schema = schema
        self.vocab = vocab

    def encode_field(self, f: int, values: Sequence) -> np.ndarray:
        """Encode one column of raw values of field ``f``: int32[N, width]."""
        fld = self.schema.fields[f]
        n = len(values)
        base = int(self.vocab.id_offsets[f])
        out = np.full((n, fld.width), PAD, dtype=np.int32)
        toks = field_tokens(fld, values)
        if fld.type == "multi":
            flat = [t for ts in toks for t in ts]
            ids = self.vocab.lookup(f, hash_tokens(flat))
            pos = 0
            for r, ts in enumerate(toks):
                if ts:
                    out[r, : len(ts)] = ids[pos : pos + len(ts)]
                    pos += len(ts)
                else:
                    out[r, 0] = base + MISSING
            return out
        present = [t for t in toks if t is not None]
        ids = self.vocab.lookup(f, hash_tokens(present))
        if len(present) == n:
            out[:, 0] = ids
        else:
            mask = np.fromiter((t is not None for t in toks), dtype=bool, count=n)
            out[:, 0] = base + MISSING
            out[mask, 0] = ids
        return out

    def encode_columns(self, columns: Mapping[str, Sequence], n_rows: int | None = None,
                       fields: Sequence[int] | None = None) -> np.ndarray:
        """Encode raw columns (name -> values); absent columns are missing.

        ``fields`` restricts the output to those field indices (e.g. only the item fields),
        whose slots are laid side by side in field order.
        """
        fields = list(range(self.schema.m)) if fields is None else list(fields)
        if n_rows is None:
            n_rows = len(next(iter(columns.values()))) if columns else 0
        blocks = []
        for f in fields:
            name = self.schema.fields[f].name
            col = columns.get(name)
            if col is None:
                col = [None] * n_rows
            elif len(col) != n_rows:
                raise EncodeError(name, f"column has {len(col)} values, expected {n_rows}")
            blocks.append(self.encode_field(f, col))
        if not blocks:
            return np.zeros((n_rows, 0), dtype=np.int32)
        return np.ascontiguousarray(np.concatenate(blocks, axis=1))

    def encode_rows(self, rows: Sequence[dict]) -> np.ndarray:
        """Encode a list of dict rows (field name -> raw value): int32[N, n_slots]."""
        cols = {f.name: [r.get(f.name) for r in rows] for f in self.schema.fields}
        return self.encode_columns(cols, n_rows=len(rows))

    # --- state that travels with checkpoints and artifacts ------------------------------
    def to_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-able description, arrays) — everything needed to rebuild this encoder."""
        return {"schema": self.schema.to_dict(), "min_count": None}, self.vocab.arrays()

    @classmethod
    def from_state(cls, desc: dict, arrays: dict) -> Preprocessor:
        return cls(Schema.from_dict(desc["schema"]), Vocab.from_arrays(arrays))
