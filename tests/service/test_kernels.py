"""Every scoring kernel against tests/naive.py on random unfolded parameters.

The artifact arrays are built here by folding the paper's parameters exactly as
docs/artifact-format.md Sec. 4 describes (d_f ||v_f||^2 of single-valued fields into ``linear``,
``d`` kept for multi-valued fields), and the kernels' scores are compared with naive.score on
the *unfolded* parameters.  Few distinct k keep compile time small (numba cache=True).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from adrank.core import kinds
from adrank.core.preprocess import PAD
from adrank.core.schema import Field, Schema
from service.kernels import memory, schedule
from service.kernels.registry import SCORERS, make_scorer
from tests import naive
from tests.floats import assert_ulps_close

KINDS = kinds.EMBEDDED  # kinds with embeddings
ALL_KINDS = kinds.NAMES  # every kind of the table (lr: bias + linear weights only)
RTOL, ATOL = 1e-4, 1e-4  # float32 parameters and accumulation vs the float64 oracle


# --- builders (also used by tests/test_ranker.py) ------------------------------------------
def random_schema(rng, m: int, m_context: int, p_multi: float = 0.3) -> Schema:
    fields = []
    for f in range(m):
        multi = rng.random() < p_multi
        fields.append(Field(f"f{f}", "multi" if multi else "categorical", "context" if f < m_context else "item",
                            max_values=int(rng.integers(2, 4)) if multi else 1))
    return Schema("rand", tuple(fields))


def random_id_offsets(rng, m: int) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(rng.integers(3, 12, m))]).astype(np.int64)


def random_rows(rng, schema: Schema, id_offsets, B: int) -> np.ndarray:
    """Encoded rows: missing (+0), rare (+1) and kept ids; multi fields 1..max_values ids + PAD."""
    X = np.full((B, schema.n_slots), PAD, dtype=np.int32)
    offs = schema.slot_offsets
    for f, fld in enumerate(schema.fields):
        lo, hi = int(id_offsets[f]), int(id_offsets[f + 1])
        for b in range(B):
            n = int(rng.integers(1, fld.width + 1))
            X[b, offs[f] : offs[f] + n] = rng.integers(lo, hi, n)
    return X


def random_params(rng, kind: str, n: int, m: int, k: int, rho: int = 2) -> dict:
    """Unfolded parameters with the shared names (bias, linear, emb, R, mask, U, e)."""
    p = {"bias": np.array([rng.normal(0, 0.3)], np.float32), "linear": rng.normal(0, 0.3, n).astype(np.float32),
         "emb": rng.normal(0, 0.4, (n, k)).astype(np.float32)}
    if kind in ("fwfm", "pruned"):
        R = np.triu(rng.normal(0, 0.6, (m, m)), 1)
        p["R"] = (R + R.T).astype(np.float32)
        if kind == "pruned":
            p["mask"] = naive.prune_mask(p["R"], rho)
            p["R"] = np.where(p["mask"], p["R"], 0).astype(np.float32)
    if kind == "dplr":
        p["U"] = rng.normal(0, 0.6, (rho, m)).astype(np.float32)
        p["e"] = rng.normal(0, 1.0, rho).astype(np.float32)
    return p


def fold(kind: str, p: dict, schema: Schema, id_offsets) -> dict:
    """The artifact's arrays: diagonal terms 1/2 c_f ||emb_j||^2 of single-valued fields folded."""
    m = schema.m
    if kind == "lr":  # no embedding table, nothing to fold
        return {"bias": p["bias"], "linear": p["linear"]}
    arrays = {"bias": p["bias"], "emb": p["emb"]}
    linear = p["linear"].astype(np.float64)
    if kind in ("fm", "dplr"):
        if kind == "fm":
            c = -np.ones(m)
        else:
            U, e = p["U"].astype(np.float64), p["e"].astype(np.float64)
            c = -np.einsum("r,rf,rf->f", e, U, U)
            arrays["U"], arrays["e"] = p["U"], p["e"]
        d = c.copy()
        emb = p["emb"].astype(np.float64)
        for f, fld in enumerate(schema.fields):
            if fld.width == 1:
                ids = slice(int(id_offsets[f]), int(id_offsets[f + 1]))
                linear[ids] += 0.5 * c[f] * (emb[ids] ** 2).sum(1)
                d[f] = 0.0
        arrays["d"] = d.astype(np.float32)
    if kind == "fwfm":
        arrays["R"] = p["R"]
    if kind == "pruned":
        i, j = np.nonzero(np.triu(p["mask"], 1))
        arrays.update(pair_i=i.astype(np.int32), pair_j=j.astype(np.int32), pair_r=p["R"][i, j])
    arrays["linear"] = linear.astype(np.float32)
    return arrays


def manifest_for(kind: str, schema: Schema, n: int, k: int, rank=None) -> dict:
    if kind == "lr":
        return {"kind": "lr", "rank": None, "embed_dim": 0, "target": schema.target, "schema": schema.to_dict(),
                "n_features": n, "embedding": {"type": "none"}}
    return {"kind": kind, "rank": rank, "embed_dim": k, "target": schema.target, "schema": schema.to_dict(),
            "n_features": n, "embedding": {"type": "dense"}}


def case(kind, seed, k, m=10, m_context=5, rho=2, p_multi=0.3, B=40):
    rng = np.random.default_rng(seed)
    schema = random_schema(rng, m, m_context, p_multi)
    id_offsets = random_id_offsets(rng, m)
    n = int(id_offsets[-1])
    params = random_params(rng, kind, n, m, k, rho)
    X = random_rows(rng, schema, id_offsets, B)
    return schema, params, fold(kind, params, schema, id_offsets), X, manifest_for(kind, schema, n, k, rho)


def oracle(kind, X, schema, params):
    return naive.scores(kind, X, schema.slot_offsets, params)


# --- tests ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("k,seed,m,m_context", [(4, 0, 6, 3), (16, 1, 12, 5), (5, 2, 9, 4), (16, 3, 8, 0)])
def test_score_rows_matches_naive(kind, k, seed, m, m_context):
    schema, params, arrays, X, manifest = case(kind, seed, k, m, m_context)
    got = make_scorer(manifest, arrays).score_rows(X)
    np.testing.assert_allclose(got, oracle(kind, X, schema, params), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("k,seed,m_context,p_multi", [(4, 10, 4, 0.4), (16, 11, 6, 0.0), (5, 12, 1, 0.5)])
def test_cached_context_equals_full_rows_and_naive(kind, k, seed, m_context, p_multi):
    schema, params, arrays, X, manifest = case(kind, seed, k, 11, m_context, p_multi=p_multi)
    X[:, : schema.n_context_slots] = X[0, : schema.n_context_slots]  # one context, many candidates
    scorer = make_scorer(manifest, arrays)
    cached = scorer.score(X[0, : schema.n_context_slots], X[:, schema.n_context_slots :])
    np.testing.assert_allclose(cached, scorer.score_rows(X), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cached, oracle(kind, X, schema, params), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("rho", [1, 2, 3, 4, 5])  # 5 > MAX_REGISTER_RANK: the any-rank kernel
@pytest.mark.parametrize("p_multi", [0.3, 0.0])  # 0.0: every item field single-slot (items[True] kernels)
def test_dplr_ranks_and_pruned_budgets(rho, p_multi):
    """Every register layout of the DPLR kernel (rank 1 alone, lane-paired ranks (0, 1), + rank 2
    alone, + pair (2, 3)) and the any-rank kernel, with and without multi-valued item fields,
    scored through the cached context and as full rows."""
    for kind in ("dplr", "pruned"):
        schema, params, arrays, X, manifest = case(kind, 20 + rho, 16, 9, 4, rho=rho, p_multi=p_multi)
        scorer = make_scorer(manifest, arrays)
        np.testing.assert_allclose(scorer.score_rows(X), oracle(kind, X, schema, params), rtol=RTOL, atol=ATOL)
        X[:, : schema.n_context_slots] = X[0, : schema.n_context_slots]
        got = scorer.score(X[0, : schema.n_context_slots], X[:, schema.n_context_slots :])
        np.testing.assert_allclose(got, oracle(kind, X, schema, params), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("k", [5, 6])  # odd k: lane pairs do not fit, the any-rank kernel serves rho >= 2
def test_dplr_lane_pairs_need_even_k(k):
    from service.kernels.dplr import register_rank

    assert register_rank(2, k) == (2 if k % 2 == 0 else 0) and register_rank(1, k) == 1
    schema, params, arrays, X, manifest = case("dplr", 60 + k, k, 9, 4, rho=2, p_multi=0.0)
    got = make_scorer(manifest, arrays).score_rows(X)
    np.testing.assert_allclose(got, oracle("dplr", X, schema, params), rtol=RTOL, atol=ATOL)


def test_pruned_with_every_pair_kept_equals_fwfm():
    schema, params, arrays, X, manifest = case("fwfm", 30, 16, 10, 4)
    i, j = np.triu_indices(schema.m, 1)
    pruned = {**arrays, "pair_i": i.astype(np.int32), "pair_j": j.astype(np.int32), "pair_r": params["R"][i, j]}
    del pruned["R"]
    a = make_scorer({**manifest, "kind": "pruned"}, pruned)
    b = make_scorer(manifest, arrays)
    ctx, items = X[0, : schema.n_context_slots], X[:, schema.n_context_slots :]
    np.testing.assert_allclose(a.score(ctx, items), b.score(ctx, items), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a.score_rows(X), b.score_rows(X), rtol=1e-6, atol=1e-6)


def test_pruned_with_no_pairs_is_linear_only():
    schema, params, arrays, X, manifest = case("pruned", 31, 4, 7, 3)
    empty = {**arrays, **{n: arrays[n][:0] for n in ("pair_i", "pair_j", "pair_r")}}
    got = make_scorer(manifest, empty).score_rows(X)
    zero = {**params, "mask": np.zeros_like(params["mask"])}
    np.testing.assert_allclose(got, oracle("pruned", X, schema, zero), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_threaded_path_equals_single_thread(kind):
    schema, params, arrays, X, manifest = case(kind, 40, 16, 10, 4, B=1300)
    ctx, items = X[0, : schema.n_context_slots], X[:, schema.n_context_slots :]
    serial = make_scorer(manifest, arrays, parallel_min=10**9)
    # three slices, whatever this machine's core count
    threaded = make_scorer(manifest, arrays, parallel_min=1, threads=3)
    assert_ulps_close(threaded.score(ctx, items), serial.score(ctx, items))
    assert_ulps_close(threaded.score_rows(X), serial.score_rows(X))


@pytest.mark.parametrize("kind,rho", [("fm", 2), ("fwfm", 2), ("pruned", 2), ("dplr", 2), ("dplr", 5)])
def test_prefetch_schedules_do_not_change_scores(kind, rho):
    """Every prefetch schedule (burst at the top of the iteration or interleaved with the field
    loop, with or without the linear weights, into L1 or L2, 1 or 3 candidates ahead, off) scores
    alike, also on
    the candidates near the end of the auction whose prefetch target is clamped."""
    schema, params, arrays, X, manifest = case(kind, 50, 16, 10, 4, rho=rho)
    ctx, items = X[0, : schema.n_context_slots], X[:, schema.n_context_slots :]
    off = make_scorer(manifest, arrays, prefetch=False)
    want_rows, want = off.score_rows(X), off.score(ctx, items)
    full = np.concatenate([np.broadcast_to(ctx, (len(items), len(ctx))), items], axis=1)
    np.testing.assert_allclose(want, oracle(kind, full, schema, params), rtol=RTOL, atol=ATOL)
    for dist in (True, 1, 3):
        for mode in (None, 0, schedule.PF_LINEAR, schedule.PF_INTERLEAVE, schedule.PF_LINEAR | schedule.PF_INTERLEAVE,
                     schedule.PF_L2 | schedule.PF_LINEAR, schedule.PF_L2 | schedule.PF_INTERLEAVE):
            s = make_scorer(manifest, arrays, prefetch=dist, prefetch_mode=mode)
            assert_ulps_close(s.score_rows(X), want_rows)
            assert_ulps_close(s.score(ctx, items), want)
    # ADRANK_PREFETCH_LINEAR=0: the default schedule without the linear weights
    s = make_scorer(manifest, arrays, prefetch_linear=False)
    assert s.prefetch_mode == schedule.PREFETCH_MODE & ~schedule.PF_LINEAR
    assert make_scorer(manifest, arrays).prefetch_mode == schedule.PREFETCH_MODE
    assert_ulps_close(s.score_rows(X), want_rows)
    assert_ulps_close(s.score(ctx, items), want)


def test_prefetch_options_are_checked():
    schema, params, arrays, X, manifest = case("fm", 51, 4, 6, 3)
    with pytest.raises(ValueError, match="prefetch must be"):
        make_scorer(manifest, arrays, prefetch=-1)
    with pytest.raises(ValueError, match="prefetch_mode must be"):
        make_scorer(manifest, arrays, prefetch_mode=8 | schedule.PF_L2 | 3)


def test_no_item_fields_and_no_candidates():
    schema, params, arrays, X, manifest = case("dplr", 60, 4, 6, 6)  # every field is context
    scorer = make_scorer(manifest, arrays)
    ctx = X[0, : schema.n_context_slots]
    got = scorer.score(ctx, np.zeros((3, 0), np.int32))
    np.testing.assert_allclose(got, oracle("dplr", X[:1], schema, params).repeat(3), rtol=RTOL, atol=ATOL)
    assert scorer.score(ctx, np.zeros((0, 0), np.int32)).shape == (0,)


def test_bad_inputs_are_named_errors():
    schema, params, arrays, X, manifest = case("fm", 70, 4, 6, 3)
    scorer = make_scorer(manifest, arrays)
    ctx, items = X[0, : schema.n_context_slots], X[:, schema.n_context_slots :]
    with pytest.raises(ValueError, match="items: expected an int32 array of shape"):
        scorer.score(ctx, items[:, :-1])
    with pytest.raises(ValueError, match="context: expected"):
        scorer.score(ctx[:-1], items)
    bad = items.copy()
    bad[0, 0] = scorer.n_features
    with pytest.raises(ValueError, match="feature ids must lie in"):
        scorer.score(ctx, bad)
    bad[0, 0] = -2
    with pytest.raises(ValueError, match=r"feature ids must lie in \[-1, \d+\), got \[-2\]"):
        scorer.score(ctx, bad)
    with pytest.raises(ValueError, match="rows: feature ids"):
        scorer.score_rows(np.full((2, schema.n_slots), -3, np.int32))
    with pytest.raises(ValueError, match="unknown model kind"):
        make_scorer({**manifest, "kind": "ffm"}, arrays)
    with pytest.raises(ValueError, match="'d' must have shape"):
        make_scorer(manifest, {**arrays, "d": arrays["d"][:-1]})
    with pytest.raises(ValueError, match="n_features"):
        make_scorer({**manifest, "n_features": 3}, arrays)
    assert set(SCORERS) == set(ALL_KINDS)


def test_readonly_unaligned_arrays_are_served():
    """Memory-mapped artifact arrays are read-only; misaligned ones are copied once, aligned."""
    schema, params, arrays, X, manifest = case("dplr", 80, 16, 8, 3)
    buf = np.zeros(arrays["emb"].nbytes + 4, np.uint8)
    emb = buf[4:].view(np.float32).reshape(arrays["emb"].shape)
    emb[...] = arrays["emb"]
    emb.flags.writeable = False
    scorer = make_scorer(manifest, {**arrays, "emb": emb})
    assert scorer.emb.ctypes.data % 64 == 0
    np.testing.assert_allclose(scorer.score_rows(X), oracle("dplr", X, schema, params), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("p_multi", [0.0, 0.4])
def test_pad_in_single_slot_fields_is_a_zero_field(kind, p_multi):
    """A single-slot field holding PAD contributes nothing (the kernels' ``idx >= 0`` guard),
    in the all-single-slot kernels and the general ones alike."""
    schema, params, arrays, X, manifest = case(kind, 70, 16, 10, 4, p_multi=p_multi)
    width = np.diff(schema.slot_offsets)
    single = np.asarray(schema.slot_offsets[:-1])[width == 1]
    X[:, single] = np.where(np.random.default_rng(71).random((len(X), len(single))) < 0.3, PAD, X[:, single])
    scorer = make_scorer(manifest, arrays)
    np.testing.assert_allclose(scorer.score_rows(X), oracle(kind, X, schema, params), rtol=RTOL, atol=ATOL)
    ctx, items = X[0, : schema.n_context_slots], X[:, schema.n_context_slots :]
    full = np.concatenate([np.broadcast_to(ctx, (len(items), len(ctx))), items], axis=1)
    np.testing.assert_allclose(scorer.score(ctx, items), oracle(kind, full, schema, params), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind", KINDS)
def test_huge_page_tables_are_private_copies_with_the_same_scores(kind):
    """``huge_pages=True`` copies a table of >= 2 MiB into private memory on a 2 MiB boundary
    (memory.resident); ``False`` serves the given (read-only, shared) arrays themselves.  Scores
    agree within a few ulps either way (the read-only map views and the
    writable copy are separate compiled specialisations)."""
    schema, params, arrays, X, manifest = case(kind, 81, 16, m=6, m_context=2, p_multi=0.0)
    n = 40_000  # 40,000 x 16 x 4 B = 2.4 MiB: above the 2 MiB threshold
    rng = np.random.default_rng(5)
    emb = memory.aligned(np.zeros((n, 16), np.float32))  # 64-byte aligned, as in an artifact
    emb[: arrays["emb"].shape[0]] = arrays["emb"]
    emb[arrays["emb"].shape[0]:] = rng.normal(0, 0.4, (n - arrays["emb"].shape[0], 16))
    linear = memory.aligned(np.zeros(n, np.float32))
    linear[: arrays["linear"].shape[0]] = arrays["linear"]
    emb.flags.writeable = linear.flags.writeable = False  # as mapped from an artifact
    big = {**arrays, "emb": emb, "linear": linear}
    manifest = {**manifest, "n_features": n}
    huge = make_scorer(manifest, big, huge_pages=True)
    shared = make_scorer(manifest, big, huge_pages=False)
    assert huge.huge_pages and not shared.huge_pages
    assert not np.shares_memory(huge.emb, emb) and huge.emb.ctypes.data % memory.HUGE_PAGE == 0
    assert np.array_equal(huge.emb, emb) and np.array_equal(huge.linear, linear)
    assert np.shares_memory(shared.emb, emb) and np.shares_memory(shared.linear, linear)
    ids = rng.integers(0, n, (300, X.shape[1])).astype(np.int32)
    c = huge.n_context_slots
    assert_ulps_close(huge.score(ids[0, :c], ids[:, c:]), shared.score(ids[0, :c], ids[:, c:]))
    assert_ulps_close(huge.score_rows(X), shared.score_rows(X))
    np.testing.assert_allclose(huge.score_rows(X), oracle(kind, X, schema, params), rtol=RTOL, atol=ATOL)
    thp = open("/sys/kernel/mm/transparent_hugepage/enabled").read() if \
        os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled") else ""
    if "[never]" not in thp and thp:  # THP available: the copy is backed by huge pages
        kib = memory.anon_huge_kib(huge.emb.ctypes.data)
        assert kib is None or kib >= 2048, f"the table copy has {kib} KiB of huge pages"


def test_small_tables_are_not_copied():
    schema, params, arrays, X, manifest = case("fm", 82, 16)
    emb = memory.aligned(arrays["emb"])
    scorer = make_scorer(manifest, {**arrays, "emb": emb}, huge_pages=True)
    assert np.shares_memory(scorer.emb, emb)  # under 2 MiB: the 64-byte-aligned view is enough
