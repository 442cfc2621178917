"""Catalog store + ranking: views (base + delta), writes that never touch a published view,
merges that keep every write made meanwhile, reload, concurrency, id/inline/all_ads."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pytest

from adrank.core.preprocess import EncodeError
from exporter.synthetic import make_schema, random_features, synthetic_model
from service.catalog import store
from service.catalog.ranking import rank as rank_
from service.catalog.store import Catalog, CatalogError, Model
from tests import naive

VALUES = 20
SCHEMA = make_schema(3, 4, multi_item=2, multi_context=1, max_values=3)
ITEM, CTX = range(SCHEMA.m_context, SCHEMA.m), range(SCHEMA.m_context)


@dataclass
class Result:
    ids: list
    scores: np.ndarray
    mode: str


def rank(view, name, body):
    ids, r = rank_(view, name, **body)
    return Result(ids, r.scores, r.mode)


def model(kind="dplr", seed=0, name="m", target="regression"):
    sm = synthetic_model(kind, SCHEMA, values_per_field=VALUES, seed=seed, rho=2)
    return sm, Model(name, kind, sm.preprocessor, sm.arrays, target)


def ads(n, seed=0, prefix="ad"):
    feats = random_features(SCHEMA, ITEM, VALUES, np.random.default_rng(seed), n)
    return [{"id": f"{prefix}{i}", "features": f} for i, f in enumerate(feats)]


def oracle(sm, ctx: dict, feats: list[dict]) -> np.ndarray:
    """tests/naive.py on full rows encoded straight from the raw values."""
    rows = [{**ctx, **f} for f in feats]
    X = sm.preprocessor.encode_rows(rows)
    return naive.scores(sm.kind, X, SCHEMA.slot_offsets, sm.naive, rho=sm.rho)


def part_is_fresh(view, name="m"):
    """A view is self-consistent: its id lookups find every live id at its global row, and every
    row's parts are those of the features stored with it."""
    ids = view.all_ids()
    assert len(ids) == len(set(ids)) == view.size
    rows, missing = view.rows(store.IdTable.hash(ids + ["never-registered"]))
    assert missing == 1 and rows[-1] == -1
    assert [view.id_of(int(g)) for g in rows[:-1]] == ids
    m = view.models[name]
    for seg in (view.base, view.delta):
        p = seg.parts[name]
        assert p.W.shape[0] == p.c.shape[0] == len(seg) == len(seg.ids) == len(seg.features)
        if len(seg):
            feats = store.decode_all(seg.features)
            W, c = m.parts(m.encode_items(feats))
            np.testing.assert_array_equal(p.W, W)
            np.testing.assert_array_equal(p.c, c)


def features_of(view) -> dict:
    return {i: view.get(i) for i in view.all_ids()}


CONTEXT = random_features(SCHEMA, CTX, VALUES, np.random.default_rng(9), 1)[0]


@pytest.mark.parametrize("kind", ["fm", "dplr", "pruned", "fwfm"])
def test_ids_inline_and_mixed_equal_naive(kind):
    sm, m = model(kind)
    cat = Catalog([m])
    batch = ads(30)
    batch[4]["id"] = 8  # numeric ids are kept as strings (ads by id answer with the catalog id)
    cat.upsert(batch)
    ref = oracle(sm, CONTEXT, [a["features"] for a in batch])
    by_id = rank(cat.view, "m", {"context": CONTEXT, "ads": [{"id": a["id"]} for a in batch]})
    inline = rank(cat.view, "m", {"context": CONTEXT, "ads": batch})
    mixed = rank(cat.view, "m", {"context": CONTEXT,
                                 "ads": [a if i % 2 else {"id": a["id"]} for i, a in enumerate(batch)]})
    order = np.argsort(-ref, kind="stable")
    for r in (by_id, mixed):
        assert r.ids == [str(batch[i]["id"]) for i in order]
    assert inline.ids == [batch[i]["id"] for i in order]
    for r in (by_id, inline, mixed):
        np.testing.assert_allclose(r.scores, ref[order], rtol=1e-5, atol=1e-5)
    assert (by_id.mode, inline.mode, mixed.mode) == ("catalog", "inline", "mixed")
    positional = [{"id": a["id"], "values": [a["features"].get(SCHEMA.fields[f].name) for f in ITEM]}
                  for a in batch]
    np.testing.assert_allclose(rank(cat.view, "m", {"context": CONTEXT, "ads": positional}).scores,
                               ref[order], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["fm", "dplr", "pruned", "fwfm"])
def test_catalog_equals_the_services_inline_ranker_equals_naive(kind):
    from service.ranker import Ranker

    sm = synthetic_model(kind, SCHEMA, values_per_field=VALUES, seed=4, rho=2, target="regression")
    ranker = Ranker(*sm.artifact_parts(), name="m")
    cat = Catalog([Model.from_ranker(ranker)])
    batch = ads(25, seed=4)
    cat.upsert(batch)
    ref = oracle(sm, CONTEXT, [a["features"] for a in batch])
    order = np.argsort(-ref, kind="stable")
    inline = ranker.rank(CONTEXT, batch)  # the service's inline path (its encoder + Scorer)
    by_id = rank(cat.view, "m", {"context": CONTEXT, "ads": [{"id": a["id"]} for a in batch]})
    mixed = rank(cat.view, "m", {"context": CONTEXT,
                                     "ads": [a if i % 3 else {"id": a["id"]} for i, a in enumerate(batch)]})
    assert [i for i, _ in inline] == by_id.ids == mixed.ids == [batch[i]["id"] for i in order]
    for s in ([s for _, s in inline], by_id.scores, mixed.scores):
        np.testing.assert_allclose(s, ref[order], rtol=1e-5, atol=1e-5)


def test_all_ads_top_k_is_the_best_k_of_a_full_sort_and_click_models_get_probabilities():
    sm, m = model("pruned", target="binary")
    cat = Catalog([m])
    batch = ads(60)
    cat.upsert(batch)
    ref = oracle(sm, CONTEXT, [a["features"] for a in batch])
    r = rank(cat.view, "m", {"context": CONTEXT, "all_ads": True, "top_k": 7})
    order = np.argsort(-ref, kind="stable")[:7]
    assert r.ids == [batch[i]["id"] for i in order]
    np.testing.assert_allclose(r.scores, 1 / (1 + np.exp(-ref[order])), rtol=1e-5)
    assert len(rank(cat.view, "m", {"context": CONTEXT, "all_ads": True}).ids) == 60  # default 100


def test_rank_request_errors_name_the_problem():
    _, m = model()
    cat = Catalog([m])
    cat.upsert(ads(3))
    snap = cat.view
    cases = [
        ({"context": CONTEXT, "ads": [{"id": "ad0"}, {"id": "nope"}]}, r"ads\[1\]: id 'nope' is not in the catalog"),
        ({"context": CONTEXT, "ads": [{"id": "ad0"}], "all_ads": True}, "exactly one of"),
        ({"context": CONTEXT}, "exactly one of"),
        ({"context": CONTEXT, "all_ads": True, "top_k": 0}, "top_k"),
        ({"context": CONTEXT, "all_ads": "yes"}, "all_ads"),
        ({"context": CONTEXT, "ads": "ad0"}, "expected a list"),
        ({"context": {"i0": "x"}, "all_ads": True}, "field 'i0': unknown context field"),
        ({"context": CONTEXT, "ads": [{"id": "ad1"}, {"id": "x", "features": {"c0": "v"}}]},
         r"field 'c0': unknown item field.*ad #1"),
        ({"context": CONTEXT, "ads": [{"id": "ad1"}, {"id": "x", "features": {"i1": {"a": 1}}}]}, r"field 'i1'.*ad #1"),
        ({"context": CONTEXT, "ads": [{"id": "ad1"}, {"id": "x", "values": [1] * 9}]}, "too many values"),
    ]
    for body, msg in cases:
        with pytest.raises(EncodeError, match=msg):  # RankRequestError / RequestError: HTTP 422
            rank(snap, "m", body)
    with pytest.raises(EncodeError, match="model 'other' has no catalog"):
        rank(snap, "other", {"context": {}, "all_ads": True})


def test_upsert_get_delete_and_versions():
    _, m = model()
    cat = Catalog([m])
    batch = ads(10)
    s1 = cat.upsert(batch)
    assert (len(s1), s1.version) == (10, 1)
    assert cat.get("ad3") == batch[3]["features"]
    new = {"id": "ad3", "features": {"i0": "f3v1"}}
    s2 = cat.upsert([{"id": "ad3", "features": {"i0": "f3v0"}}, new, {"id": "fresh", "features": {}}])
    assert (len(s2), s2.version) == (11, 2) and cat.get("ad3") == new["features"]  # last duplicate wins
    assert s1.get("ad3") == batch[3]["features"]  # the old snapshot is untouched
    s3, removed = cat.delete(["ad0", "ad9", "ad0", "missing"])
    assert sorted(removed) == ["ad0", "ad9"] and len(s3) == 9 and s3.version == 3
    assert cat.get("ad0") is None and cat.get("fresh") == {}
    for s in (s1, s2, s3):
        part_is_fresh(s)
    assert cat.delete(["missing"])[1] == [] and cat.version == 3
    part_is_fresh(cat.delete([a["id"] for a in batch] + ["fresh"])[0])  # down to empty
    assert len(cat) == 0


def test_id_table_finds_every_id_and_refuses_hash_collisions():
    from service.catalog.idtable import IdCollision, IdTable

    ids = [f"ad-{i}" for i in range(5000)] + ["", "ünïcode", "with\x00nul"]
    table = IdTable(IdTable.hash(ids))
    rows, missing = table.rows(ids[::-1] + ["ad-5000", "AD-1"])
    assert rows.tolist() == list(range(len(ids)))[::-1] + [-1, -1] and missing == 2
    with pytest.raises(IdCollision, match="row 2"):
        IdTable(np.array([7, 9, 7], np.uint64))
    assert IdTable(np.zeros(0, np.uint64)).rows([])[1] == 0


def test_a_bad_ad_rejects_the_whole_batch_and_names_it():
    _, m = model()
    cat = Catalog([m])
    cat.upsert(ads(3))
    before = cat.view
    for bad, msg in [({"id": "", "features": {}}, r"ad #1: 'id'"),
                     ({"id": "z", "features": {"c0": "x"}}, r"ad #1 \(id 'z'\): \['c0'\] are not item fields"),
                     ({"id": "z", "features": {"i0": {"no": 1}}}, r"ad #1, model 'm': field 'i0'"),
                     ({"id": "z", "features": [], }, "'features' must be an object"),
                     ({"id": "z", "features": {}, "x": 1}, "unknown keys"),
                     ("ad", "expected an object")]:
        with pytest.raises(CatalogError, match=msg):
            cat.upsert([{"id": "ok", "features": {}}, bad])
    assert cat.view is before


def test_jsonl_loading_and_errors_name_the_line(tmp_path):
    _, m = model()
    good = tmp_path / "ads.jsonl"
    import msgspec

    good.write_bytes(b"\n".join(msgspec.json.encode(a) for a in ads(25)) + b"\n\n")
    cat = Catalog([m])
    cat.load_jsonl(good, progress=False)
    assert len(cat) == 25
    part_is_fresh(cat.view)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "features": {}}\n\n{"id": "b", "features": \n')
    with pytest.raises(CatalogError, match=r"bad.jsonl line 3: invalid JSON"):
        Catalog([m]).load_jsonl(bad)
    bad.write_text('{"id": "a", "features": {}}\n{"id": "b", "features": {"i0": [[1]]}}\n')
    with pytest.raises(CatalogError, match=r"bad.jsonl line 2, model 'm': field 'i0'"):
        Catalog([m]).load_jsonl(bad)
    with pytest.raises(CatalogError, match="cannot read catalog"):
        Catalog([m]).load_jsonl(tmp_path / "absent.jsonl")


def test_reload_recomputes_every_ad_part():
    sm0, m0 = model("dplr", seed=0)
    sm1, m1 = model("fwfm", seed=1)  # the reloaded model may even change kind
    cat = Catalog([m0])
    batch = ads(20)
    cat.upsert(batch)
    old = cat.view
    cat.set_model(m1)
    feats = [a["features"] for a in batch]
    for snap, sm in ((old, sm0), (cat.view, sm1)):  # the old snapshot keeps the old model
        r = rank(snap, "m", {"context": CONTEXT, "ads": [{"id": a["id"]} for a in batch]})
        ref = oracle(sm, CONTEXT, feats)
        np.testing.assert_allclose(r.scores, np.sort(ref)[::-1], rtol=1e-5, atol=1e-5)
    part_is_fresh(cat.view)
    cat.set_model(Model("second", "fm", sm0.preprocessor, synthetic_model("fm", SCHEMA, VALUES).arrays, "binary"))
    assert set(cat.view.models) == {"m", "second"}
    part_is_fresh(cat.view, "second")


def test_concurrent_writes_while_ranking_lose_nothing_and_never_tear():
    sm, m = model("dplr")
    cat = Catalog([m])
    cat.upsert(ads(50, prefix="base"))
    stop, errors, seen, merges = threading.Event(), [], [], []

    def writer(w: int):  # upserts its own ids in generations, deletes every third one
        try:
            for gen in range(8):
                batch = ads(15, seed=100 * w + gen, prefix=f"w{w}-")
                cat.upsert(batch)
                cat.delete([f"w{w}-{i}" for i in range(0, 15, 3)] if gen % 2 else [])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    def reader():
        try:
            while not stop.is_set():
                snap = cat.view
                ids = snap.all_ids()
                r = rank(snap, "m", {"context": CONTEXT, "ads": [{"id": i} for i in ids]})
                ref = oracle(sm, CONTEXT, [snap.get(i) for i in r.ids])
                np.testing.assert_allclose(r.scores, ref, rtol=1e-5, atol=1e-5)
                seen.append(snap.version)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    def merger():  # folds the delta into the base while the writers write
        try:
            while not stop.is_set():
                before = cat.view
                if len(before.delta):
                    merges.append(cat.merge() is not before)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(2)] + [threading.Thread(target=merger)]
    writers = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors
    assert len(set(seen)) > 1 and any(merges)  # readers and the merger really ran against changing catalogs
    snap = cat.view
    assert snap.version == 1 + 3 * 8 + 3 * 4  # every write acknowledged is there
    for w in range(3):  # final state: the last generation, every third id deleted
        last = ads(15, seed=100 * w + 7, prefix=f"w{w}-")
        for i, a in enumerate(last):
            assert snap.get(a["id"]) == (None if i % 3 == 0 else a["features"])
    assert sum(i.startswith("base") for i in snap.all_ids()) == 50
    part_is_fresh(snap)


def test_random_writes_and_merges_equal_a_plain_dict():
    """Upserts (new and known ids, duplicates), deletes and merges — some with writes landing
    between a merge's start and its publication — against a dict; every view self-consistent,
    all_ads equal to the oracle's full sort, and no published view ever changes."""
    sm, m = model("pruned")
    rng = np.random.default_rng(5)
    cat, want, kept = Catalog([m]), {}, []
    pool = [f"id{i}" for i in range(60)]
    for _ in range(40):
        op = rng.random()
        if op < 0.55:
            n = int(rng.integers(1, 12))
            feats = random_features(SCHEMA, ITEM, VALUES, rng, n)
            batch = [{"id": str(rng.choice(pool)), "features": f} for f in feats]
            cat.upsert(batch)
            want.update({a["id"]: a["features"] for a in batch})
        elif op < 0.8:
            gone = [str(i) for i in rng.choice(pool, int(rng.integers(1, 6)))]
            assert sorted(cat.delete(gone)[1]) == sorted({i for i in gone if i in want})
            for i in gone:
                want.pop(i, None)
        else:  # a merge, with a write (and a delete) landing while it builds the new base
            at = cat.view
            merged = store.merge(at)
            extra = [{"id": str(rng.choice(pool)), "features": f} for f in random_features(SCHEMA, ITEM, VALUES, rng, 3)]
            cat.upsert(extra)
            want.update({a["id"]: a["features"] for a in extra})
            gone = str(rng.choice(pool))
            cat.delete([gone])
            want.pop(gone, None)
            cat.view = store.rebase(merged, at, cat.view)
        kept.append((cat.view, dict(want)))
        assert features_of(cat.view) == want
    for view, expected in kept[::7]:  # views published earlier still hold exactly their catalog
        assert features_of(view) == expected
        part_is_fresh(view)
    view = cat.view
    ids = view.all_ids()
    ref = oracle(sm, CONTEXT, [want[i] for i in ids])
    r = rank(view, "m", {"context": CONTEXT, "all_ads": True, "top_k": len(ids)})
    assert sorted(r.ids) == sorted(ids)
    np.testing.assert_allclose(r.scores, np.sort(ref)[::-1], rtol=1e-5, atol=1e-5)
    for k in (1, 5):
        assert rank(view, "m", {"context": CONTEXT, "all_ads": True, "top_k": k}).ids == r.ids[:k]


def test_a_write_costs_what_it_changes():
    """The base's arrays are shared by every view until a merge; an upsert of new ids (or of base
    ads) appends to the delta's buffers in place, after the rows older views see, which stay as
    they were."""
    _, m = model("dplr")
    cat = Catalog([m])
    cat.upsert(ads(200))
    base = cat.merge().base
    v1 = cat.upsert(ads(3, seed=9, prefix="new"))
    v2 = cat.upsert([{"id": "ad5", "features": {}}, {"id": "other", "features": {}}])
    assert np.shares_memory(v1.delta.parts["m"].W, v2.delta.parts["m"].W)  # appended, not copied
    v3, _ = cat.delete(["ad7"])
    for v in (v1, v2, v3):
        assert v.base is base and v.base.parts["m"].W is base.parts["m"].W
    assert (len(v1.delta), v1.dead.tolist(), v1.size) == (3, [], 203)
    assert (len(v3.delta), v3.dead.tolist(), v3.size) == (5, [5, 7], 203)
    assert v3.get("ad5") == {} and v3.get("ad7") is None and v3.get("other") == {}
    assert v1.get("ad5") == ads(200)[5]["features"] and v1.get("other") is None  # v1 sees its own catalog
    v4 = cat.upsert([{"id": "new1", "features": {"i0": "f3v1"}}])  # an ad of the delta: copied, moved last
    assert not np.shares_memory(v4.delta.parts["m"].W, v3.delta.parts["m"].W)
    assert v4.delta.ids.str(len(v4.delta) - 1) == "new1" and v3.get("new1") != {"i0": "f3v1"}
    for v in (v1, v2, v3, v4):
        part_is_fresh(v)


def _real_sample(dataset: str, path, n_rows: int):
    """(schema, preprocessor keeping every value seen, raw columns) of the first rows of a sample."""
    from adrank.core.hashing import hash_tokens
    from adrank.core.preprocess import Preprocessor, Vocab, field_tokens
    from training.data import read_raw, schema_for

    schema = schema_for(dataset)
    cols, _ = next(iter(read_raw(dataset, path, chunk_rows=n_rows, max_rows=n_rows)))
    kept = []
    for f in schema.fields:
        toks = field_tokens(f, cols[f.name])
        flat = [t for ts in toks for t in ts] if f.type == "multi" else [t for t in toks if t is not None]
        kept.append(hash_tokens(sorted(set(flat))[::2]))  # every other value kept: the rest are rare
    return schema, Preprocessor(schema, Vocab.from_kept(kept)), cols


@pytest.mark.data
@pytest.mark.parametrize("dataset", ["movielens", "criteo"])
def test_real_rows_catalog_equals_naive(dataset, request):
    """Real ads (MovieLens: multi-valued genres; Criteo: 13 item fields) through the catalog."""
    path = request.getfixturevalue(f"{dataset}_path")
    schema, pre, cols = _real_sample(dataset, path, 60)
    X = pre.encode_columns(cols, 60)
    ctx = {f.name: cols[f.name][0] for f in schema.context_fields}
    ads_ = [{"id": f"row-{r}", "features": {f.name: cols[f.name][r] for f in schema.item_fields
                                            if cols[f.name][r] is not None}} for r in range(60)]
    for kind in ("dplr", "pruned", "fm"):
        sm = synthetic_model(kind, schema, k=8, rho=2, seed=1, target="regression", preprocessor=pre)
        cat = Catalog([Model("m", kind, pre, sm.arrays, "regression")])
        cat.upsert(ads_)
        full = np.concatenate([np.repeat(X[:1, : schema.n_context_slots], 60, 0),
                               X[:, schema.n_context_slots:]], axis=1)
        ref = naive.scores(kind, full, schema.slot_offsets, sm.naive, rho=sm.rho)
        r = rank(cat.view, "m", {"context": ctx, "all_ads": True, "top_k": 60})
        assert sorted(r.ids) == sorted(a["id"] for a in ads_)
        in_order = ref[[int(i.split("-")[1]) for i in r.ids]]  # real rows tie: order up to float32 noise
        np.testing.assert_allclose(in_order, np.sort(ref)[::-1], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(r.scores, in_order, rtol=1e-5, atol=1e-5)


def test_an_ad_is_taken_from_the_catalog_only_when_given_by_id_alone():
    from service.catalog.ranking import by_id, catalog_key

    assert by_id({"id": "b"}) and by_id({"id": 7})
    assert not by_id({"id": "a", "features": {}}) and not by_id({"id": "b", "values": []}) and not by_id(3)
    assert (catalog_key("x"), catalog_key(7), catalog_key(True), catalog_key(1.5)) == ("x", "7", None, None)


def test_merge_copies_equal_numpy_gathers():
    """The merge's compiled copies (segments.take_concat, Strings.take_concat) move exactly the
    bytes NumPy's fancy indexing + concatenate would, for every dtype a segment holds."""
    from service.catalog.segments import Strings, take_concat

    rng = np.random.default_rng(3)
    rows = np.sort(rng.choice(500, 300, replace=False)).astype(np.int64)
    for a, b in ((rng.random((500, 7)).astype(np.float32), rng.random((9, 7)).astype(np.float32)),
                 (rng.random(500), rng.random(9)),
                 (rng.integers(0, 2**63, 500).astype(np.uint64), rng.integers(0, 2**63, 9).astype(np.uint64)),
                 (rng.integers(-5, 5, 500), np.zeros(0, np.int64))):
        assert np.array_equal(take_concat(a, rows, b), np.concatenate([a[rows], b]))
    words = [bytes(rng.integers(97, 123, rng.integers(0, 12)).astype(np.uint8)) for _ in range(500)]
    extra = [b"x", b"", "é".encode()]
    for r in (rows, rows[::-1].copy(), np.zeros(0, np.int64)):
        got = Strings.of(words).take_concat(r, Strings.of(extra))
        want = [words[i] for i in r] + extra
        assert [got.raw(i) for i in range(len(got))] == want
        assert np.array_equal(got.off, Strings.of(want).off)
