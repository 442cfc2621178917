"""service/encode.py produces exactly adrank's Preprocessor ids, and names what is wrong."""

from __future__ import annotations

import math

import numpy as np
import pytest

from adrank.core.hashing import hash_tokens
from adrank.core.preprocess import EncodeError, Preprocessor, Vocab, field_tokens
from adrank.core.schema import Field, Schema
from service.encode import BucketIndex, RequestEncoder, RequestError

SCHEMA = Schema("enc", (
    Field("user", "categorical", "context"),
    Field("age", "numeric", "context"),
    Field("topics", "multi", "context", max_values=3),
    Field("ad", "categorical", "item"),
    Field("price", "numeric", "item"),
    Field("tags", "multi", "item", max_values=2),
    Field("flag", "categorical", "item"),
))
ITEMS = [f.name for f in SCHEMA.item_fields]

SCALARS = [0, 1, 2, 3, -1, 7, 42, 10**12, 2**63, 1.0, 2.5, -0.0, 3.7, 1e20, float("nan"), float("inf"), "1", "2.5",
           "3", "x", "ab", "é", "日本", "emoji-🙂", "", None, True, False, "true", "5.0", "  7 ", "nul\x00in", "end\x00"]


def make_preprocessor(seed: int = 0) -> Preprocessor:
    """Keep about half of the tokens the value pool produces per field (others -> rare id)."""
    rng = np.random.default_rng(seed)
    kept = []
    for f in SCHEMA.fields:
        toks = set()
        for v in SCALARS:
            try:
                t = field_tokens(f, [v])[0]
            except EncodeError:
                continue
            toks.update(t if isinstance(t, list) else [t] if t is not None else [])
        toks = sorted(toks)
        kept.append(hash_tokens([t for t in toks if rng.random() < 0.5]))
    return Preprocessor(SCHEMA, Vocab.from_kept(kept))


def valid_value(rng, f: Field):
    while True:
        if f.type == "multi" and rng.random() < 0.7:
            v = [SCALARS[i] for i in rng.integers(0, len(SCALARS), rng.integers(0, 5))]
        else:
            v = SCALARS[rng.integers(len(SCALARS))]
        try:
            field_tokens(f, [v])
            return v
        except EncodeError:
            continue


def random_request(rng, n_ads: int, form: str):
    ctx = {f.name: valid_value(rng, f) for f in SCHEMA.context_fields if rng.random() < 0.8}
    ads = []
    for i in range(n_ads):
        feats = {f.name: valid_value(rng, f) for f in SCHEMA.item_fields if rng.random() < 0.85}
        use = form if form != "mixed" else ("features", "values")[i % 2]
        if use == "values":
            vals = [feats.get(n) for n in ITEMS]
            ads.append({"id": f"a{i}", "values": vals[: len(vals) - int(rng.integers(0, 2))]})
        else:
            ads.append({"id": i, "features": feats})
    return ctx, ads


def reference(pre, ctx, ads):
    rows = []
    for ad in ads:
        feats = ad.get("features") or dict(zip(ITEMS, ad.get("values") or [], strict=False))
        rows.append({**ctx, **feats})
    return pre.encode_rows(rows)


@pytest.mark.parametrize("form", ["features", "values", "mixed"])
@pytest.mark.parametrize("seed", range(4))
def test_ids_equal_the_preprocessor(form, seed):
    rng = np.random.default_rng(seed)
    pre = make_preprocessor(seed)
    enc = RequestEncoder(pre)
    ctx, ads = random_request(rng, int(rng.integers(1, 120)), form)
    X = reference(pre, ctx, ads)
    ids, items = enc.encode_ads(ads)
    assert ids == [ad["id"] for ad in ads]
    np.testing.assert_array_equal(enc.encode_context(ctx), X[0, : SCHEMA.n_context_slots])
    np.testing.assert_array_equal(items, X[:, SCHEMA.n_context_slots :])


def test_repeated_and_tricky_columns_equal_the_preprocessor():
    """Dedup must not merge values Python calls equal but that encode differently (True == 1)."""
    pre = make_preprocessor(1)
    enc = RequestEncoder(pre)
    cols = {
        "ad": ["x", "x", "ab", "x", "é", "ab", "x", "é"] * 4,                       # all-str fast path
        "price": [1, 1.0, 3, 3.7, None, float("nan"), "2.5", 3] * 4,      # numbers, numeric strings
        "flag": [True, 1, 1.0, "1", "true", False, 0, None] * 4,          # bool mixed with numbers
        "tags": [["x", "x"], [], None, ["é", 1, True]] * 8,
    }
    n = 32
    ads = [{"id": i, "features": {k: v[i] for k, v in cols.items()}} for i in range(n)]
    ref = pre.encode_columns(cols, n_rows=n, fields=range(SCHEMA.m_context, SCHEMA.m))
    np.testing.assert_array_equal(enc.encode_ads(ads)[1], ref)
    strs = {"ad": ["x", "", "nul\x00in", "é"] * 3, "flag": ["end\x00", "a", "b", "c"] * 3}
    ads = [{"id": i, "values": [strs["ad"][i], None, None, strs["flag"][i]]} for i in range(12)]
    ref = pre.encode_columns(strs, n_rows=12, fields=range(SCHEMA.m_context, SCHEMA.m))
    np.testing.assert_array_equal(enc.encode_ads(ads)[1], ref)  # NULs and "" in all-string columns
    flags = [{"id": i, "features": {"flag": v}} for i, v in enumerate([True, 1, True, 1])]
    got = enc.encode_ads(flags)[1][:, -1]
    assert got[0] == got[2] and got[1] == got[3]
    np.testing.assert_array_equal(got, pre.encode_field(SCHEMA.index("flag"), [True, 1, True, 1])[:, 0])


def test_empty_request():
    enc = RequestEncoder(make_preprocessor())
    ids, X = enc.encode_ads([])
    assert ids == [] and X.shape == (0, enc.n_item_slots)
    ctx = enc.encode_context(None)
    assert ctx.shape == (SCHEMA.n_context_slots,)


def err(fn, *args) -> RequestError:
    with pytest.raises(RequestError) as info:
        fn(*args)
    assert isinstance(info.value, EncodeError)
    return info.value


def test_errors_name_the_field_and_the_ad():
    enc = RequestEncoder(make_preprocessor())
    ok = {"id": "ok", "features": {"ad": "x"}}
    e = err(enc.encode_ads, [ok, {"id": "b", "features": {"colour": "red"}}])
    assert (e.field, e.ad_index, e.ad_id, e.code) == ("colour", 1, "b", "unknown_field")
    assert "'colour'" in str(e) and "ad #1" in str(e)
    e = err(enc.encode_ads, [ok, ok, {"id": 7, "features": {"user": "u"}}])
    assert (e.field, e.ad_index, e.ad_id) == ("user", 2, 7) and "context field" in str(e)
    e = err(enc.encode_ads, [ok, {"id": "d", "features": {"ad": {"nested": 1}}}])
    assert (e.field, e.ad_index, e.ad_id) == ("ad", 1, "d") and "dict" in str(e)
    e = err(enc.encode_ads, [{"id": "l", "features": {"price": [1, 2]}}, ok])
    assert (e.field, e.ad_index) == ("price", 0) and "list" in str(e)
    e = err(enc.encode_ads, [ok, {"id": "v", "values": ["x", 1, [], "y", "extra"]}])
    assert (e.field, e.ad_index, e.code) == ("values", 1, "too_many_values") and "5" in str(e)
    e = err(enc.encode_ads, [ok, {"id": "w", "values": [{"a": 1}]}])
    assert (e.field, e.ad_index, e.ad_id) == ("ad", 1, "w")
    e = err(enc.encode_ads, [ok, {"features": {}}])
    assert (e.field, e.ad_index) == ("id", 1)
    e = err(enc.encode_ads, [{"id": "z", "features": {}, "values": []}])
    assert e.ad_id == "z"
    e = err(enc.encode_ads, [ok, "not an ad"])
    assert e.field == "ads" and "#1" in str(e)
    e = err(enc.encode_ads, [{"id": "n", "features": {"price": math.inf}}])
    assert (e.field, e.ad_id) == ("price", "n") and "finite" in str(e)


def test_context_errors_name_the_field():
    enc = RequestEncoder(make_preprocessor())
    e = err(enc.encode_context, {"ad": "x"})
    assert e.field == "ad" and "item field" in str(e) and e.ad_index is None
    e = err(enc.encode_context, {"nope": 1})
    assert e.field == "nope" and "not a field" in str(e)
    e = err(enc.encode_context, {"age": "old"})
    assert e.field == "age" and "number" in str(e)
    e = err(enc.encode_context, ["user"])
    assert e.field == "context"


def test_bucket_index_equals_vocab_lookup():
    rng = np.random.default_rng(0)
    sizes = [0, 1, 2, 3, 100, 5000]
    kept = [rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + np.uint64(f % 2) for f, n in enumerate(sizes)]
    kept[4][:3] = [0, 2**64 - 1, 2**63]  # extremes of the hash range
    vocab = Vocab.from_kept(kept)
    index = BucketIndex(vocab)
    for f in range(len(sizes)):
        known = vocab.field_keys(f)
        probe = np.concatenate([known, rng.integers(0, 2**64 - 1, 300, dtype=np.uint64),
                                np.array([0, 2**64 - 1], dtype=np.uint64)])
        got = index.lookup(np.full(len(probe), f), probe)
        np.testing.assert_array_equal(got, vocab.lookup(f, probe))
