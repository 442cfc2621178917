"""Catalog precompute + kernels: catalog scoring == tests/naive.py for every kind; top-k == full sort."""

from __future__ import annotations

import numpy as np
import pytest

from adrank.core import kinds
from exporter.synthetic import make_schema, random_features, synthetic_model
from service.catalog import kernels
from service.catalog.precompute import PlanError, ad_parts, context_part, make_plan
from service.kernels import pool
from tests import naive
from tests.floats import assert_ulps_close

KINDS = kinds.NAMES  # every kind of the table
VALUES = 20


def encode(sm, ctx: dict, ads: list[dict]):
    """(context int32[S_C], items int32[N, S_I]) with the model's own Preprocessor."""
    s, pre = sm.schema, sm.preprocessor
    mc = s.m_context
    cx = pre.encode_columns({f.name: [ctx.get(f.name)] for f in s.context_fields}, 1, fields=range(mc))[0]
    items = pre.encode_columns({f.name: [a.get(f.name) for a in ads] for f in s.item_fields}, len(ads),
                               fields=range(mc, s.m))
    return cx, items


def setup(kind, schema, n=40, seed=0, **kw):
    sm = synthetic_model(kind, schema, values_per_field=VALUES, seed=seed, **kw)
    rng = np.random.default_rng(seed + 100)
    ads = random_features(schema, range(schema.m_context, schema.m), VALUES, rng, n)
    ctx = random_features(schema, range(schema.m_context), VALUES, rng, 1)[0]
    cx, items = encode(sm, ctx, ads)
    plan = make_plan(kind, schema, sm.arrays)
    W, c = ad_parts(plan, items, sm.arrays.get("emb"), sm.arrays["linear"])
    z, const = context_part(plan, cx, sm.arrays.get("emb"), sm.arrays["linear"])
    return sm, cx, items, (z, const, W, c)


def oracle(sm, cx, items):
    X = np.concatenate([np.repeat(cx[None, :], len(items), 0), items], axis=1)
    return naive.scores(sm.kind, X, sm.schema.slot_offsets, sm.naive, rho=sm.rho)


SCHEMAS = {
    "single": make_schema(3, 4, multi_item=0, multi_context=0),
    "multi": make_schema(3, 4, multi_item=2, multi_context=1, max_values=4),
    "one_item": make_schema(5, 1, multi_item=1, multi_context=2),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("schema", SCHEMAS.values(), ids=SCHEMAS.keys())
def test_catalog_scores_equal_naive(kind, schema):
    sm, cx, items, (z, const, W, c) = setup(kind, schema, rho=2)
    ref = oracle(sm, cx, items)
    np.testing.assert_allclose(kernels.score_all(z, const, W, c), ref, rtol=1e-5, atol=1e-5)
    rows = np.array([5, 0, 5, 39, 17], np.int64)
    np.testing.assert_allclose(kernels.score_ids(z, const, W, c, rows), ref[rows], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rho", [1, 3])
def test_dplr_block_width_is_rho_k(rho):
    sm, cx, items, (z, const, W, c) = setup("dplr", SCHEMAS["multi"], rho=rho)
    assert W.shape[1] == rho * sm.arrays["emb"].shape[1]
    np.testing.assert_allclose(kernels.score_all(z, const, W, c), oracle(sm, cx, items), rtol=1e-5, atol=1e-5)


def test_pruned_with_every_pair_kept_equals_fwfm():
    schema = SCHEMAS["multi"]
    big_rho = schema.m  # rho(m+1) >= m(m-1)/2: every pair kept
    pr = setup("pruned", schema, rho=big_rho, seed=3)
    fw = setup("fwfm", schema, seed=3)
    np.testing.assert_allclose(kernels.score_all(*pr[3]), kernels.score_all(*fw[3]), rtol=1e-5, atol=1e-5)


def test_pruned_without_context_item_pairs_is_constant_per_ad():
    schema = make_schema(3, 3, multi_item=0, multi_context=0)
    sm = synthetic_model("pruned", schema, values_per_field=VALUES, rho=1)
    a = dict(sm.arrays)
    keep = a["pair_j"] < schema.m_context  # only context x context pairs
    a.update(pair_i=a["pair_i"][keep], pair_j=a["pair_j"][keep], pair_r=a["pair_r"][keep])
    plan = make_plan("pruned", schema, a)
    assert plan.D == 0
    rng = np.random.default_rng(1)
    ctx, ads = random_features(schema, range(3), VALUES, rng, 1)[0], random_features(schema, range(3, 6), VALUES, rng, 7)
    cx, items = encode(sm, ctx, ads)
    W, c = ad_parts(plan, items, a["emb"], a["linear"])
    z, const = context_part(plan, cx, a["emb"], a["linear"])
    mask = np.zeros((6, 6), bool)
    mask[a["pair_i"], a["pair_j"]] = mask[a["pair_j"], a["pair_i"]] = True
    X = np.concatenate([np.repeat(cx[None], 7, 0), items], 1)
    ref = naive.scores("pruned", X, schema.slot_offsets, {**sm.naive, "mask": mask})
    np.testing.assert_allclose(kernels.score_all(z, const, W, c), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [1, 7, 40, 100])
@pytest.mark.parametrize("threads", [1, 3])
def test_top_k_equals_full_sort(k, threads, monkeypatch):
    monkeypatch.setattr(pool, "PARALLEL_MIN_SCAN", 0)  # exercise the chunked (threaded) path too
    _, _, _, (z, const, W, c) = setup("dplr", SCHEMAS["multi"], n=40, rho=2)
    W, c = np.concatenate([W, W[:10]]), np.concatenate([c, c[:10]])  # exact ties: rows 0-9 and 40-49
    full = kernels.score_all(z, const, W, c)
    order = np.lexsort((np.arange(len(full)), -full))[:k]
    rows, s = kernels.top_k(z, const, W, c, k, threads=threads)
    assert rows.tolist() == order.tolist()
    assert_ulps_close(s, full[order])


@pytest.mark.parametrize("threads", [1, 3])
def test_top_k_over_base_minus_dead_rows_plus_delta_equals_full_sort(threads, monkeypatch):
    """A catalog view: base rows (some dead) then delta rows, whose global rows follow the base's."""
    monkeypatch.setattr(pool, "PARALLEL_MIN_SCAN", 0)
    _, _, _, (z, const, W, c) = setup("dplr", SCHEMAS["multi"], n=40, rho=2)
    W0, c0 = np.concatenate([W, W[:10]]), np.concatenate([c, c[:10]])  # exact ties across the base
    W1, c1 = W[5:20].copy(), c[5:20].copy()  # and with the delta
    dead = np.array([0, 3, 4, 17, 39, 45], np.int64)
    full = np.concatenate([kernels.score_all(z, const, W0, c0), kernels.score_all(z, const, W1, c1)])
    alive = np.setdiff1d(np.arange(len(full)), dead)
    for k in (1, 9, 30, 200):
        order = alive[np.lexsort((alive, -full[alive]))][:k]
        rows, s = kernels.top_k(z, const, W0, c0, k, threads=threads, dead=dead, delta=(W1, c1))
        assert rows.tolist() == order.tolist()
        assert_ulps_close(s, full[order])


def test_top_k_of_empty_catalog():
    rows, s = kernels.top_k(np.zeros(4, np.float32), 0.0, np.zeros((0, 4), np.float32), np.zeros(0), 10)
    assert len(rows) == len(s) == 0


def test_plan_errors_name_the_problem():
    schema = SCHEMAS["single"]
    sm = synthetic_model("dplr", schema, values_per_field=VALUES)
    with pytest.raises(PlanError, match="unknown model kind 'ffm'"):
        make_plan("ffm", schema, sm.arrays)
    with pytest.raises(PlanError, match="U .* e"):
        make_plan("dplr", schema, {**sm.arrays, "e": np.ones(5, np.float32)})
    with pytest.raises(PlanError, match="lack 'emb'"):
        make_plan("fm", schema, {k: v for k, v in sm.arrays.items() if k != "emb"})
    with pytest.raises(PlanError, match="R has shape"):
        make_plan("fwfm", schema, {**sm.arrays, "R": np.zeros((2, 2))})


def test_rows_kernel_with_and_without_prefetch_agree_and_rows_are_aligned():
    _, _, _, (z, const, W, c) = setup("dplr", SCHEMAS["multi"], n=40, rho=2)
    assert W.ctypes.data % 64 == 0
    rows = np.random.default_rng(0).integers(0, 40, 100)
    a, b = np.empty(100), np.empty(100)
    n0 = 25  # rows from 25 on come from a second segment (a catalog view's delta)
    W0, c0, W1, c1 = W[:n0], c[:n0], W[n0:].copy(), c[n0:].copy()
    kernels.rows_kernel(W.shape[1], True)(z, const, W0, c0, n0, W1, c1, rows, a)
    kernels.rows_kernel(W.shape[1], False)(z, const, W0, c0, n0, W1, c1, rows, b)
    assert_ulps_close(a, b)
    assert_ulps_close(a, kernels.score_all(z, const, W, c)[rows])
    assert_ulps_close(a, kernels.score_ids(z, const, W0, c0, rows, delta=(W1, c1)))


def test_threaded_precompute_equals_single_threaded(monkeypatch):
    sm, cx, items, (z, const, W, c) = setup("pruned", SCHEMAS["multi"], n=40, rho=2)
    monkeypatch.setattr(pool, "PARALLEL_MIN_PRECOMPUTE", 0)
    W2, c2 = ad_parts(make_plan("pruned", sm.schema, sm.arrays), items, sm.arrays["emb"], sm.arrays["linear"])
    assert_ulps_close(W2, W)
    assert_ulps_close(c2, c)
