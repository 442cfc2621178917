"""Raw request values -> feature ids, with the artifact's own preprocessing.

The ids are exactly those of :class:`adrank.core.preprocess.Preprocessor` (tests/test_encode.py pins
them together); this module only organises the work so that it does not dominate a request:

* ads are turned into **one column per item field** (a list comprehension, or one ``zip`` for
  the positional form), never a Python loop over every ad's every field;
* every categorical column of non-empty strings — the common case, whose tokens are the strings
  themselves — is hashed in **one** ``hash_tokens`` call for the whole request and looked up by
  one compiled function (:class:`BucketIndex`: the kept hashes' top bits index a bucket table
  built at load, so a lookup is ~2 memory reads instead of a 16-step binary search);
* any other column is encoded once per *distinct* value (ad requests repeat values a lot) by
  ``Preprocessor.encode_field`` and gathered back, unless its values cannot be deduplicated
  safely (unhashable lists, or booleans mixed with numbers, since ``True == 1`` in Python).

Two ad forms are accepted (DESIGN §7: the positional one parses 35-50% faster)::

    {"id": ..., "features": {name: value, ...}}      item fields by name (absent = missing)
    {"id": ..., "values": [v_1, ..., v_|I|]}         item fields in schema order (short = missing)

Bad input raises :class:`RequestError` (an ``EncodeError``) naming the field and the ad.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from operator import itemgetter

import numba
import numpy as np

from adrank.core.hashing import hash_joined, hash_tokens
from adrank.core.preprocess import N_SPECIAL, RARE, EncodeError, Preprocessor, Vocab
from service.kernels.codegen import PLAIN, prefetch_row

_SAFE_TYPES = frozenset({str, int, float, bool, type(None)})
_STR_OR_NONE = frozenset({str, type(None)})


class RequestError(EncodeError):
    """A request the model cannot encode; ``field`` names where, ``ad_index``/``ad_id`` which ad."""

    def __init__(self, field: str, message: str, ad_index: int | None = None, ad_id=None,
                 code: str = "invalid_value"):
        where = "" if ad_index is None else f" (ad #{ad_index}, id {ad_id!r})"
        super().__init__(field, message + where)
        self.ad_index = ad_index
        self.ad_id = ad_id
        self.code = code


class BucketIndex:
    """The vocabulary's sorted kept hashes plus, per field, a table of bucket starts on the top
    ``B_f`` bits (2^B_f >= the field's key count): ids equal :meth:`Vocab.lookup`'s."""

    def __init__(self, vocab: Vocab):
        m = len(vocab.key_offsets) - 1
        self.keys = np.ascontiguousarray(vocab.keys, dtype=np.uint64)
        self.key_off = np.asarray(vocab.key_offsets, dtype=np.int64)
        self.id_off = np.asarray(vocab.id_offsets, dtype=np.int64)
        self.shift = np.zeros(m, dtype=np.uint64)
        parts, self.start_off = [], np.zeros(m + 1, dtype=np.int64)
        for f in range(m):
            keys = vocab.field_keys(f)
            bits = max(1, int(np.ceil(np.log2(max(len(keys), 1)))))
            self.shift[f] = 64 - bits
            bounds = np.arange(1 << bits, dtype=np.uint64) << np.uint64(64 - bits)
            starts = np.empty((1 << bits) + 1, dtype=np.int32)
            starts[:-1] = np.searchsorted(keys, bounds)
            starts[-1] = len(keys)
            parts.append(starts)
            self.start_off[f + 1] = self.start_off[f] + len(starts)
        self.starts = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

    def lookup(self, fields: np.ndarray, hashes: np.ndarray) -> np.ndarray:
        """int32 ids of ``hashes[t]`` in field ``fields[t]`` (unknown -> the field's rare id)."""
        out = np.empty(len(hashes), dtype=np.int32)
        _bucket_lookup(np.asarray(fields, dtype=np.int64), hashes, self.keys, self.key_off, self.starts,
                       self.start_off, self.shift, self.id_off, out)
        return out


@numba.njit(**PLAIN)
def _bucket_lookup(fields, hashes, keys, key_off, starts, start_off, shift, id_off, out):
    """``bucket_lookup_into`` with fresh scratch arrays."""
    T = hashes.shape[0]
    bucket_lookup_into(fields, hashes, keys, key_off, starts, start_off, shift, id_off, out,
                        np.empty(T, np.int64), np.empty(T, np.int64))


@numba.njit(**PLAIN)
def bucket_lookup_into(fields, hashes, keys, key_off, starts, start_off, shift, id_off, out, lo, hi):
    """Two passes so that the random reads overlap: first every bucket's [lo, hi) (independent
    loads, no data-dependent branch; the first key of each bucket is prefetched), then the
    short scans.  ``lo``, ``hi``: scratch of at least len(hashes) (the fast path reuses its own)."""
    T = hashes.shape[0]
    for t in range(T):
        f = fields[t]
        b = start_off[f] + np.int64(hashes[t] >> shift[f])
        lo[t] = key_off[f] + starts[b]
        hi[t] = key_off[f] + starts[b + 1]
        prefetch_row(keys, lo[t])
    for t in range(T):
        f = fields[t]
        fid = id_off[f] + RARE
        for p in range(lo[t], hi[t]):
            if keys[p] == hashes[t]:
                fid = id_off[f] + N_SPECIAL + (p - key_off[f])
                break
        out[t] = fid


def join_nonempty_str(col) -> str | None:
    """``"\\0".join(col)`` when every value is a non-empty string (the join itself is the C-speed
    type check), else None.  An empty string would show as two adjacent NULs or a NUL at an end."""
    try:
        s = "\x00".join(col)
    except TypeError:
        return None
    if not s or "\x00\x00" in s or s[0] == "\x00" or s[-1] == "\x00":
        return None
    return s


def hash_joined_str(s: str, n: int) -> np.ndarray | None:
    """adrank's token hash (the same compiled FNV-1a + splitmix as ``hash_tokens``) of ``n``
    NUL-joined tokens; None if the count disagrees (a token contained a NUL byte)."""
    buf = np.frombuffer(s.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    out = np.empty(n, dtype=np.uint64)
    return out if hash_joined(buf, n, out) == n else None


class RequestEncoder:
    """Encodes the context dict and the ads of one request for ``Scorer.score``."""

    def __init__(self, preprocessor: Preprocessor):
        self.pre = preprocessor
        schema = preprocessor.schema
        self.schema = schema
        self.m_context = schema.m_context
        self.context_names = [f.name for f in schema.context_fields]
        self.item_names = [f.name for f in schema.item_fields]
        self._context_set = frozenset(self.context_names)
        self._item_set = frozenset(self.item_names)
        offs = schema.slot_offsets
        self.n_context_slots = offs[self.m_context]
        self._item_slots = [(offs[f] - offs[self.m_context], offs[f + 1] - offs[self.m_context])
                            for f in range(self.m_context, schema.m)]
        self.n_item_slots = offs[-1] - offs[self.m_context]
        self.index = BucketIndex(preprocessor.vocab)
        self._getter = itemgetter(*self.item_names) if self.item_names else None
        self._categorical = [f.type == "categorical" for f in schema.fields]
        # the id of a missing value (None or "") of each categorical field, as the Preprocessor encodes it
        self._missing_id = [int(preprocessor.encode_field(f, [None]).reshape(-1)[0]) if c else -1
                            for f, c in enumerate(self._categorical)]

    def warm(self) -> None:
        """Compile (or load from the numba cache) the hashing and lookup functions."""
        self.index.lookup(np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.uint64))
        hash_joined_str("warm", 1)
        self.encode_context({})

    # --- context -------------------------------------------------------------------------
    def encode_context(self, context: dict | None) -> np.ndarray:
        """int32[S_C]: the context fields' slots (absent fields are missing)."""
        context = {} if context is None else context
        if not isinstance(context, dict):
            raise RequestError("context", f"expected an object, got {type(context).__name__}", code="invalid_context")
        for name in context:
            if name not in self._context_set:
                why = "is an item field, not a context field" if name in self._item_set else "is not a field of this model"
                raise RequestError(str(name), f"unknown context field: {why}", code="unknown_field")
        out = np.empty(self.n_context_slots, dtype=np.int32)
        offs = self.schema.slot_offsets
        fast, fast_f = [], []
        for f, name in enumerate(self.context_names):
            v = context.get(name)
            if type(v) is str and v and self.schema.fields[f].type == "categorical":
                fast.append(v)
                fast_f.append(f)
            else:
                out[offs[f] : offs[f + 1]] = self._column(f, [v], [None])[0]
        if fast:
            out[[offs[f] for f in fast_f]] = self.index.lookup(np.array(fast_f), hash_tokens(fast))
        return out

    # --- ads -----------------------------------------------------------------------------
    def encode_ads(self, ads: Sequence[dict]) -> tuple[list, np.ndarray]:
        """(ad ids, int32[N, S_I] item slots) of ``ads`` in either form (they may be mixed)."""
        if not isinstance(ads, (list, tuple)):
            raise RequestError("ads", f"expected a list of ads, got {type(ads).__name__}", code="invalid_ad")
        ids, feats, vals = self._check_ads(ads)
        n = len(ads)
        X = np.empty((n, self.n_item_slots), dtype=np.int32)
        n_items = len(self.item_names)
        names = self.item_names
        # rows first (each ad's dict is touched once), then one transpose into columns
        if vals is not None and all(len(v) == n_items for v in vals):
            rows = vals
        elif feats is not None:
            try:  # every ad names every item field: one C-level itemgetter call per ad
                getter = self._getter  # set whenever there are item fields
                rows = [*map(getter, feats)] if getter is not None and n_items > 1 else None
            except KeyError:
                rows = None
            if rows is None:
                rows = [[*map(f.get, names)] for f in feats]
        else:
            rows = [[self._value(ad, name, j) for j, name in enumerate(names)] for ad in ads]
        columns = list(zip(*rows, strict=True)) if n else [() for _ in names]
        fast, joined = [], []
        for j, col in enumerate(columns):
            f = self.m_context + j
            if n and self._categorical[f]:
                s = join_nonempty_str(col)
                if s is not None:  # tokens are the strings themselves: hashed + looked up below
                    fast.append(j)
                    joined.append(s)
                    continue
                if set(map(type, col)) <= _STR_OR_NONE:  # strings with some missing: hashed + looked up
                    lo = self._item_slots[j][0]
                    X[:, lo] = self._missing_id[f]
                    present = [i for i, v in enumerate(col) if v]
                    if present:
                        X[present, lo] = self.index.lookup(np.full(len(present), f, dtype=np.int64),
                                                           hash_tokens([col[i] for i in present]))
                    continue
            lo, hi = self._item_slots[j]
            X[:, lo:hi] = self._column(f, col, ids)
        if fast:
            hashes = hash_joined_str("\x00".join(joined), len(fast) * n)
            if hashes is None:  # a token held a NUL byte: hash them one by one
                hashes = hash_tokens(list(chain.from_iterable(columns[j] for j in fast)))
            fields = np.repeat(np.array([self.m_context + j for j in fast], dtype=np.int64), n)
            found = self.index.lookup(fields, hashes)
            for c, j in enumerate(fast):
                X[:, self._item_slots[j][0]] = found[c * n : (c + 1) * n]
        return ids, X

    def _check_ads(self, ads):
        """Validate the ads' form; returns (ids, features dicts | None, values lists | None)."""
        ids, feats, vals = [], [], []
        n_items = len(self.item_names)
        for i, ad in enumerate(ads):
            if not isinstance(ad, dict):
                raise RequestError("ads", f"ad #{i}: expected an object, got {type(ad).__name__}", code="invalid_ad")
            ad_id = ad.get("id")
            if ad_id is None or isinstance(ad_id, bool) or not isinstance(ad_id, (str, int)):
                raise RequestError("id", "every ad needs an 'id' (string or integer)", i, ad_id, code="invalid_ad")
            ids.append(ad_id)
            f, v = ad.get("features"), ad.get("values")
            if f is not None and v is not None:
                raise RequestError("ads", "give 'features' or 'values', not both", i, ad_id, code="invalid_ad")
            if v is not None:
                if not isinstance(v, (list, tuple)):
                    raise RequestError("values", f"expected a list, got {type(v).__name__}", i, ad_id, code="invalid_ad")
                if len(v) > n_items:
                    raise RequestError("values", f"too many values: got {len(v)}, the model has {n_items} item fields "
                                       f"{self.item_names}", i, ad_id, code="too_many_values")
                vals.append(v)
            else:
                f = {} if f is None else f
                if not isinstance(f, dict):
                    raise RequestError("features", f"expected an object, got {type(f).__name__}", i, ad_id,
                                       code="invalid_ad")
                if not self._item_set.issuperset(f):
                    name = next(k for k in f if k not in self._item_set)
                    why = "is a context field, not an item field" if name in self._context_set \
                        else "is not a field of this model"
                    raise RequestError(str(name), f"unknown item field: {why}", i, ad_id, code="unknown_field")
                feats.append(f)
        return ids, (feats if len(feats) == len(ads) else None), (vals if len(vals) == len(ads) else None)

    def _value(self, ad, name, j):
        if "values" in ad and ad["values"] is not None:
            v = ad["values"]
            return v[j] if j < len(v) else None
        return (ad.get("features") or {}).get(name)

    # --- one column ----------------------------------------------------------------------
    def _column(self, f: int, col: Sequence, ids: Sequence) -> np.ndarray:
        """int32[N, width] ids of field ``f`` for raw values ``col``; errors name the ad."""
        kinds = set(map(type, col))
        try:
            if kinds <= _SAFE_TYPES and not (bool in kinds and len(kinds - {bool, str, type(None)}) > 0):
                uniq = list(dict.fromkeys(col))
                if len(uniq) < len(col):
                    enc = self.pre.encode_field(f, uniq)
                    pos = {v: i for i, v in enumerate(uniq)}
                    return enc[[pos[v] for v in col]]
            return self.pre.encode_field(f, col)
        except EncodeError as exc:
            self._locate(f, col, ids, exc)
            raise  # pragma: no cover - _locate always raises

    def _locate(self, f, col, ids, exc):
        """Re-raise ``exc`` as a RequestError naming the first ad whose value fails."""
        for i, v in enumerate(col):
            try:
                self.pre.encode_field(f, [v])
            except EncodeError as one:
                if len(col) == 1 and ids == [None]:  # the context
                    raise RequestError(one.field, str(one).split(": ", 1)[-1], code="invalid_value") from exc
                raise RequestError(one.field, str(one).split(": ", 1)[-1], i, ids[i], code="invalid_value") from exc
        raise RequestError(self.schema.fields[f].name, str(exc)) from exc
