"""training/quantize.py + training/xlightfm.py: LightFM / xLightFM codebook embeddings.

Scores are checked against tests/naive.py on the decoded table; the straight-through estimator
against a literal implementation of Eq. 6-8; memory against hand counts and real packed sizes.
"""

import copy

import numpy as np
import pytest
import torch

from adrank.core.bitpack import bits_for, pack
from adrank.core.schema import Field, Schema
from tests import naive
from training.models import build, make_embedding
from training.quantize import (
    CodebookEmbedding,
    decode_arrays,
    embedding_memory,
    lightfm_sizes,
    memory_for,
    pq_init,
    quantize,
)
from training.xlightfm import XLightFMSearchEmbedding, field_options, search_xlightfm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


OFFSETS = [0, 5, 300, 340, 1340]  # field 0 (5 ids) and field 2 (40) stay dense at K = 64
N, K_DIM, D = OFFSETS[-1], 8, 2
SCHEMA = Schema("toy", tuple(Field(f"f{i}", role="context" if i < 2 else "item") for i in range(4)))


def _rows(n_rows, seed=0, offsets=OFFSETS):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(offsets[f], offsets[f + 1], n_rows) for f in range(len(offsets) - 1)], 1)


def _lightfm(K=16, seed=0, **kw):
    return make_embedding(N, K_DIM, "lightfm", id_offsets=OFFSETS, codebooks=D, codewords=K, seed=seed, **kw)


def test_layout_and_forward_equals_decoded():
    emb = _lightfm(K=64)
    assert emb.sizes == [0, 64, 0, 64]  # n_f <= K: kept dense (paper Sec. 4.4)
    ids = torch.from_numpy(_rows(300, seed=1))
    table = emb.table()
    out = emb(ids)  # training path (grad enabled)
    assert out.shape == (300, 4, K_DIM)
    assert torch.equal(out, table[ids])
    with torch.no_grad():
        assert torch.equal(emb(ids), table[ids])
    # dense-kept rows are the continuous rows; quantized rows are concatenated codewords
    w = emb.weight.detach()
    assert torch.equal(table[0:5], w[0:5]) and torch.equal(table[300:340], w[300:340])
    codes = emb.codes()
    C = emb.codebooks[emb.slot[3]].detach()
    for i in (340, 777, 1339):
        assert torch.equal(table[i], torch.cat([C[d, codes[i, d]] for d in range(D)]))


def test_export_arrays_decode_to_the_table():
    emb = _lightfm(K=64)
    a = emb.export_arrays()
    assert a["codebooks"].dtype == np.float32 and a["codebooks"].shape == (2 * D * 64, K_DIM // D)
    assert a["codes"].dtype == np.uint8 and a["codes"].shape == (N, D)
    assert a["code_bits"].tolist() == [0, 6, 0, 6]
    assert a["dense_rows"].shape == (5 + 40, K_DIM)
    np.testing.assert_array_equal(decode_arrays(a, OFFSETS), emb.decoded())


@pytest.mark.parametrize("kind,rank", [("fm", None), ("fwfm", None), ("dplr", 2), ("pruned", 1)])
def test_scores_with_codes_equal_naive_scores_on_decoded(kind, rank):
    torch.manual_seed(0)
    model = build(kind, SCHEMA, N, K_DIM, rank=rank, embedding="lightfm",
                  embedding_opts={"id_offsets": OFFSETS, "codebooks": D, "codewords": 16})
    with torch.no_grad():  # non-trivial linear part and table scale
        model.linear.weight.normal_(0, 0.1)
        model.embedding.weight.mul_(30)
        for C in model.embedding.codebooks:
            C.mul_(30)
    X = _rows(40, seed=2)
    with torch.no_grad():
        got = model(torch.from_numpy(X)).numpy()
    params = model.export_arrays()
    params["emb"] = decode_arrays(model.embedding.export_arrays(), OFFSETS)  # the artifact's view
    want = naive.scores(kind, X, SCHEMA.slot_offsets, params, rho=rank)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_checkpoint_round_trip_and_pruning_keep_the_codebooks(tmp_path):
    from adrank.core.preprocess import Preprocessor, Vocab
    from training import checkpoint
    from training.models import PrunedFwFM

    vocab = Vocab.from_kept([np.arange(n - 2, dtype=np.uint64) for n in np.diff(OFFSETS)])
    assert vocab.id_offsets.tolist() == OFFSETS
    torch.manual_seed(0)
    model = build("fwfm", SCHEMA, N, K_DIM, embedding="lightfm",
                  embedding_opts={"id_offsets": OFFSETS, "codebooks": D, "codewords": 16})
    model.embedding.set_popularity(np.arange(N))
    checkpoint.save(tmp_path / "run", model, {"seed": 0}, Preprocessor(SCHEMA, vocab))
    loaded, cfg, _ = checkpoint.load(tmp_path / "run")
    assert cfg["embedding"] == "lightfm"
    assert torch.equal(loaded.embedding.table(), model.embedding.table())
    assert torch.equal(loaded.embedding.popularity, model.embedding.popularity)
    pruned = PrunedFwFM.from_fwfm(model, 1)
    assert torch.equal(pruned.embedding.table(), model.embedding.table())


def _reference_ste(v, C, T):
    """Eq. 6-8 literally: b = one-hot argmax of -||v-c||^2, b~ = tempered softmax, b^ = b~ + sg(b - b~)."""
    U, (D_, K, kd) = v.shape[0], C.shape
    s = -((v.reshape(U, D_, 1, kd) - C.unsqueeze(0)) ** 2).sum(-1)  # [U, D, K]
    b = torch.nn.functional.one_hot(s.argmax(-1), K).to(v.dtype)
    b_soft = torch.softmax(s / T, -1)
    b_hat = b_soft + (b - b_soft).detach()
    return torch.einsum("udk,dkj->udj", b_hat, C).reshape(U, D_ * kd)


@pytest.mark.parametrize("T", [0.01, 1.0])
def test_straight_through_gradients_match_eq8(T):
    g = torch.Generator().manual_seed(3)
    v0 = torch.randn(50, 8, generator=g, dtype=torch.float64) * 0.3
    C0 = torch.randn(2, 16, 4, generator=g, dtype=torch.float64) * 0.3
    G = torch.randn(50, 8, generator=g, dtype=torch.float64)
    grads = []
    for f in (lambda v, C: quantize(v, C, T)[0], lambda v, C: _reference_ste(v, C, T)):
        v, C = v0.clone().requires_grad_(), C0.clone().requires_grad_()
        q = f(v, C)
        (q * G).sum().backward()
        grads.append((q.detach(), v.grad, C.grad))
    (q1, gv1, gC1), (q2, gv2, gC2) = grads
    torch.testing.assert_close(q1, q2, rtol=0, atol=1e-15)  # forward: hard codewords
    torch.testing.assert_close(gv1, gv2, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gC1, gC2, rtol=1e-9, atol=1e-12)
    assert gv1.abs().sum() > 0 and gC1.abs().sum() > 0  # flows to both v and the codebooks


def test_gradients_reach_continuous_rows_and_codebooks_through_the_module():
    emb = _lightfm(K=16)
    ids = torch.tensor([[7, 301, 900], [8, 302, 1000]])
    (emb(ids) ** 2).sum().backward()
    gw = emb.weight.grad
    assert gw[[301, 302, 900, 1000]].abs().sum(1).min() > 0  # quantized rows: via the softmax
    assert gw[7].abs().sum() > 0  # dense-kept row: directly
    assert all(C.grad is not None and C.grad.abs().sum() > 0 for C in emb.codebooks)
    copied = copy.deepcopy(emb)  # the cached batch (graph nodes) is not copied
    assert len(emb._last) == 3 and len(copied._last) == 0 and torch.equal(copied.table(), emb.table())
    untouched = torch.ones(N, dtype=torch.bool)
    untouched[ids.flatten()] = False
    assert gw[untouched].abs().sum() == 0


def test_regularizer_is_popularity_weighted_distance_eq5():
    emb = _lightfm(K=16)
    counts = np.random.default_rng(4).integers(0, 50, N)
    emb.set_popularity(counts)
    ids = torch.from_numpy(_rows(64, seed=5))
    emb(ids)
    reg = emb.regularizer()
    uniq = np.unique(ids.numpy())
    uniq = uniq[[emb.sizes[np.searchsorted(OFFSETS, i, side="right") - 1] > 0 for i in uniq]]
    v, q = emb.weight.detach().numpy()[uniq], emb.decoded()[uniq]
    w = np.log1p(counts[uniq])
    want = (w * ((v - q) ** 2).sum(1)).sum() / w.sum()
    assert float(reg.detach()) == pytest.approx(want, rel=1e-5)
    reg.backward()
    assert emb.weight.grad[uniq].abs().sum() > 0
    assert all(C.grad.abs().sum() > 0 for C in emb.codebooks)
    with pytest.raises(ValueError, match="non-negative counts"):
        emb.set_popularity(-np.ones(N))


def _teacher_data(n_rows, seed, offsets=OFFSETS, k=K_DIM):
    """Labels from a random dense FM teacher, so bigger codebooks can actually help."""
    rng = np.random.default_rng(seed)
    E = rng.normal(0, 0.6, (offsets[-1], k))
    X = _rows(n_rows, seed + 1, offsets)
    V = E[X]
    logit = 0.5 * ((V.sum(1) ** 2).sum(1) - (V ** 2).sum((1, 2)))
    y = (rng.random(n_rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return X.astype(np.int32), y


def test_codes_are_reassigned_during_training():
    torch.manual_seed(0)
    model = build("fm", SCHEMA, N, K_DIM, embedding="lightfm",
                  embedding_opts={"id_offsets": OFFSETS, "codebooks": D, "codewords": 16})
    X, y = _teacher_data(4096, seed=6)
    Xt, yt = torch.from_numpy(X).long(), torch.from_numpy(y)
    emb = model.embedding
    before = emb.codes().clone()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for step in range(40):
        idx = slice(256 * (step % 16), 256 * (step % 16 + 1))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(Xt[idx]), yt[idx])
        opt.zero_grad()
        (loss + 0.1 * emb.regularizer()).backward()
        opt.step()
        losses.append(loss.item())
    after = emb.codes()
    quantized = torch.tensor([emb.sizes[f] > 0 for f in range(4) for _ in range(OFFSETS[f], OFFSETS[f + 1])])
    changed = (before != after).any(1)
    assert changed[quantized].float().mean() > 0.05  # a real share of codes moved
    assert not changed[~quantized].any()
    assert np.mean(losses[-8:]) < np.mean(losses[:8])


def test_pq_init_error_decreases_with_K():
    rng = np.random.default_rng(7)
    offsets = [0, 3000, 3003]  # the second field (3 ids) stays dense for every K
    dense = rng.normal(0, 1, (3003, 8)).astype(np.float32)
    errs = []
    for K in (4, 16, 64, 256):
        emb = CodebookEmbedding(3003, 8, offsets, codebooks=2, codewords=K)
        emb.init_from_dense(dense, progress=False)
        assert emb.sizes == [K, 0]
        rec = emb.decoded()
        np.testing.assert_array_equal(rec[3000:], dense[3000:])  # dense-kept field unchanged
        errs.append(np.sum((rec[:3000] - dense[:3000]) ** 2) / np.sum(dense[:3000] ** 2))
    assert all(a > b for a, b in zip(errs, errs[1:], strict=False)), errs
    assert errs[-1] < 0.5 * errs[0]


def test_pq_init_is_exact_when_each_subspace_has_K_distinct_values():
    rng = np.random.default_rng(8)
    K, D_, kd = 8, 4, 2
    atoms = rng.normal(0, 1, (D_, K, kd))
    codes = rng.integers(0, K, (500, D_))
    codes[:K] = np.arange(K)[:, None]  # every atom used
    dense = np.concatenate([atoms[d][codes[:, d]] for d in range(D_)], 1).astype(np.float32)
    books = pq_init(dense, [0, 500], D_, K, progress=False)
    emb = CodebookEmbedding(500, 8, [0, 500], codebooks=D_, codewords=K)
    emb.init_from_dense(dense, progress=False)
    assert books[0].shape == (D_, K, kd)
    np.testing.assert_allclose(emb.decoded(), dense, rtol=1e-5, atol=1e-5)  # float32 cluster means


def test_memory_accounting_paper_style():
    # the paper's example (Sec. 3.3.1): 20 fields, K = 256, D = 4, l = 128 -> 2.5 MB of codebooks
    offsets = np.arange(21) * 10_000
    mem = embedding_memory(offsets, 128, lightfm_sizes(offsets, 256), codebooks=4)
    assert mem["codebook_mb"] == pytest.approx(20 * 256 * 128 * 4 / 2**20)
    assert mem["codes_mb"] == pytest.approx(200_000 * 4 * 8 / 8 / 2**20)
    assert mem["dense_mb"] == 0 and mem["linear_mb"] == pytest.approx(200_000 * 4 / 2**20)
    dense = embedding_memory(offsets, 128)
    assert dense["embedding_mb"] == pytest.approx(200_000 * 128 * 4 / 2**20)
    assert memory_for("dense", offsets, 128) == dense
    assert memory_for("lightfm", offsets, 128, codebooks=4, codewords=256) == mem
    assert memory_for("xlightfm", offsets, 128, 4, sizes=[256] * 20) == mem
    # the module's own count agrees with its parameters and with real bit-packed code streams
    emb = _lightfm(K=64)
    mem = emb.memory()
    n_floats = sum(C.numel() for C in emb.codebooks)
    assert mem["codebook_mb"] * 2**20 == 4 * n_floats
    assert mem["dense_mb"] * 2**20 == 4 * K_DIM * (5 + 40)
    codes = emb.codes().numpy()
    packed = sum(pack(codes[OFFSETS[f]:OFFSETS[f + 1], d], bits_for(64)).nbytes
                 for f in (1, 3) for d in range(D))
    assert 0 <= packed - mem["codes_mb"] * 2**20 <= 2 * D * 8  # padding words only


def test_field_options_and_search_module_eval_equals_selected_lightfm():
    assert field_options(100, 8, 2, (64, 128, 256)) == [64, 0]  # 128, 256 >= n_f: "keep dense"
    assert field_options(10_000, 8, 2, (64, 128)) == [64, 128]
    emb = XLightFMSearchEmbedding(N, K_DIM, OFFSETS, codebooks=D, candidates=(4, 16, 64))
    with torch.no_grad():
        emb.alpha.normal_()
    emb.eval()
    ids = torch.from_numpy(_rows(100, seed=9))
    with torch.no_grad():
        out = emb(ids)
    lfm = emb.to_codebook_embedding()
    assert lfm.sizes == emb.selection()
    assert torch.equal(out, lfm(ids))


def test_gumbel_softmax_mix_eq11_and_architecture_gradients():
    emb = XLightFMSearchEmbedding(N, K_DIM, OFFSETS, codebooks=D, candidates=(4, 16, 64), seed=0)
    emb.train()
    w = emb.weights_of(3).detach()
    assert w.shape == (3,) and float(w.sum()) == pytest.approx(1.0) and bool((w > 0).all())
    ids = torch.from_numpy(_rows(64, seed=11))
    G = torch.randn(64, 4, K_DIM, generator=torch.Generator().manual_seed(0))
    (emb(ids) * G).sum().backward()
    assert emb.alpha.grad[:, :2].abs().min() > 0  # every field's options get a gradient
    # a confident architecture at low tau is (almost) the one option's LightFM embedding
    with torch.no_grad():
        emb.alpha.zero_()
        emb.alpha[:, 0] = 50.0
    emb.tau = 0.01
    lfm = emb.to_codebook_embedding()
    with torch.no_grad():
        torch.testing.assert_close(emb(ids), lfm(ids), rtol=0, atol=1e-6)


def test_enforce_budget_applies_eq14():
    emb = XLightFMSearchEmbedding(N, K_DIM, OFFSETS, codebooks=D, candidates=(4, 16, 64, 256))
    prev_alpha, prev_sel = emb.alpha.detach().clone(), emb.selection()
    budget = emb.memory_mb() * 1.01  # only the cheapest architecture fits
    with torch.no_grad():
        emb.alpha[1, -1] = 5.0  # a step that wants the largest option of field 1 and 3
        emb.alpha[3, 2] = 3.0
    assert emb.memory_mb() > budget
    assert emb.enforce_budget(prev_alpha, prev_sel, budget)
    assert emb.memory_mb() <= budget
    assert torch.all(emb.alpha <= torch.maximum(prev_alpha, emb.alpha.new_zeros(())))


@pytest.mark.parametrize("fraction", [0.0, 0.3])
def test_search_respects_the_memory_budget(fraction):
    offsets = [0, 30, 230, 830]
    schema = Schema("toy3", tuple(Field(f"f{i}") for i in range(3)))
    X, y = _teacher_data(6000, seed=10, offsets=offsets)
    data = {"train": (X[:5000], y[:5000]), "valid": (X[5000:], y[5000:])}
    cands = (4, 16, 64, 256)
    lo = embedding_memory(offsets, K_DIM, [field_options(n, K_DIM, D, cands)[0] for n in np.diff(offsets)], D)
    hi = embedding_memory(offsets, K_DIM, [field_options(n, K_DIM, D, cands)[-1] for n in np.diff(offsets)], D)
    budget = lo["embedding_mb"] + fraction * (hi["embedding_mb"] - lo["embedding_mb"])
    res = search_xlightfm(lambda: build("fm", schema, 830, K_DIM), data, budget, id_offsets=offsets,
                          codebooks=D, candidates=cands, steps=30, batch_size=256, lr=0.02, arch_lr=0.1,
                          tau_decay=0.03, counts=np.bincount(X[:5000].ravel(), minlength=830),
                          progress=False)
    assert res.memory["embedding_mb"] <= budget and res.peak_mb <= budget
    if fraction == 0.0:  # only the cheapest architecture fits: every step that grew was cut back
        assert res.constrained_steps > 0 and res.sizes == [field_options(n, K_DIM, D, cands)[0]
                                                            for n in np.diff(offsets)]
    assert all(K in field_options(n, K_DIM, D, cands) for K, n in zip(res.sizes, np.diff(offsets), strict=True))
    assert res.embedding.sizes == res.sizes and len(res.history) >= 1
    taus = [h["tau"] for h in res.history]
    assert taus == sorted(taus, reverse=True) and taus[0] > taus[-1]  # annealed
    with pytest.raises(ValueError, match="below the smallest architecture"):
        search_xlightfm(lambda: build("fm", schema, 830, K_DIM), data, 0.5 * lo["embedding_mb"],
                        id_offsets=offsets, codebooks=D, candidates=cands, steps=1, progress=False)


def test_bad_configurations_are_named():
    with pytest.raises(ValueError, match="field 2 has 40 features"):
        CodebookEmbedding(N, 8, OFFSETS, codebooks=2, sizes=[0, 16, 64, 16])
    with pytest.raises(ValueError, match="multiple of the number of codebooks"):
        CodebookEmbedding(N, 9, OFFSETS, codebooks=2)
    with pytest.raises(ValueError, match="n_features"):
        CodebookEmbedding(N + 1, 8, OFFSETS, codebooks=2)
    with pytest.raises(ValueError, match="needs per-field `sizes`"):
        make_embedding(N, 8, "xlightfm", id_offsets=OFFSETS)
    with pytest.raises(ValueError, match="needs `id_offsets`"):
        make_embedding(N, 8, "lightfm")
    with pytest.raises(IndexError, match="feature ids"):
        _lightfm()(torch.tensor([N]))


@pytest.mark.data
def test_real_criteo_layout_trains_and_decodes(criteo_path, tmp_path):
    """39 real fields of very different sizes: some kept dense, codes move, scores match the oracle."""
    from training.data import prepare
    from training.quantize import feature_counts

    data = prepare("criteo", criteo_path, max_rows=3000, min_count=2, cache_dir=tmp_path, progress=False)
    off = [int(o) for o in data.preprocessor.vocab.id_offsets]
    X, y = data.split("train")
    torch.manual_seed(0)
    model = build("dplr", data.schema, data.n_features, 8, rank=2, embedding="lightfm",
                  embedding_opts={"id_offsets": off, "codebooks": 2, "codewords": 32})
    emb = model.embedding
    assert 0 in emb.sizes and 32 in emb.sizes  # both small (dense) and large (quantized) fields
    emb.set_popularity(feature_counts(X, data.n_features))
    before = emb.codes().clone()
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    Xt, yt = torch.from_numpy(np.array(X, np.int64)), torch.from_numpy(np.array(y))
    for s in range(0, 2048, 256):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(Xt[s:s + 256]), yt[s:s + 256])
        opt.zero_grad()
        (loss + emb.regularizer()).backward()
        opt.step()
    assert (emb.codes() != before).any()
    params = model.export_arrays()
    params["emb"] = decode_arrays(emb.export_arrays(), off)
    np.testing.assert_array_equal(params["emb"], emb.decoded())
    with torch.no_grad():
        got = model(Xt[:20]).numpy()
    want = naive.scores("dplr", np.asarray(X[:20]), data.schema.slot_offsets, params)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
