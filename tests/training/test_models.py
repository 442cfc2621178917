"""The torch models against the oracle (tests/naive.py): literal double sums, float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adrank.core.preprocess import PAD, RARE
from adrank.core.schema import Field, Schema
from tests import naive
from training.models import KINDS, DPLRFwFM, FwFM, PrunedFwFM, build, make_embedding, prune_mask


def make_schema(multi: bool = True) -> Schema:
    fields = [Field("user", role="context"), Field("hour", "numeric", role="context")]
    if multi:
        fields.append(Field("tags", "multi", role="context", max_values=3))
    fields += [Field("ad", role="item"), Field("advertiser", role="item")]
    if multi:
        fields.append(Field("genres", "multi", role="item", max_values=4))
    return Schema("toy", tuple(fields))


def field_id_offsets(schema: Schema, per_field: int = 7) -> np.ndarray:
    return np.arange(schema.m + 1, dtype=np.int64) * per_field


def random_rows(schema: Schema, n: int, rng, per_field: int = 7) -> np.ndarray:
    """Rows with random ids, random PAD tails in multi fields, and a few all-rare rows."""
    offs = schema.slot_offsets
    ids = field_id_offsets(schema, per_field)
    X = np.full((n, schema.n_slots), PAD, dtype=np.int32)
    for f, fld in enumerate(schema.fields):
        for r in range(n):
            used = rng.integers(1, fld.width + 1)
            X[r, offs[f]:offs[f] + used] = rng.integers(ids[f], ids[f + 1], size=used)
    for r in range(0, n, 5):  # every fifth row: each field's rare id only
        X[r] = PAD
        for f in range(schema.m):
            X[r, offs[f]] = ids[f] + RARE
    return X


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def torch_scores(model, X) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(X)).double().numpy()


@pytest.mark.parametrize("multi", [True, False])
@pytest.mark.parametrize("kind,rank", [("lr", None), ("fm", None), ("fwfm", None), ("pruned", 2), ("dplr", 1),
                                       ("dplr", 3)])
def test_forward_equals_oracle(kind, rank, multi):
    schema = make_schema(multi)
    n = schema.m * 7
    model = build(kind, schema, n, embed_dim=5, rank=rank)
    randomize(model, seed=3)
    if kind == "pruned":  # a real mask: prune a random FwFM
        fw = build("fwfm", schema, n, 5)
        randomize(fw, seed=4)
        model = PrunedFwFM.from_fwfm(fw, rank)
    X = random_rows(schema, 40, np.random.default_rng(1))
    want = naive.scores(kind, X, schema.slot_offsets, model.export_arrays(), rho=rank)
    got = torch_scores(model, X)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert model.kind == kind and model.rank == rank


def test_pruned_oracle_by_rho_matches_exported_mask():
    schema = make_schema()
    fw = build("fwfm", schema, schema.m * 7, 4)
    randomize(fw, seed=9)
    pr = PrunedFwFM.from_fwfm(fw, rho=1)
    params = fw.export_arrays()  # unpruned R: the oracle prunes it itself
    X = random_rows(schema, 25, np.random.default_rng(2))
    want = naive.scores("pruned", X, schema.slot_offsets, {k: params[k] for k in ("bias", "linear", "emb", "R")},
                        rho=1)
    np.testing.assert_allclose(torch_scores(pr, X), want, rtol=1e-4, atol=1e-4)


def test_pruned_keeping_every_pair_equals_fwfm():
    schema = make_schema()
    m = schema.m
    fw = build("fwfm", schema, m * 7, 6)
    randomize(fw, seed=5)
    rho_all = -(-m * (m - 1) // 2 // (m + 1)) + 1  # rho(m+1) >= number of pairs
    pr = PrunedFwFM.from_fwfm(fw, rho_all)
    assert pr.mask.sum().item() == m * (m - 1)
    X = random_rows(schema, 30, np.random.default_rng(3))
    np.testing.assert_allclose(torch_scores(pr, X), torch_scores(fw, X), rtol=1e-5, atol=1e-5)


def test_dplr_equals_fwfm_with_dense_R():
    schema = make_schema()
    dp = build("dplr", schema, schema.m * 7, 4, rank=2)
    randomize(dp, seed=6)
    fw = build("fwfm", schema, schema.m * 7, 4)
    R = naive.dplr_matrix(dp.U.detach().numpy(), dp.e.detach().numpy())
    assert np.allclose(np.diag(R), 0) and np.allclose(R, R.T)
    fw.load_state_dict({k: v for k, v in dp.state_dict().items() if k not in ("U", "e")}, strict=False)
    i, j = np.triu_indices(schema.m, 1)
    with torch.no_grad():
        fw.R_upper.copy_(torch.from_numpy(R[i, j]).float())
    X = random_rows(schema, 30, np.random.default_rng(4))
    np.testing.assert_allclose(torch_scores(dp, X), torch_scores(fw, X), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("m,rho", [(5, 1), (6, 2), (9, 1), (4, 3)])
def test_prune_mask_equals_oracle(m, rho):
    rng = np.random.default_rng(m * 10 + rho)
    A = rng.normal(size=(m, m)).astype(np.float32)
    R = A + A.T
    np.fill_diagonal(R, 0)
    R[0, 2] = R[2, 0] = R[1, 3] = R[3, 1] = 0.75  # a tie: row-major order decides
    assert np.array_equal(prune_mask(R, rho), naive.prune_mask(R, rho))
    assert np.array_equal(prune_mask(torch.from_numpy(R), rho), naive.prune_mask(R, rho))


def test_export_arrays_names_shapes_dtypes():
    schema = make_schema()
    n, k, m = schema.m * 7, 3, schema.m
    want = {"lr": {}, "fm": {"emb": (n, k)}, "fwfm": {"emb": (n, k), "R": (m, m)},
            "pruned": {"emb": (n, k), "R": (m, m), "mask": (m, m)}, "dplr": {"emb": (n, k), "U": (2, m), "e": (2,)}}
    assert set(KINDS) == set(want)
    for kind in KINDS:
        model = build(kind, schema, n, k, rank=2 if kind in ("pruned", "dplr") else None)
        arrays = model.export_arrays()
        shapes = {"bias": (1,), "linear": (n,), **want[kind]}
        assert {name: a.shape for name, a in arrays.items()} == shapes
        for name, a in arrays.items():
            assert a.dtype == (np.bool_ if name == "mask" else np.float32), name
        if "R" in arrays:
            assert np.allclose(arrays["R"], arrays["R"].T) and not np.diag(arrays["R"]).any()


def test_pruned_mask_is_a_buffer_without_mode_switch():
    schema = make_schema(False)
    fw = build("fwfm", schema, schema.m * 7, 4)
    randomize(fw, 1)
    pr = PrunedFwFM.from_fwfm(fw, 1)
    assert "mask" in dict(pr.named_buffers()) and "mask" in pr.state_dict()
    X = torch.from_numpy(random_rows(schema, 10, np.random.default_rng(0)))
    with torch.no_grad():
        a = pr.train()(X)
        b = pr.eval()(X)
    assert torch.equal(a, b)


def test_masked_pairs_get_no_gradient():
    schema = make_schema(False)
    fw = build("fwfm", schema, schema.m * 7, 4)
    randomize(fw, 2)
    pr = PrunedFwFM.from_fwfm(fw, 1)
    pr(torch.from_numpy(random_rows(schema, 20, np.random.default_rng(0)))).sum().backward()
    i, j = np.triu_indices(schema.m, 1)
    kept = pr.mask.numpy()[i, j]
    assert not pr.R_upper.grad.numpy()[~kept].any()
    assert pr.R_upper.grad.numpy()[kept].any()


def test_build_rejects_bad_arguments():
    schema = make_schema()
    with pytest.raises(ValueError, match="kind"):
        build("ffm", schema, 10, 4)
    with pytest.raises(ValueError, match="rank"):
        build("dplr", schema, 10, 4)
    with pytest.raises(ValueError, match="embedding kind"):
        make_embedding(10, 4, kind="nope")
    model = build("fm", schema, schema.m * 7, 4)
    with pytest.raises(ValueError, match="shape"):
        model(torch.zeros(3, schema.n_slots + 1, dtype=torch.long))


def test_dplr_rank1_fm_initialisation_is_an_fm():
    """init="fm": U_0 = 1, e_0 = 1 gives R = 11^T - I (Eq. 7): the fresh DPLR model equals an FM."""
    schema = make_schema()
    dp: DPLRFwFM = build("dplr", schema, schema.m * 7, 4, rank=1, init="fm")
    fm = build("fm", schema, schema.m * 7, 4)
    fm.load_state_dict(dp.state_dict(), strict=False)
    X = random_rows(schema, 10, np.random.default_rng(7))
    np.testing.assert_allclose(torch_scores(dp, X), torch_scores(fm, X), rtol=1e-5, atol=1e-6)
    assert isinstance(build("fwfm", schema, 50, 2), FwFM)


def test_small_interaction_start_is_near_zero_and_unknown_starts_are_named():
    schema = make_schema()
    dp = build("dplr", schema, schema.m * 7, 4, rank=2, init="small")  # near zero, as the paper's code
    fw = build("fwfm", schema, schema.m * 7, 4, init="small")
    assert dp.U.abs().max() <= 0.02 and dp.e.abs().max() <= 0.02 and fw.R_upper.abs().max() <= 0.02
    assert build("fwfm", schema, schema.m * 7, 4).R_upper.eq(1).all()  # default: the FM start
    with pytest.raises(ValueError, match="interaction init"):
        build("dplr", schema, schema.m * 7, 4, rank=1, init="zeros")


@pytest.mark.parametrize("per_feature", [False, True])
@pytest.mark.parametrize("multi", [True, False])
@pytest.mark.parametrize("kind,rank", [("lr", None), ("fm", None), ("fwfm", None), ("pruned", 1), ("dplr", 2)])
def test_penalties_are_the_looked_up_rows_and_R(kind, rank, multi, per_feature):
    """forward(x, penalty=True): batch means of sum_f (1/n_f) sum_{values} c_t ||w_t||^2 (and b_t^2) over
    the looked-up rows (c_t = 1, or the per-feature weight of l2_scale="feature"), and ||R||_F^2 of the
    effective R -- computed here by loops from export_arrays."""
    schema = make_schema(multi)
    model = build(kind, schema, schema.m * 7, 3, rank=rank)
    randomize(model, seed=11)
    if kind == "pruned":
        fw = build("fwfm", schema, schema.m * 7, 3)
        randomize(fw, seed=12)
        model = PrunedFwFM.from_fwfm(fw, 1)
    X = random_rows(schema, 12, np.random.default_rng(5))
    c = np.random.default_rng(6).uniform(0.1, 2.0, schema.m * 7) if per_feature else np.ones(schema.m * 7)
    model.set_penalty_weights(c if per_feature else None)
    with torch.no_grad():
        out, emb_sq, lin_sq, inter = model(torch.from_numpy(X), penalty=True)
    p = model.export_arrays()
    offs = schema.slot_offsets
    e_want, l_want = 0.0, 0.0
    for x in X:
        for f in range(schema.m):
            ids = [int(t) for t in x[offs[f]:offs[f + 1]] if t >= 0]
            for t in ids:
                if "emb" in p:
                    e_want += c[t] * float(np.sum(p["emb"][t].astype(np.float64) ** 2)) / len(ids)
                l_want += c[t] * float(p["linear"][t]) ** 2 / len(ids)
    assert float(emb_sq) == pytest.approx(e_want / len(X), rel=1e-5)
    assert float(lin_sq) == pytest.approx(l_want / len(X), rel=1e-5)
    R = {"lr": None, "fm": None, "fwfm": p.get("R"), "pruned": p.get("R"),
         "dplr": naive.dplr_matrix(p["U"], p["e"]) if "U" in p else None}[kind]
    assert float(inter) == pytest.approx(0.0 if R is None else float(np.sum(np.asarray(R, np.float64) ** 2)), rel=1e-5)
    np.testing.assert_allclose(out.double().numpy(), torch_scores(model, X), rtol=1e-6)
