"""service/ranker.py: encode -> kernels -> sorted (id, score), against tests/naive.py."""

from __future__ import annotations

import numpy as np
import pytest

from adrank.core.hashing import hash_tokens
from adrank.core.preprocess import Preprocessor, Vocab
from adrank.core.schema import Field, Schema
from service.encode import RequestError
from service.ranker import Ranker, sigmoid
from tests import naive
from tests.service.test_kernels import fold, manifest_for, random_params

SCHEMA = Schema("rk", (
    Field("user", "categorical", "context"),
    Field("age", "numeric", "context"),
    Field("genres", "multi", "context", max_values=3),
    Field("ad", "categorical", "item"),
    Field("tags", "multi", "item", max_values=2),
    Field("slot", "categorical", "item"),
))
ITEMS = [f.name for f in SCHEMA.item_fields]
VALUES = {"user": [f"u{i}" for i in range(6)], "age": [1, 5, 20, 60], "genres": ["a", "b", "c", "d"],
          "ad": [f"ad{i}" for i in range(8)], "tags": ["t1", "t2", "t3"], "slot": ["top", "side"]}


def build(kind: str, seed: int = 0, target: str = "binary", k: int = 8, rho: int = 2):
    rng = np.random.default_rng(seed)
    schema = Schema(SCHEMA.name, SCHEMA.fields, target=target)
    kept = []
    for f in schema.fields:
        toks = [str(v) for v in VALUES[f.name]] if f.type != "numeric" else ["v1", "b2", "b8"]
        kept.append(hash_tokens(toks[:-1]))  # the last value stays unseen -> rare id
    pre = Preprocessor(schema, Vocab.from_kept(kept))
    n = pre.vocab.n_features
    params = random_params(rng, kind, n, schema.m, k, rho)
    arrays = {**fold(kind, params, schema, pre.vocab.id_offsets), **pre.vocab.arrays()}
    desc, _ = pre.to_state()
    manifest = {**manifest_for(kind, schema, n, k, rho if kind in ("dplr", "pruned") else None), "preprocess": desc}
    return Ranker(manifest, arrays, version="v1", name=f"{kind}-model"), pre, params


def request(rng, n_ads: int):
    def pick(name):
        vals = VALUES[name]
        if name in ("genres", "tags"):
            return [vals[i] for i in rng.choice(len(vals), rng.integers(0, 3), replace=False)]
        return vals[rng.integers(len(vals))]

    ctx = {n: pick(n) for n in ("user", "age", "genres")}
    ads = [{"id": f"ad-{i}", "features": {n: pick(n) for n in ITEMS if rng.random() < 0.9}} for i in range(n_ads)]
    return ctx, ads


def reference(kind, pre, params, ctx, ads, target="binary"):
    X = pre.encode_rows([{**ctx, **ad["features"]} for ad in ads])
    raw = naive.scores(kind, X, SCHEMA.slot_offsets, params)
    return raw, (sigmoid(raw) if target == "binary" else raw)


@pytest.mark.parametrize("kind", ["lr", "fm", "fwfm", "pruned", "dplr"])
def test_rank_matches_naive_sorted(kind):
    ranker, pre, params = build(kind, seed=1)
    ranker.warm()
    ctx, ads = request(np.random.default_rng(2), 60)
    raw, prob = reference(kind, pre, params, ctx, ads)
    got = ranker.rank(ctx, ads)
    ref_raw = {ad["id"]: r for ad, r in zip(ads, raw, strict=True)}
    order = [ref_raw[i] for i, _ in got]
    assert all(a >= b - 1e-4 for a, b in zip(order, order[1:], strict=False))  # best first, by the oracle
    ref = {ad["id"]: p for ad, p in zip(ads, prob, strict=True)}
    np.testing.assert_allclose([s for _, s in got], [ref[i] for i, _ in got], rtol=1e-5, atol=1e-6)
    scores = [s for _, s in got]
    assert scores == sorted(scores, reverse=True)
    assert sorted(i for i, _ in got) == sorted(ad["id"] for ad in ads)


def test_ties_keep_input_order_and_top_k():
    ranker, *_ = build("dplr", seed=3)
    ctx = {"user": "u1"}
    same = {"ad": "ad2", "slot": "top"}
    ads = [{"id": i, "features": dict(same)} for i in range(6)]
    ads.insert(3, {"id": "other", "features": {"ad": "ad5", "slot": "side", "tags": ["t1"]}})
    full = ranker.rank(ctx, ads)
    tied = [i for i, _ in full if i != "other"]
    assert tied == [0, 1, 2, 3, 4, 5]
    assert ranker.rank(ctx, ads, top_k=3) == full[:3]
    assert ranker.rank(ctx, ads, top_k=100) == full
    assert ranker.rank(ctx, ads, top_k=0) == []
    assert ranker.rank(ctx, [], top_k=5) == []
    with pytest.raises(RequestError, match="top_k"):
        ranker.rank(ctx, ads, top_k=-1)


def test_positional_form_ranks_like_named_form():
    ranker, *_ = build("pruned", seed=4)
    ctx, ads = request(np.random.default_rng(5), 25)
    positional = [{"id": ad["id"], "values": [ad["features"].get(n) for n in ITEMS]} for ad in ads]
    assert ranker.rank(ctx, positional) == ranker.rank(ctx, ads)


def test_regression_target_returns_raw_predictions():
    ranker, pre, params = build("fm", seed=6, target="regression")
    ctx, ads = request(np.random.default_rng(7), 20)
    raw, _ = reference("fm", pre, params, ctx, ads, target="regression")
    got = dict(ranker.rank(ctx, ads))
    np.testing.assert_allclose([got[a["id"]] for a in ads], raw, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["fm", "dplr"])
def test_predict_encoded_on_full_rows(kind):
    ranker, pre, params = build(kind, seed=8)
    ctx, ads = request(np.random.default_rng(9), 30)
    X = pre.encode_rows([{**ctx, **ad["features"]} for ad in ads])
    _, prob = reference(kind, pre, params, ctx, ads)
    np.testing.assert_allclose(ranker.predict_encoded(X), prob, rtol=1e-5, atol=1e-6)


def test_info_and_attributes():
    ranker, pre, _ = build("dplr", seed=10, rho=3)
    info = ranker.info()
    assert (info["name"], info["version"], info["kind"], info["rank"], info["embedding"]) == \
        ("dplr-model", "v1", "dplr", 3, "dense")
    assert info["fields"] == [{"name": f.name, "type": f.type, "role": f.role} for f in SCHEMA.fields]
    assert info["size_bytes"] == ranker.nbytes > 0
    assert ranker.target == "binary" and ranker.rho == 3 and ranker.preprocessor.schema == pre.schema


def test_bad_requests_raise_named_errors():
    ranker, *_ = build("fm", seed=11)
    with pytest.raises(RequestError) as e:
        ranker.rank({"user": "u1"}, [{"id": "a", "features": {"colour": 1}}])
    assert e.value.field == "colour" and e.value.ad_id == "a"
    with pytest.raises(RequestError) as e:
        ranker.rank({"ad": "x"}, [])
    assert e.value.field == "ad"


def test_codebook_manifest_without_its_arrays_is_refused():
    """A manifest that claims codebook embeddings but carries only a dense table: named error."""
    ranker, *_ = build("fm", seed=12)
    with pytest.raises(ValueError, match="embedding type 'codebook'"):
        Ranker({**ranker.manifest, "embedding": {"type": "codebook"}}, ranker.arrays)


def test_sigmoid_is_stable():
    x = np.array([-1000.0, -30.0, 0.0, 30.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is exact enough
        s = sigmoid(x)
    np.testing.assert_allclose(s, [0.0, 1 / (1 + np.exp(30)), 0.5, 1 / (1 + np.exp(-30)), 1.0])


def test_load_reads_a_real_artifact(tmp_path):
    """Through adrank.core.artifact (written by the exporter) when those modules are present."""
    pytest.importorskip("exporter.export")
    from tests.service.helpers import make_artifact, random_request, reference_scores

    path = tmp_path / "m.adrk"
    params = make_artifact(path, "dplr", seed=3)
    ranker = Ranker.load(path)
    assert ranker.name == "m" and len(ranker.version) == 12 and ranker.nbytes == path.stat().st_size
    # arrays mapped from the file: the random-access tables go to huge pages unless told otherwise
    # (the serving setting ADRANK_HUGE_PAGES=0); a ranker built from arrays in memory keeps them as given
    assert ranker.scorer.huge_pages is True
    assert Ranker.load(path, huge_pages=False).scorer.huge_pages is False
    assert build("dplr", seed=3)[0].scorer.huge_pages is False
    req = random_request(np.random.default_rng(1), 40, positional=True)
    got = dict(ranker.rank(req["context"], req["ads"]))
    ref = reference_scores("dplr", params, req)
    np.testing.assert_allclose([got[i] for i in ref], list(ref.values()), rtol=1e-5, atol=1e-6)


def test_concurrent_requests_get_their_own_answers():
    """Request threads may rank at once (and share the kernels' thread pool)."""
    from concurrent.futures import ThreadPoolExecutor

    ranker, *_ = build("dplr", seed=13)
    threaded, *_ = build("dplr", seed=13)
    threaded.scorer.parallel_min = 1
    reqs = [request(np.random.default_rng(100 + i), 50) for i in range(8)]
    expected = [ranker.rank(c, a) for c, a in reqs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda r: threaded.rank(*r), reqs))
    assert got == expected
