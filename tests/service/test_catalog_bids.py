"""Stored bids (service/catalog): upserts with and without bids, bids-only writes, deletes and
merges with writes landing mid-merge, against a plain dict; the whole-catalog top-k by value
(kernels.top_k_value) against a full sort; the link's calibration and value order against NumPy."""

from __future__ import annotations

import numpy as np
import pytest

from service.catalog import kernels, store
from service.catalog.ranking import Value, rank_encoded
from service.catalog.store import Catalog
from service.kernels import pool
from service.link import Calibration, ctr, order_values, sigmoid
from tests.floats import assert_ulps_close
from tests.service.test_catalog import SCHEMAS, setup
from tests.service.test_catalog_store import CONTEXT, ITEM, SCHEMA, VALUES, model, random_features


def bids_of(view) -> dict:
    out = {}
    for i in view.all_ids():
        b = view.bid_of(view.row_of(i))
        out[i] = b
    return out


def test_random_writes_bids_and_merges_keep_every_bid():
    _, m = model("fm", target="binary")
    rng = np.random.default_rng(11)
    cat, want = Catalog([m]), {}
    pool_ = [f"id{i}" for i in range(50)]

    def upsert(n):
        batch = []
        for f in random_features(SCHEMA, ITEM, VALUES, rng, n):
            ad = {"id": str(rng.choice(pool_)), "features": f}
            r = rng.random()
            if r < 0.5:
                ad["bid"] = float(np.round(rng.uniform(0, 9), 3))
            elif r < 0.6:
                ad["bid"] = None
            batch.append(ad)
        cat.upsert(batch)
        for ad in {a["id"]: a for a in batch}.values():  # within a batch the last write of an id wins
            if "bid" in ad:
                want[ad["id"]] = ad["bid"]
            else:
                want[ad["id"]] = None  # an upsert replaces the ad: without a bid it has none

    def set_bids():
        ids = [i for i in want if rng.random() < 0.3]
        new = {i: float(np.round(rng.uniform(0, 9), 3)) for i in ids}
        view, missing = store.set_bids(cat.view, {**new, "never-written": 1.0})
        assert missing == ["never-written"]
        cat.view = view
        want.update(new)

    for _ in range(40):
        op = rng.random()
        if op < 0.45:
            upsert(int(rng.integers(1, 10)))
        elif op < 0.65:
            set_bids()
        elif op < 0.8:
            gone = [str(i) for i in rng.choice(pool_, 3)]
            cat.delete(gone)
            for i in gone:
                want.pop(i, None)
        else:  # a merge, with writes and bids landing while it builds
            at = cat.view
            merged = store.merge(at)
            upsert(3)
            set_bids()
            cat.view = store.rebase(merged, at, cat.view)
        assert bids_of(cat.view) == want


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("by_value", [True, False])
def test_top_k_value_over_base_dead_delta_and_skips_equals_a_full_sort(threads, by_value, monkeypatch):
    monkeypatch.setattr(pool, "PARALLEL_MIN_SCAN", 0)
    _, _, _, (z, const, W, c) = setup("dplr", SCHEMAS["multi"], n=40, rho=2)
    rng = np.random.default_rng(3)
    W0, c0 = np.concatenate([W, W[:10]]), np.concatenate([c, c[:10]])  # exact ties
    W1, c1 = W[5:20].copy(), c[5:20].copy()
    b0 = np.round(rng.uniform(0, 3, len(c0)), 1)
    b0[3] = np.nan  # no bid: worth 0
    b0[40:50] = b0[:10]
    b1 = np.round(rng.uniform(0, 3, len(c1)), 1)
    dead = np.array([0, 4, 17, 39, 45], np.int64)
    skip = np.array([2, 41, 52], np.int64)
    raw = np.concatenate([kernels.score_all(z, const, W0, c0), kernels.score_all(z, const, W1, c1)])
    p = sigmoid(raw)
    e = np.nan_to_num(np.concatenate([b0, b1])) * p * 1000.0
    val = e if by_value else p
    for reserve in (None, float(np.median(e))):
        alive = np.setdiff1d(np.arange(len(raw)), np.union1d(dead, skip))
        if reserve is not None:
            alive = alive[e[alive] >= reserve]
        for k in (1, 9, 30, 200):
            order = alive[np.lexsort((alive, -val[alive]))][:k]
            rows, v = kernels.top_k_value(z, const, W0, c0, b0, k, dead=dead, delta=(W1, c1, b1), by_value=by_value,
                                          reserve=reserve, skip=skip, threads=threads)
            assert rows.tolist() == order.tolist()
            assert_ulps_close(v, val[order])


def test_all_ads_by_value_equals_the_listed_ranking_of_every_ad():
    _, m = model("pruned", target="binary")
    cat = Catalog([m])
    batch = [{**a, "bid": float(i % 7) / 2} for i, a in enumerate(
        {"id": f"a{i}", "features": f} for i, f in enumerate(random_features(SCHEMA, ITEM, VALUES,
                                                                              np.random.default_rng(1), 80)))]
    cat.upsert(batch[:50])
    cat.merge()
    cat.upsert(batch[50:])  # some in the base, some in the delta
    cat.delete(["a3", "a60"])
    view = cat.view
    ctx = m.encoder.encode_context(CONTEXT)
    ids = view.all_ids()
    from service.catalog.idtable import IdTable

    hashes = IdTable.hash(ids)
    listed = rank_encoded(view, "m", ctx, np.zeros((len(ids), m.plan.item.offsets[-1]), np.int32),
                          np.arange(len(ids)), hashes, ids.__getitem__, value=Value("ecpm", 100.0, None, None,
                                                                                    ), top_k=None)
    boost_ids = {ids[4]: 9.0}
    for k in (1, 10, 100):
        r = rank_encoded(view, "m", ctx, all_ads=True, top_k=k, value=Value("ecpm", 100.0))
        assert [ids.index(view.id_of(int(g))) for g in r.order] == listed.order[:k].tolist()
        assert_ulps_close(r.ecpm, listed.ecpm[:k], ulps=4)
        rb = rank_encoded(view, "m", ctx, all_ads=True, top_k=k, value=Value("ecpm", None, boost_ids=boost_ids))
        lb = rank_encoded(view, "m", ctx, np.zeros((len(ids), m.plan.item.offsets[-1]), np.int32),
                          np.arange(len(ids)), hashes, ids.__getitem__,
                          value=Value("ecpm", None, None, np.array([boost_ids.get(i, 1.0) for i in ids])))
        assert [view.id_of(int(g)) for g in rb.order] == [ids[j] for j in lb.order[:k]]


def test_calibrated_ctr_is_platt_then_isotonic_and_keeps_the_order():
    rng = np.random.default_rng(0)
    raw = rng.normal(0, 3, 500)
    platt = Calibration(0.7, -0.4)
    np.testing.assert_allclose(ctr(raw, platt), 1 / (1 + np.exp(-(0.7 * raw - 0.4))), rtol=1e-14)
    xs, ys = np.array([0.0, 0.2, 0.5, 0.9, 1.0]), np.array([0.01, 0.1, 0.1, 0.6, 0.95])
    iso = Calibration(1.0, 0.0, xs, ys)
    np.testing.assert_allclose(ctr(raw, iso), np.interp(sigmoid(raw), xs, ys), rtol=1e-13, atol=1e-15)
    srt = np.argsort(raw)
    assert np.all(np.diff(ctr(raw, iso)[srt]) >= 0) and np.all(np.diff(ctr(raw, platt)[srt]) >= 0)


@pytest.mark.parametrize("seed", range(3))
def test_order_values_equals_numpy(seed):
    rng = np.random.default_rng(seed)
    for _ in range(30):
        n = int(rng.integers(1, 200))
        raw = rng.integers(-3, 3, n) * 0.5
        bid = rng.integers(0, 4, n) * 0.25  # many ties
        boost = rng.choice([1.0, 1.0, 2.0, 0.0], n)
        cal = Calibration(1.0, 0.0, np.array([0.0, 0.5, 1.0]), np.array([0.0, 0.4, 0.8])) if seed == 2 else Calibration()
        p = ctr(raw, cal)
        e = bid * p * 1000.0
        for by_value in (True, False):
            for reserve in (None, float(np.median(e))):
                keep = np.arange(n) if reserve is None else np.flatnonzero(e >= reserve)
                key = -(e if by_value else p)[keep] * boost[keep]
                want = keep[np.argsort(key, kind="stable")]
                for top_k in (-1, 0, 3, n):
                    rows, c, ee = order_values(raw, bid, boost, by_value, reserve is not None,
                                               0.0 if reserve is None else reserve, top_k, *cal.params())
                    w = want if top_k < 0 else want[:top_k]
                    assert rows.tolist() == w.tolist()
                    np.testing.assert_array_equal(c, p[w])
                    np.testing.assert_array_equal(ee, e[w])


# --- durability: bids through the replication log, its compaction and restarts -----------------------
def _bids_after_restart(tmp_path, compact: bool, catalog_file: bool):
    import msgspec

    from service.settings import ModelSpec, Settings
    from service.state import ServingState
    from tests.service.helpers import make_artifact, random_request, ranker_loader

    path = tmp_path / "m.adrk"
    make_artifact(path, "fm", seed=3)
    ads = random_request(np.random.default_rng(1), 8)["ads"]
    file = None
    if catalog_file:
        file = tmp_path / "ads.jsonl"
        file.write_bytes(b"\n".join(msgspec.json.encode({**a, "bid": 1.0 + j}) for j, a in enumerate(ads)) + b"\n")

    def start():
        s = Settings(models=(ModelSpec("m", path),), state_dir=tmp_path / "state", gc_freeze=False, catalog=file,
                     compact_entries=0)
        st = ServingState(s, loader=ranker_loader())
        st.start(follow=False)
        return st

    st = start()
    if not catalog_file:
        st.upsert([{**a, "bid": 1.0 + j} for j, a in enumerate(ads)])
    st.upsert([{**ads[0], "bid": 9.5}, ads[1]])  # a new bid; an upsert without one: none
    snap, missing = st.set_bids({ads[2]["id"]: 0.25, ads[3]["id"]: float("nan")})
    assert missing == []
    assert st.set_bids({"nope": 1.0})[1] == ["nope"]
    want = {a["id"]: st.snapshot.catalog.bid_of(st.snapshot.catalog.row_of(a["id"])) for a in ads}
    assert want[ads[0]["id"]] == 9.5 and want[ads[1]["id"]] is None and want[ads[2]["id"]] == 0.25
    assert want[ads[3]["id"]] is None and want[ads[4]["id"]] == 5.0
    feats = {a["id"]: st.snapshot.catalog.get(a["id"]) for a in ads}
    if compact:
        assert st.compact() > 0 and st.log.backlog() == 0
    st.stop()
    again = start()
    view = again.snapshot.catalog
    assert {a["id"]: view.bid_of(view.row_of(a["id"])) for a in ads} == want
    assert {a["id"]: view.get(a["id"]) for a in ads} == feats  # a record with a bid is still the features
    again.stop()


@pytest.mark.parametrize("compact", [False, True], ids=["log", "compacted"])
def test_bids_survive_a_restart_from_the_log_and_from_its_compaction(tmp_path, compact):
    _bids_after_restart(tmp_path, compact, catalog_file=False)


def test_bids_of_a_start_up_catalog_file_survive_a_restart(tmp_path):
    _bids_after_restart(tmp_path, True, catalog_file=True)
