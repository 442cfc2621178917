"""Value ranking, explanations and batches on the real app (issue 18): eCPM order equals a sort of
bid x score, the reserve drops exactly the ads below it, boosts multiply, catalog and inline ads
agree (stored bids, bids-only writes, the whole-catalog top-k by value), explanations sum to the
logit and equal tests/naive.py's split, and a batch answers each auction as /v1/rank would."""

from __future__ import annotations

import json

import msgspec
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import ModelSpec, Settings
from tests import naive
from tests.floats import assert_ulps_close
from tests.service.helpers import (
    ADMIN,
    ADMIN_TOKEN,
    ITEM_FIELDS,
    SCHEMA,
    make_artifact,
    preprocessor,
    random_request,
    ranker_loader,
    reference_scores,
    use_fastpath,
)

KINDS = ("fm", "fwfm", "pruned", "dplr")
N_ADS = 60


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    d = tmp_path_factory.mktemp("value-app")
    arts = {k: (d / f"{k}.adrk", make_artifact(d / f"{k}.adrk", k, seed=i + 10)) for i, k in enumerate(KINDS)}
    rng = np.random.default_rng(5)
    req = random_request(rng, n_ads=N_ADS)
    bids = np.round(rng.uniform(0.1, 5.0, N_ADS), 2)
    bids[::7] = bids[1]  # equal bids: ties in eCPM keep input order
    stored = [{**a, "bid": float(b)} for a, b in zip(req["ads"], bids, strict=True)]
    (d / "ads.jsonl").write_bytes(b"\n".join(msgspec.json.encode(a) for a in stored) + b"\n")
    settings = Settings(models=tuple(ModelSpec(k, p) for k, (p, _) in arts.items()), gc_freeze=False,
                        catalog=d / "ads.jsonl", max_explain=5, admin_token=ADMIN_TOKEN)
    with TestClient(create_app(settings, loader=ranker_loader()), headers=ADMIN) as c:
        yield c, arts, req, bids


def post(c, body, path="/v1/rank"):
    r = c.post(path, json=body)
    return r.status_code, r.json()


def inline_with_bids(req, bids):
    return [{**a, "bid": float(b)} for a, b in zip(req["ads"], bids, strict=True)]


@pytest.mark.parametrize("kind", KINDS)
def test_ecpm_order_equals_a_sort_of_bid_times_score(served, kind):
    c, arts, req, bids = served
    code, body = post(c, {"model": kind, "context": req["context"], "ads": inline_with_bids(req, bids),
                          "rank_by": "ecpm"})
    assert code == 200, body
    ads = body["ads"]
    bid = dict(zip((a["id"] for a in req["ads"]), bids.tolist(), strict=True))
    assert len(ads) == N_ADS
    for a in ads:
        assert a["ctr"] == a["score"]
        assert_ulps_close(a["ecpm"], bid[a["id"]] * a["score"] * 1000.0, ulps=2)
    pos = {a["id"]: i for i, a in enumerate(req["ads"])}
    expect = sorted(ads, key=lambda a: (-bid[a["id"]] * a["score"] * 1000.0, pos[a["id"]]))
    assert [a["id"] for a in ads] == [a["id"] for a in expect]
    want = reference_scores(kind, arts[kind][1], req)  # the scores themselves: the oracle's
    np.testing.assert_allclose([a["score"] for a in ads], [want[a["id"]] for a in ads], rtol=1e-5, atol=1e-6)
    # top_k is the head of the same order
    code, top = post(c, {"model": kind, "context": req["context"], "ads": inline_with_bids(req, bids),
                         "rank_by": "ecpm", "top_k": 7})
    assert top["ads"] == ads[:7]


def test_reserve_drops_exactly_the_ads_below_it(served):
    c, _, req, bids = served
    base = {"model": "dplr", "context": req["context"], "ads": inline_with_bids(req, bids), "rank_by": "ecpm"}
    _, full = post(c, base)
    ecpms = sorted(a["ecpm"] for a in full["ads"])
    for reserve in (0.0, ecpms[10], ecpms[N_ADS // 2], ecpms[-1], ecpms[-1] * 2):
        code, body = post(c, {**base, "reserve": reserve})
        assert code == 200, body
        assert [a["id"] for a in body["ads"]] == [a["id"] for a in full["ads"] if a["ecpm"] >= reserve]
    code, body = post(c, {"model": "dplr", "context": req["context"], "ads": req["ads"], "reserve": 1.0})
    assert code == 422 and "rank_by" in body["message"]


def test_boost_multiplies_the_ordering_value(served):
    c, _, req, bids = served
    ids = [a["id"] for a in req["ads"]]
    boost = {ids[3]: 50.0, ids[8]: 0.0, ids[11]: 2.5}
    bid = dict(zip(ids, bids.tolist(), strict=True))
    for rank_by in ("ecpm", "ctr"):
        code, body = post(c, {"model": "fm", "context": req["context"], "ads": inline_with_bids(req, bids),
                              "rank_by": rank_by, "boost": boost})
        assert code == 200, body

        def key(a, rank_by=rank_by):
            v = bid[a["id"]] * a["score"] * 1000.0 if rank_by == "ecpm" else a["score"]
            return -v * boost.get(a["id"], 1.0), ids.index(a["id"])

        assert [a["id"] for a in body["ads"]] == [a["id"] for a in sorted(body["ads"], key=key)]
        assert body["ads"][-1]["id"] == ids[8]  # boosted to nothing: last
        assert ("ecpm" in body["ads"][0]) == (rank_by == "ecpm")


@pytest.mark.parametrize("kind", ("fwfm", "dplr"))
def test_catalog_ads_with_stored_bids_rank_as_inline_ads_with_those_bids(served, kind):
    c, _, req, bids = served
    inline = post(c, {"model": kind, "context": req["context"], "ads": inline_with_bids(req, bids),
                      "rank_by": "ecpm"})[1]["ads"]
    by_id = post(c, {"model": kind, "context": req["context"], "ads": [{"id": a["id"]} for a in req["ads"]],
                     "rank_by": "ecpm"})[1]["ads"]
    assert [a["id"] for a in by_id] == [a["id"] for a in inline]
    # float32 parts vs the inline scorer: equal within float32 rounding
    np.testing.assert_allclose([a["ecpm"] for a in by_id], [a["ecpm"] for a in inline], rtol=1e-5)
    # the whole catalog by value: the head of the same order
    code, body = post(c, {"model": kind, "context": req["context"], "all_ads": True, "rank_by": "ecpm", "top_k": 10})
    assert code == 200, body
    assert [a["id"] for a in body["ads"]] == [a["id"] for a in by_id[:10]]
    # a bid given in the request wins over the stored one
    ads = [{"id": a["id"]} for a in req["ads"]]
    ads[-1]["bid"] = 1e6
    top = post(c, {"model": kind, "context": req["context"], "ads": ads, "rank_by": "ecpm", "top_k": 1})[1]
    assert top["ads"][0]["id"] == req["ads"][-1]["id"]


def test_all_ads_by_value_with_reserve_and_boost_equals_the_full_ranking(served):
    c, _, req, bids = served
    ids = [a["id"] for a in req["ads"]]
    extra = {"rank_by": "ecpm", "boost": {ids[0]: 3.0, ids[5]: 0.5}}
    full = post(c, {"model": "pruned", "context": req["context"], "ads": [{"id": i} for i in ids], **extra})[1]["ads"]
    reserve = sorted(a["ecpm"] for a in full)[N_ADS // 3]
    for top_k in (1, 7, N_ADS, N_ADS + 5):
        code, body = post(c, {"model": "pruned", "context": req["context"], "all_ads": True, "top_k": top_k,
                              "reserve": reserve, **extra})
        assert code == 200, body
        assert [a["id"] for a in body["ads"]] == [a["id"] for a in full if a["ecpm"] >= reserve][:top_k]


def test_bids_only_write_changes_the_order_not_the_scores(served):
    c, _, req, _ = served
    ids = [a["id"] for a in req["ads"]]
    before = post(c, {"model": "fm", "context": req["context"], "ads": [{"id": i} for i in ids], "rank_by": "ecpm"})
    new = {i: float(k + 1) for k, i in enumerate(ids)}  # a later ad bids more
    r = c.put("/v1/ads/bids", json={"bids": new})
    assert r.status_code == 200, r.text
    assert r.json()["updated"] == N_ADS
    after = post(c, {"model": "fm", "context": req["context"], "ads": [{"id": i} for i in ids], "rank_by": "ecpm"})
    score = {a["id"]: a["score"] for a in before[1]["ads"]}
    for a in after[1]["ads"]:
        assert a["score"] == score[a["id"]]  # the same parts: scores bit for bit
        assert_ulps_close(a["ecpm"], new[a["id"]] * a["score"] * 1000.0, ulps=2)
    assert c.get(f"/v1/ads/{ids[0]}").json()["bid"] == 1.0
    bad = c.put("/v1/ads/bids", json={"bids": {ids[0]: -1}})
    assert bad.status_code == 422 and "bid" in bad.json()["message"]
    missing = c.put("/v1/ads/bids", json={"bids": {"no-such-ad": 1.0}})
    assert missing.status_code == 404 and "no-such-ad" in missing.json()["message"]
    # restore the fixture's bids for the other tests
    c.put("/v1/ads/bids", json={"bids": {a: float(b) for a, b in zip(ids, served[3], strict=True)}})


def explained_oracle(kind, params, req, ad):
    pre = preprocessor()
    feats = ad.get("features") or dict(zip(ITEM_FIELDS, ad.get("values", []), strict=False))
    x = pre.encode_rows([{**req["context"], **feats}])[0]
    return naive.explain(kind, x, SCHEMA.slot_offsets, params), naive.score(kind, x, SCHEMA.slot_offsets, params)


@pytest.mark.parametrize("kind", KINDS)
def test_explanations_sum_to_the_logit_and_equal_the_oracle_inline_and_from_the_catalog(served, kind):
    c, arts, req, _ = served
    params = arts[kind][1]
    names = [f.name for f in SCHEMA.fields]
    ads = {a["id"]: a for a in req["ads"]}
    for listed in (req["ads"][:20], [{"id": a["id"]} for a in req["ads"][:20]]):
        code, body = post(c, {"model": kind, "context": req["context"], "ads": listed, "explain": True})
        assert code == 200, body
        assert all("logit" in a for a in body["ads"])
        assert [("explain" in a) for a in body["ads"]] == [True] * 5 + [False] * 15  # the server's cap: 5
        for a in body["ads"][:5]:
            (bias, fields), raw = explained_oracle(kind, params, req, ads[a["id"]])
            ex = a["explain"]
            assert list(ex["fields"]) == names
            assert ex["bias"] == pytest.approx(bias, rel=1e-7)
            np.testing.assert_allclose(list(ex["fields"].values()), fields, rtol=1e-5, atol=1e-5)
            assert ex["bias"] + sum(ex["fields"].values()) == pytest.approx(a["logit"], rel=1e-5, abs=1e-5)
            assert a["logit"] == pytest.approx(raw, rel=1e-5, abs=1e-5)
            assert a["score"] == pytest.approx(1 / (1 + np.exp(-a["logit"])), rel=1e-12)
    code, body = post(c, {"model": kind, "context": req["context"], "all_ads": True, "top_k": 3, "explain": True})
    assert code == 200 and all("explain" in a for a in body["ads"]), body
    for a in body["ads"]:
        assert a["explain"]["bias"] + sum(a["explain"]["fields"].values()) == pytest.approx(a["logit"], rel=1e-5,
                                                                                           abs=1e-5)


def test_fast_and_generic_parsers_answer_every_shape_alike(served, monkeypatch):
    """The scanner reads rank_by, explain and decimal bids (inline ads with bids, catalog ids with
    stored bids); reserve, boost and other numbers go to the generic parser.  Replies (now with
    "ctr" and "ecpm") and errors are byte for byte the generic parser's."""
    from service import pipeline

    c, _, req, bids = served
    used = []
    real = pipeline.parse_fast
    monkeypatch.setattr(pipeline, "parse_fast", lambda *a: used.append(real(*a)) or used[-1])
    ctx = req["context"]
    by_id = [{"id": a["id"]} for a in req["ads"][:9]]
    priced = inline_with_bids(req, bids)[:9]
    odd = [dict(a, bid=v) for a, v in zip(req["ads"], [0, 7, 0.1, 2.50, 1234567.12345678, 0.001, 3.0], strict=False)]
    bodies = [({"model": "dplr", "context": ctx, "ads": req["ads"][:9]}, True),
              ({"model": "dplr", "context": ctx, "ads": by_id}, True),
              ({"model": "dplr", "context": ctx, "ads": priced, "rank_by": "ecpm"}, True),
              ({"rank_by": "ecpm", "model": "dplr", "context": ctx, "ads": by_id, "top_k": 4}, True),
              ({"model": "dplr", "context": ctx, "ads": priced[:3] + by_id[3:], "rank_by": "ecpm"}, True),
              ({"model": "dplr", "context": ctx, "ads": priced, "rank_by": "ctr"}, True),
              ({"model": "dplr", "context": ctx, "ads": odd, "rank_by": "ecpm"}, True),
              ({"model": "dplr", "context": ctx, "ads": req["ads"][:4], "explain": True}, True),
              ({"model": "dplr", "context": ctx, "ads": priced[:2] + by_id[2:], "explain": True, "rank_by": "ecpm"},
               True),
              ({"model": "dplr", "context": ctx, "ads": by_id, "explain": False}, True),
              ({"model": "dplr", "context": ctx, "ads": by_id, "explain": 1}, False),
              ({"model": "dplr", "context": ctx, "ads": priced, "rank_by": "ecpm", "reserve": 1.0}, False),
              ({"model": "dplr", "context": ctx, "ads": priced, "rank_by": "value"}, False),
              ({"model": "dplr", "context": ctx, "ads": [dict(priced[0], bid=-1.0)], "rank_by": "ecpm"}, False)]
    raw_bodies = [(json.dumps(b).encode(), f) for b, f in bodies] + [
        (b'{"model":"dplr","ads":[{"id":"' + req["ads"][0]["id"].encode() + b'","bid":1e2}],"rank_by":"ecpm"}', False),
        (b'{"model":"dplr","ads":[{"id":"' + req["ads"][0]["id"].encode() + b'","bid":1234567890.1234567}],'
         b'"rank_by":"ecpm"}', False),
        (b'{"model":"dplr","ads":[{"id":"' + req["ads"][0]["id"].encode() + b'","bid":01.5}],"rank_by":"ecpm"}', False)]
    for raw, scanned in raw_bodies:
        used.clear()
        use_fastpath(c, monkeypatch, True)
        fast = c.post("/v1/rank", content=raw, headers={"content-type": "application/json"})
        assert (used[0] is not None) == scanned, raw[:300]
        use_fastpath(c, monkeypatch, False)
        slow = c.post("/v1/rank", content=raw, headers={"content-type": "application/json"})
        assert (fast.status_code, fast.content) == (slow.status_code, slow.content), raw[:300]


def test_the_scanners_decimals_are_pythons_floats():
    import numpy as np

    from service.fastpath.lexer import decimal

    rng = np.random.default_rng(0)
    texts = ["0", "7", "0.5", "2.50", "0.1", "0.000000000000001", "999999999999999", "99999999999999.9",
             "123456789.012345", "0.30000000000000"]
    for _ in range(3000):
        d = int(rng.integers(1, 16))
        digits = "".join(str(x) for x in rng.integers(0, 10, d)).lstrip("0") or "0"
        cut = int(rng.integers(0, len(digits) + 1))
        texts.append(digits if cut == len(digits) else (digits[:cut] or "0") + "." + digits[cut:])
    for t in texts:
        b = np.frombuffer((t + ",").encode(), np.uint8)
        end, v = decimal(b, 0)
        if len(t.replace(".", "")) <= 15:
            assert end == len(t) and v == float(t), t
    for bad in ("01", "1.", ".5", "1e3", "1.5E2", "-1", "1234567890123456", "0.1234567890123456"):
        assert decimal(np.frombuffer((bad + ",").encode(), np.uint8), 0)[0] == -1, bad


def test_batch_answers_each_auction_as_rank_would(served):
    c, _, req, bids = served
    auctions = [{"model": "fm", "context": req["context"], "ads": req["ads"][:10]},
                {"model": "dplr", "context": {}, "ads": inline_with_bids(req, bids)[10:30], "rank_by": "ecpm",
                 "top_k": 5},
                {"model": "pruned", "context": req["context"], "all_ads": True, "top_k": 3},
                {"model": "fwfm", "context": req["context"], "ads": [{"id": a["id"]} for a in req["ads"][:4]],
                 "explain": True}]
    r = c.post("/v1/rank:batch", json={"auctions": auctions})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert results == [c.post("/v1/rank", json=a).json() for a in auctions]
    code, body = post(c, {"auctions": [auctions[0], {"model": "fm", "ads": [{"id": "nope"}]}]}, "/v1/rank:batch")
    assert code == 422 and body["message"].startswith("auctions[1]:"), body
    code, body = post(c, {"auctions": auctions[:1] * 101}, "/v1/rank:batch")
    assert code == 422 and body["error"] == "too_many_auctions"
    code, body = post(c, {"auctions": [auctions[0], {"model": "nope", "ads": []}]}, "/v1/rank:batch")
    assert code == 404 and "auctions[1]" in body["message"]
    for bad in ({"auctions": {}}, {"auction": []}, [1, 2]):
        code, body = post(c, bad, "/v1/rank:batch")
        assert code == 422, body
    r = c.post("/v1/rank:batch", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_json"


def test_batch_auctions_count_like_rank_requests_per_version(served):
    """Each auction shows in the scoring metrics as a /v1/rank request would: its candidates and
    the version that scored it (the dashboard's traffic per version)."""
    from tests.service.test_metrics import value

    c, _, req, _ = served
    version = c.get("/v1/models").json()["models"][0]
    name, v = version["name"], version["version"]
    before = c.get("/metrics").text
    auctions = [{"model": name, "context": req["context"], "ads": req["ads"][:7]}] * 3
    assert c.post("/v1/rank:batch", json={"auctions": auctions}).status_code == 200
    after = c.get("/metrics").text
    count = "adrank_version_requests_total"
    assert value(after, count, model=name, version=v) - value(before, count, model=name, version=v) == 3
    cands = "adrank_request_candidates_sum"
    assert value(after, cands, model=name) - value(before, cands, model=name) == 21


def test_batch_total_candidates_are_bounded(tmp_path):
    from tests.service.helpers import make_artifact as mk

    path = tmp_path / "fm.adrk"
    mk(path, "fm")
    req = random_request(np.random.default_rng(0), n_ads=30)
    settings = Settings(models=(ModelSpec("fm", path),), gc_freeze=False, max_candidates=50, max_auctions=3)
    with TestClient(create_app(settings, loader=ranker_loader())) as c:
        one = {"context": req["context"], "ads": req["ads"]}
        assert c.post("/v1/rank:batch", json={"auctions": [one]}).status_code == 200
        r = c.post("/v1/rank:batch", json={"auctions": [one, one]})
        assert r.status_code == 422 and r.json()["error"] == "too_many_candidates" and "auctions[1]" in r.text
        r = c.post("/v1/rank:batch", json={"auctions": [{"context": {}, "ads": req["ads"][:1]}] * 4})
        assert r.status_code == 422 and r.json()["error"] == "too_many_auctions"
