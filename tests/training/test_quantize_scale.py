"""The codebook layer and the trainer's optimizer at scale (issue 4's 1M-feature experiment).

Three speed changes must not change what is computed:
* ``CodebookEmbedding`` / ``XLightFMSearchEmbedding`` gather all of a batch's rows with one index
  (one [n, k] gradient fill per step instead of one per field): forward values and gradients
  equal a per-feature literal computation of Eq. 6-8;
* ``quantize`` picks codes with float64 similarities but runs the straight-through gradient in
  the parameters' dtype: float32 gradients equal the float64 literal Eq. 6-8 to float32 precision;
* the trainer's fused Adam follows the textbook (single-tensor) Adam trajectory.
"""

import numpy as np
import pytest
import torch

from training.models import make_embedding
from training.quantize import quantize
from training.train import TrainConfig, _optimizer
from training.xlightfm import XLightFMSearchEmbedding

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OFFSETS = [0, 6, 200, 260, 900]  # field 0 stays dense at K = 8
N, K_DIM, D = OFFSETS[-1], 8, 2


def _literal(v, C, T):
    """Eq. 6-8 for rows v [U, k] with codebooks C [D, K, k/D], in v's dtype."""
    U, (D_, K, kd) = v.shape[0], C.shape
    s = -((v.reshape(U, D_, 1, kd) - C.unsqueeze(0)) ** 2).sum(-1)
    b = torch.nn.functional.one_hot(s.argmax(-1), K).to(v.dtype)
    b_soft = torch.softmax(s / T, -1)
    return torch.einsum("udk,dkj->udj", b_soft + (b - b_soft).detach(), C).reshape(U, D_ * kd)


def _ids(n, seed):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([rng.integers(OFFSETS[f], OFFSETS[f + 1], n) for f in range(4)], 1))


def test_codebook_module_equals_per_feature_eq8_values_and_gradients():
    emb = make_embedding(N, K_DIM, "lightfm", id_offsets=OFFSETS, codebooks=D, codewords=8, seed=1)
    emb = emb.double()
    ids = _ids(64, 2)
    G = torch.randn(*ids.shape, K_DIM, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    (emb(ids) * G).sum().backward()
    got_w, got_C = emb.weight.grad.clone(), [C.grad.clone() for C in emb.codebooks]

    w = emb.weight.detach().clone().requires_grad_()
    books = [C.detach().clone().requires_grad_() for C in emb.codebooks]
    total = 0.0
    for b, i in enumerate(ids.flatten().tolist()):  # one feature at a time
        f = int(np.searchsorted(OFFSETS, i, side="right") - 1)
        v = w[i:i + 1]
        q = v if emb.slot[f] < 0 else _literal(v, books[emb.slot[f]], emb.T)
        total = total + (q[0] * G.reshape(-1, K_DIM)[b]).sum()
        assert torch.allclose(emb(ids[b // 4, b % 4].reshape(1)).detach()[0], q[0].detach(), rtol=0, atol=1e-12)
    total.backward()
    torch.testing.assert_close(got_w, w.grad, rtol=1e-9, atol=1e-12)
    for g, ref in zip(got_C, books, strict=True):
        torch.testing.assert_close(g, ref.grad, rtol=1e-9, atol=1e-12)
    assert got_w[ids.flatten()].abs().sum() > 0


def test_float32_gradient_path_matches_float64_literal():
    g = torch.Generator().manual_seed(5)
    v64 = torch.randn(200, 8, generator=g, dtype=torch.float64) * 0.3
    C64 = torch.randn(2, 32, 4, generator=g, dtype=torch.float64) * 0.3
    G = torch.randn(200, 8, generator=g, dtype=torch.float64)
    v, C = v64.float().requires_grad_(), C64.float().requires_grad_()
    q, codes = quantize(v, C, 0.5)
    (q * G.float()).sum().backward()
    v64, C64 = v.detach().double().requires_grad_(), C.detach().double().requires_grad_()
    q_ref = _literal(v64, C64, 0.5)
    (q_ref * G).sum().backward()
    assert torch.equal(q.detach().double(), q_ref.detach())  # the hard codewords, exactly
    assert torch.equal(codes, quantize(v.detach().double(), C.detach().double())[1])  # float64 argmax
    torch.testing.assert_close(v.grad.double(), v64.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(C.grad.double(), C64.grad, rtol=1e-4, atol=1e-6)


def test_search_embedding_gradients_equal_a_per_field_gather():
    torch.manual_seed(0)
    emb = XLightFMSearchEmbedding(N, K_DIM, OFFSETS, codebooks=D, candidates=(4, 8, 16), seed=2).double()
    ids = _ids(32, 4)
    torch.manual_seed(7)  # the same Gumbel noise in both passes
    (emb(ids) ** 2).sum().backward()
    got = emb.weight.grad.clone()
    emb.zero_grad()
    full = emb.weight  # reference: gather each field's rows separately (the pre-change code path)
    parts = {}
    torch.manual_seed(7)
    uniq, inv = torch.unique(ids.reshape(-1), return_inverse=True)
    for f in range(4):
        sel = uniq[(uniq >= OFFSETS[f]) & (uniq < OFFSETS[f + 1])]
        v, wts = full[sel], emb.weights_of(f)
        c = sum(wts[j] * (v if bi < 0 else quantize(v, emb.books[bi], emb.T)[0])
                for j, bi in enumerate(emb.book_of[f]))
        parts[f] = c
    rows = torch.cat([parts[f] for f in range(4)])[inv].reshape(*ids.shape, K_DIM)
    (rows ** 2).sum().backward()
    torch.testing.assert_close(got, emb.weight.grad, rtol=1e-9, atol=1e-12)


def test_trainer_fused_adam_follows_textbook_adam():
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.embedding = torch.nn.Embedding(50, 4)
    model.linear = torch.nn.Embedding(50, 1)
    model.R = torch.nn.Parameter(torch.randn(3, 3))
    model.interaction_params = ("R",)  # its own learning rate
    twin = __import__("copy").deepcopy(model)
    cfg = TrainConfig(lr=0.01, interaction_lr=0.03)
    opt = _optimizer(model, cfg)
    ref = torch.optim.Adam([{"params": [twin.embedding.weight, twin.linear.weight]},
                            {"params": [twin.R], "lr": 0.03}], lr=0.01, foreach=False)
    for step in range(5):
        ids = torch.randint(0, 50, (16,), generator=torch.Generator().manual_seed(step))
        for m, o in ((model, opt), (twin, ref)):
            loss = (m.embedding(ids).sum(1) * m.linear(ids)[:, 0]).pow(2).mean() + (m.R ** 2).sum()
            o.zero_grad()
            loss.backward()
            o.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
