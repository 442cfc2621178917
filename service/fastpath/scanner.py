"""The compiled scanner: a whole ``/v1/rank`` body -> context ids, item id rows and the ads' id spans.

One pass over the bytes (lexer.py) records every token's (field, hash, destination slot) and
prefetches its bucket's entry in the vocabulary's bucket table (``service.encode.BucketIndex``),
so that the random reads overlap with parsing; the encoder's own ``bucket_lookup_into`` then
finds every token's id in one batch, into the caller's scratch.
Each ad's row starts as the schema's template (missing ids, PAD in unused multi slots) and its
tokens overwrite slots.  An ad given by id alone (a catalog ad) gets its id's hash recorded
instead; the caller decides what a request mixing both kinds means.

Every function here and in lexer.py is compiled without the Numba runtime
(``service.kernels.codegen.NO_RUNTIME``): nothing allocates, and no array carries a reference
count.  With the runtime, each array passed to a helper or packed into a tuple was an atomic
increment/decrement pair, about half of a large scan's time (docs/results/kernel-codegen.md).
Hence the explicit copy loops: a slice assignment may allocate a temporary.
"""

from __future__ import annotations

import numba
import numpy as np

from service.encode import bucket_lookup_into
from service.fastpath.lexer import (
    BAD,
    BOOLEAN,
    INTEGER,
    K_ADS,
    K_BID,
    K_CONTEXT,
    K_EXPLAIN,
    K_FEATURES,
    K_ID,
    K_MODEL,
    K_RANK_BY,
    K_TOP_K,
    K_VALUES,
    MISSING_VALUE,
    NUMERIC_DIGITS,
    STRING,
    colon,
    decimal,
    hash_numeric,
    hash_span,
    key,
    literal,
    same,
    scalar,
    separator,
    string_end,
    ws,
)
from service.kernels.codegen import NO_RUNTIME, prefetch_row

CAT, NUM, MULTI = 0, 1, 2
TYPES = {"categorical": CAT, "numeric": NUM, "multi": MULTI}
INLINE_FEATURES, INLINE_VALUES = 1 << K_ID | 1 << K_FEATURES, 1 << K_ID | 1 << K_VALUES
_RANK_BY_ECPM = np.frombuffer(b"ecpm", dtype=np.uint8)
_RANK_BY_CTR = np.frombuffer(b"ctr", dtype=np.uint8)


@numba.njit(**NO_RUNTIME)
def _field_of(b, s, e, names, name_off, lo_f, hi_f, guess):
    """The field in [lo_f, hi_f) whose UTF-8 name is b[s:e] (``guess`` tried first), or -1."""
    f = guess if lo_f <= guess < hi_f else lo_f
    for _ in range(hi_f - lo_f):
        if name_off[f + 1] - name_off[f] == e - s and same(names, name_off[f], name_off[f + 1], b, s):
            return f
        f = f + 1 if f + 1 < hi_f else lo_f
    return -1


@numba.njit(**NO_RUNTIME, inline="always")
def _token(tok, ix, t, f, h, dest):
    """Record token t (field f, hash h, destination slot) and prefetch its bucket's entry in the
    vocabulary's bucket table (BucketIndex): the random reads of the lookup then overlap with
    the parsing of the tokens that follow (a prefetch never stalls; a load would)."""
    tf, th, td = tok
    keys, key_off, starts, start_off, shift = ix
    tf[t], th[t], td[t] = f, h, dest
    prefetch_row(starts, start_off[f] + np.int64(h >> shift[f]))


@numba.njit(**NO_RUNTIME, inline="always")
def _value(b, i, f, ftype, width, dest, edges, bins, tok, ix, nt, kept):
    """Parse field ``f``'s value at ``i``; its tokens are appended at ``nt`` (none = the template's
    missing id stays): ``_token``.  Returns (end, nt); end = -1: fall back."""
    n = b.shape[0]
    in_list = ftype[f] == MULTI and i < n and b[i] == 91
    if in_list:
        i = ws(b, i + 1)
        if i < n and b[i] == 93:
            return i + 1, nt
    count = 0
    while True:
        e, kind, s, z, v, h = scalar(b, i)
        if kind == BAD:
            return -1, nt
        if kind != MISSING_VALUE:
            keep = True
            if ftype[f] == NUM:
                if kind != INTEGER or abs(v) >= 10**NUMERIC_DIGITS:
                    return -1, nt
                h = hash_numeric(v, edges, bins)
            else:  # categorical or multi: keep the first width distinct tokens (order kept)
                keep = count < width[f]
                for k in range(count if keep else 0):
                    if kept[k, 1] - kept[k, 0] == z - s and same(b, kept[k, 0], kept[k, 1], b, s):
                        keep = False
                        break
                if keep:
                    kept[count, 0], kept[count, 1] = s, z
                    if kind != STRING:  # an integer's digits or true/false: the literal is the token
                        h = hash_span(b, s, z)
            if keep:
                _token(tok, ix, nt, f, h, dest + count)
                nt += 1
                count += 1
        if not in_list:
            return e, nt
        i, closed = separator(b, e, 93)
        if closed:
            return i, nt


@numba.njit(**NO_RUNTIME)
def _object(b, i, r, lo_f, hi_f, dest0, names, name_off, ftype, lo, width, edges, bins, tok, ix, nt, kept,
            stamp):
    """A ``{field: value, ...}`` object at ``i`` over fields [lo_f, hi_f), row stamp ``r``
    (a field seen twice in one object falls back).  Returns (end, nt); end = -1: fall back."""
    n = b.shape[0]
    if i >= n or b[i] != 123:
        return -1, nt
    i = ws(b, i + 1)
    if i < n and b[i] == 125:
        return i + 1, nt
    guess = lo_f
    while True:
        if i >= n or b[i] != 34:
            return -1, nt
        e = string_end(b, i + 1)
        if e < 0:
            return -1, nt
        f = _field_of(b, i + 1, e, names, name_off, lo_f, hi_f, guess)
        if f < 0 or stamp[f] == r:
            return -1, nt
        stamp[f] = r
        guess = f + 1
        i = colon(b, e + 1)
        if i < 0:
            return -1, nt
        i, nt = _value(b, i, f, ftype, width, dest0 + lo[f], edges, bins, tok, ix, nt, kept)
        if i < 0:
            return -1, nt
        i, closed = separator(b, i, 125)
        if closed:
            return i, nt


@numba.njit(**NO_RUNTIME)
def _positional(b, i, lo_f, hi_f, dest0, ftype, lo, width, edges, bins, tok, ix, nt, kept):
    """A ``[v_1, ..., v_j]`` values array (item-field order, j <= |I|).  Returns (end, nt)."""
    n = b.shape[0]
    if i >= n or b[i] != 91:
        return -1, nt
    i = ws(b, i + 1)
    if i < n and b[i] == 93:
        return i + 1, nt
    f = lo_f
    while True:
        if f >= hi_f:
            return -1, nt
        i, nt = _value(b, i, f, ftype, width, dest0 + lo[f], edges, bins, tok, ix, nt, kept)
        if i < 0:
            return -1, nt
        f += 1
        i, closed = separator(b, i, 93)
        if closed:
            return i, nt


@numba.njit(**NO_RUNTIME)
def _ads(b, i, mc, m, s_c, s_i, names, name_off, ftype, lo, width, edges, bins, tok, ix, nt, kept, stamp,
         out, item_template, spans, id_hash, bids):
    """The ``ads`` array at ``i``: an inline ad's row is the template, then its tokens; an ad by id
    alone (a string id) records the id's hash and spans[r, 2] = 2; an ad's ``"bid"`` (a decimal,
    ``decimal``) lands in bids[r] (NaN: none).  Returns (end, nt, n_ads, n_by_id, n_bids); end = -1:
    fall back."""
    n, r, n_by_id, n_bids = b.shape[0], np.int64(0), 0, 0  # int64, not the literal 0 (one _object compilation)
    if i >= n or b[i] != 91:
        return -1, nt, 0, 0, 0
    i = ws(b, i + 1)
    while True:
        if r >= spans.shape[0] or i >= n or b[i] != 123:
            return -1, nt, r, n_by_id, n_bids
        dest0 = s_c + r * s_i
        for k in range(s_i):  # (no slice assignment: it may allocate, and there is no NRT here)
            out[dest0 + k] = item_template[k]
        bids[r] = np.nan
        i = ws(b, i + 1)
        seen = 0
        while True:
            i, code = key(b, i)
            if i < 0 or code < K_ID or code > K_BID or (seen >> code) & 1:
                return -1, nt, r, n_by_id, n_bids
            seen |= 1 << code
            i = colon(b, i)
            if i < 0:
                return -1, nt, r, n_by_id, n_bids
            if code == K_ID:
                e, kind, s, z, v, h = scalar(b, i)
                if kind != INTEGER and (kind == BAD or b[i] != 34):  # a string or an integer
                    return -1, nt, r, n_by_id, n_bids
                spans[r, 0], spans[r, 1], spans[r, 2] = s, z, 1 if kind == INTEGER else 0
                id_hash[r] = h if kind == STRING else np.uint64(0)
                i = e
            elif code == K_BID:
                i, bids[r] = decimal(b, i)
                n_bids += 1
            elif code == K_FEATURES:
                i, nt = _object(b, i, r, mc, m, dest0, names, name_off, ftype, lo, width,
                                edges, bins, tok, ix, nt, kept, stamp)
            else:
                i, nt = _positional(b, i, mc, m, dest0, ftype, lo, width, edges, bins, tok, ix, nt, kept)
            if i < 0:
                return -1, nt, r, n_by_id, n_bids
            i, closed = separator(b, i, 125)
            if i < 0:
                return -1, nt, r, n_by_id, n_bids
            if closed:
                break
        seen &= ~(1 << K_BID)  # a bid goes with any form of ad
        if seen == 1 << K_ID:  # by id alone: only a non-empty string id is looked up here
            if spans[r, 2] != 0 or spans[r, 1] == spans[r, 0]:
                return -1, nt, r, n_by_id, n_bids
            spans[r, 2] = 2
            n_by_id += 1
        elif seen != INLINE_FEATURES and seen != INLINE_VALUES:
            return -1, nt, r, n_by_id, n_bids
        r += 1
        i, closed = separator(b, i, 93)
        if closed:
            return i, nt, r, n_by_id, n_bids


def capacities(n: int) -> tuple[int, int]:
    """(ads, tokens) a body of ``n`` bytes can hold at most: an ad takes >= 10 bytes
    ('{"id":"x"}' plus a separator), a token >= 2 (one byte plus a separator)."""
    return n // 10 + 1, n // 2 + 1


@numba.njit(**NO_RUNTIME)
def scan(b, names, name_off, ftype, lo, width, mc, ctx_template, item_template, edges, bins,
         keys, key_off, starts, start_off, shift, id_off, out, spans, id_hash, bids, tf, th, td, ids, lo_t, hi_t,
         kept, stamp, meta):
    """The whole body -> (status, n_ads, n_by_id); status != 0 = fall back.  Results land in the
    caller's workspace (sized by ``capacities(len(b))``, reused across requests: fresh buffers
    would page-fault on every request): ``out[:S_C]`` the context slots, ``out[S_C:S_C + n_ads *
    S_I]`` the item rows, spans[r] = (start, end, 0 string id | 1 integer id | 2 string id of an ad
    by id alone), id_hash[r] a string id's hash, bids[r] ad r's bid (NaN: none), meta = (model start,
    model end | -1, top_k | -1, rank_by: 1 "ecpm" | 0 "ctr" or absent, ads with a bid, explain 1 | 0);
    kept (int64[max width, 2]) and stamp (int64[m]) are scratch."""
    ix = (keys, key_off, starts, start_off, shift)
    tok = (tf, th, td)
    n, m = b.shape[0], ftype.shape[0]
    s_c, s_i = ctx_template.shape[0], item_template.shape[0]
    for k in range(s_c):
        out[k] = ctx_template[k]
    for k in range(meta.shape[0]):
        meta[k] = -1
    meta[3] = 0
    meta[4] = 0
    meta[5] = 0
    stamp[:] = -2
    # int64 from the start, not the literal 0: numba would compile _object/_ads once more per literal
    nt, n_ads, n_by_id, n_bids, seen = np.int64(0), 0, 0, 0, 0
    i = ws(b, 0)
    ok = i < n and b[i] == 123
    i = ws(b, i + 1)
    while ok:
        i, code = key(b, i)
        if i < 0 or code < K_MODEL or (K_ADS < code < K_RANK_BY) or (seen >> code) & 1:
            ok = False
            break
        seen |= 1 << code
        i = colon(b, i)
        if i < 0:
            ok = False
            break
        if code == K_MODEL or code == K_TOP_K:
            e, kind, s, z, v, h = scalar(b, i)
            null = kind == MISSING_VALUE and b[i] == 110
            good = (kind != BAD and kind != INTEGER and b[i] == 34) if code == K_MODEL else (kind == INTEGER and v >= 1)
            if e < 0 or not (null or good):
                ok = False
                break
            if not null and code == K_MODEL:
                meta[0], meta[1] = s, z
            elif not null:
                meta[2] = v
            i = e
        elif code == K_RANK_BY:  # "ctr" or "ecpm"; anything else is the generic parser's error
            e = string_end(b, i + 1) if i < n and b[i] == 34 else -1
            if e == i + 5 and literal(b, i + 1, _RANK_BY_ECPM):
                meta[3] = 1
            elif not (e == i + 4 and literal(b, i + 1, _RANK_BY_CTR)):
                ok = False
                break
            i = e + 1
        elif code == K_EXPLAIN:  # true or false
            e, kind, s, z, v, h = scalar(b, i)
            if kind != BOOLEAN:
                ok = False
                break
            meta[5] = 1 if b[i] == 116 else 0
            i = e
        elif code == K_CONTEXT:
            i, nt = _object(b, i, np.int64(-1), np.int64(0), mc, np.int64(0), names, name_off, ftype, lo, width,
                            edges, bins, tok, ix, nt, kept, stamp)
        else:
            i, nt, n_ads, n_by_id, n_bids = _ads(b, i, mc, m, s_c, s_i, names, name_off, ftype, lo, width, edges,
                                                 bins, tok, ix, nt, kept, stamp, out, item_template, spans, id_hash,
                                                 bids)
            meta[4] = n_bids
        if i < 0:
            ok = False
            break
        i, closed = separator(b, i, 125)
        if closed:
            ok = i >= 0 and ws(b, i) == n and (seen >> K_ADS) & 1 == 1 and n_ads > 0
            break
    if ok and nt:  # every token's id (its field's rare id if absent), then into its slot
        bucket_lookup_into(tf[:nt], th[:nt], keys, key_off, starts, start_off, shift, id_off, ids, lo_t, hi_t)
        for t in range(nt):
            out[td[t]] = ids[t]
    return (0 if ok else 1), n_ads, n_by_id
