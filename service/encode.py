"""Raw request values -> feature ids, with the artifact's own preprocessing.

The ids are exactly those of :class:`adrank.preprocess.Preprocessor` (tests/test_encode.py pins
them together); this module only organises the work so that it does not dominate a request:

* ads are turned into **one column per item field** (a list comprehension, or one ``zip`` for
  the positional form), never a Python loop over every ad's every field;
* a categorical column of non-empty strings — the common case — goes straight to the compiled
  ``hash_tokens`` and one ``searchsorted`` (its tokens are the strings themselves);
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

import numpy as np

from adrank.preprocess import EncodeError, Preprocessor, hash_tokens

_SAFE_TYPES = frozenset({str, int, float, bool, type(None)})


class RequestError(EncodeError):
    """A request the model cannot encode; ``field`` names where, ``ad_index``/``ad_id`` which ad."""

    def __init__(self, field: str, message: str, ad_index: int | None = None, ad_id=None,
                 code: str = "invalid_value"):
        where = "" if ad_index is None else f" (ad #{ad_index}, id {ad_id!r})"
        super().__init__(field, message + where)
        self.ad_index = ad_index
        self.ad_id = ad_id
        self.code = code


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
        for f, name in enumerate(self.context_names):
            out[offs[f] : offs[f + 1]] = self._column(f, [context.get(name)], [None])[0]
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
        if vals is not None and all(len(v) == n_items for v in vals):
            columns = list(zip(*vals, strict=True)) if n else [()] * n_items
        else:
            columns = None
        for j, name in enumerate(self.item_names):
            if columns is not None:
                col = list(columns[j])
            elif feats is not None:
                col = [f.get(name) for f in feats]
            else:
                col = [self._value(ad, name, j) for ad in ads]
            lo, hi = self._item_slots[j]
            X[:, lo:hi] = self._column(self.m_context + j, col, ids)
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
    def _column(self, f: int, col: list, ids: Sequence) -> np.ndarray:
        """int32[N, width] ids of field ``f`` for raw values ``col``; errors name the ad."""
        fld = self.schema.fields[f]
        kinds = set(map(type, col))
        try:
            if fld.type == "categorical" and kinds == {str} and "" not in col:
                return self.pre.vocab.lookup(f, hash_tokens(col))[:, None]
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
