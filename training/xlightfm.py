"""xLightFM: per-field codebook-size search under a memory budget (xLightFM paper, Sec. 3.4).

Each field f gets G_f candidate options, sorted by memory (cheapest first, as Eq. 14 assumes):
the codebook sizes K in ``CANDIDATES`` with K < n_f, plus "keep dense" (size 0) when the field
is no larger than some candidate (Sec. 4.4).  The field's embedding during the search is

    c_i = sum_j softmax((alpha_f + g) / tau)_j  q_i^(j),   g ~ Gumbel(0, 1)              (Eq. 11)

where q^(j) is the LightFM composition with option j's own codebooks (``quantize``, Eq. 6-8) or
v_i itself for "dense"; alpha_f are the architecture logits (log alpha of Eq. 9).  Algorithm 1:
alternately one first-order step on alpha with a validation batch (Eq. 12 with xi = 0) and one
step on the weights T with a training batch (Eq. 13 = task loss + lambda L_distance); tau is
annealed as tau = max(tau_min, tau0 - decay * step) (Sec. 4.4).  When the argmax architecture
breaks the budget, Eq. 14 caps the logits of the options at or above each field's previous
choice at their previous values; if that is not enough, fields whose choice grew return to
their previous logits, so every architecture visited respects the budget.  Afterwards
``SearchResult.embedding`` is a ``CodebookEmbedding`` with the argmax sizes, warm-started from the
search, to be re-trained with the LightFM objective (Sec. 3.4.3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from training.quantize import BatchCache, CodebookEmbedding, embedding_memory, field_sizes_of, quantize

CANDIDATES = (64, 128, 256, 512, 1024, 2048)


def field_options(n_f: int, k: int, D: int, candidates=CANDIDATES) -> list[int]:
    """Field options sorted by memory: sizes K < n_f, and 0 (dense) if some K >= n_f."""
    opts = {int(K) if K < n_f else 0 for K in candidates}
    return sorted(opts, key=lambda K: embedding_memory([0, n_f], k, [K], D)["embedding_mb"])


class XLightFMSearchEmbedding(nn.Module):
    """The search-time embedding ``ids [...] -> [..., k]``: a Gumbel-softmax mix of options."""

    def __init__(self, n_features: int, k: int, id_offsets, codebooks: int = 4, candidates=CANDIDATES,
                 temperature: float = 1.0, init_std: float = 0.01, seed: int | None = None):
        super().__init__()
        n_f = field_sizes_of(id_offsets)
        if int(n_f.sum()) != n_features or k % codebooks:
            raise ValueError(f"need id_offsets ending at n_features={n_features} and k={k} divisible by D={codebooks}")
        self.n_features, self.k, self.D, self.T = int(n_features), int(k), int(codebooks), float(temperature)
        self.id_offsets = [int(o) for o in np.asarray(id_offsets)]
        self.options = [field_options(int(n), k, codebooks, candidates) for n in n_f]
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        self.weight = nn.Parameter(torch.randn(n_features, k, generator=g) * init_std)
        self.books, self.book_of = nn.ParameterList(), []  # book_of[f][j]: index in books, -1 = dense
        for f, opts in enumerate(self.options):
            self.book_of.append([])
            for K in opts:
                self.book_of[f].append(len(self.books) if K else -1)
                if K:
                    pick = self.id_offsets[f] + torch.randperm(int(n_f[f]), generator=g)[:K]
                    C = self.weight.detach()[pick].reshape(K, codebooks, -1).transpose(0, 1)
                    self.books.append(nn.Parameter(C.contiguous()))
        G = max(len(o) for o in self.options)
        self.alpha = nn.Parameter(torch.zeros(len(n_f), G))  # logits: argmax = cheapest at start
        self.register_buffer("valid", torch.tensor([[j < len(o) for j in range(G)] for o in self.options]))
        self.register_buffer("popularity", torch.ones(n_features))
        self.tau = 1.0
        self._last = BatchCache()

    def weights_of(self, f: int) -> torch.Tensor:
        """Option weights of field f: Gumbel-softmax (Eq. 11) in training, one-hot argmax in eval."""
        a = self.alpha[f, : len(self.options[f])]
        if not self.training:
            return torch.nn.functional.one_hot(a.argmax(), a.numel()).to(a.dtype)
        g = -torch.log(-torch.log(torch.rand_like(a).clamp(1e-10, 1.0 - 1e-7)))
        return torch.softmax((a + g) / self.tau, dim=0)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        uniq, inv = torch.unique(ids.reshape(-1), return_inverse=True)
        bounds = torch.searchsorted(uniq, torch.tensor(self.id_offsets)).tolist()
        rows = self.weight[uniq]  # one gather: one [n, k] gradient fill per step, not one per field
        parts, reg = [], []
        for f in range(len(self.options)):
            a, b = bounds[f], bounds[f + 1]
            if a == b:
                continue
            v, w = rows[a:b], self.weights_of(f)
            c = 0.0
            for j, bi in enumerate(self.book_of[f]):
                if self.training or w[j] > 0:
                    c = c + w[j] * (v if bi < 0 else quantize(v, self.books[bi], self.T)[0])
            parts.append(c)
            reg.append((uniq[a:b], v, c))
        self._last = BatchCache(reg) if torch.is_grad_enabled() else self._last
        return torch.cat(parts)[inv].reshape(*ids.shape, self.k)

    def regularizer(self) -> torch.Tensor:
        """Eq. 5 on the mixed representation c_i (popularity-weighted mean distance)."""
        if not self._last:
            return self.weight.new_zeros(())
        w = [torch.log1p(self.popularity[i]) for i, _, _ in self._last]
        num = sum((wi * (v - c).pow(2).sum(1)).sum() for wi, (_, v, c) in zip(w, self._last, strict=True))
        return num / sum(wi.sum() for wi in w).clamp(min=1e-12)

    def selection(self) -> list[int]:
        """Per-field codebook sizes of the argmax architecture (0 = dense)."""
        a = self.alpha.detach().masked_fill(~self.valid, -torch.inf).argmax(1).tolist()
        return [self.options[f][j] for f, j in enumerate(a)]

    def memory_mb(self, sizes=None) -> float:
        return embedding_memory(self.id_offsets, self.k, sizes or self.selection(), self.D)["embedding_mb"]

    @torch.no_grad()
    def enforce_budget(self, prev_alpha: torch.Tensor, prev_sel: list[int], budget_mb: float) -> bool:
        """Eq. 14, then (if still over) restore the previous logits of fields whose choice grew.

        Returns whether the step broke the budget (and had to be constrained)."""
        if self.memory_mb() <= budget_mb:
            return False
        for f, K in enumerate(prev_sel):
            s = self.options[f].index(K)
            self.alpha[f, s:] = torch.minimum(self.alpha[f, s:], prev_alpha[f, s:])
        sel = self.selection()
        if self.memory_mb(sel) > budget_mb:
            for f, (K_new, K_old) in enumerate(zip(sel, prev_sel, strict=True)):
                if self.options[f].index(K_new) > self.options[f].index(K_old):
                    self.alpha[f] = prev_alpha[f]
        return True

    @torch.no_grad()
    def to_codebook_embedding(self) -> CodebookEmbedding:
        """A LightFM embedding with the selected sizes, warm-started from the search (Sec. 3.4.3)."""
        sizes = self.selection()
        out = CodebookEmbedding(self.n_features, self.k, self.id_offsets, self.D, sizes=sizes, temperature=self.T)
        out.weight.copy_(self.weight)
        out.popularity.copy_(self.popularity)
        for f, K in enumerate(sizes):
            if K:
                out.codebooks[out.slot[f]].copy_(self.books[self.book_of[f][self.options[f].index(K)]])
        return out


@dataclass
class SearchResult:
    sizes: list[int]  # per-field codebook sizes, 0 = kept dense
    memory: dict  # embedding_memory(...) of the selection
    embedding: CodebookEmbedding  # warm start for the re-training
    model: nn.Module  # the model trained during the search (its embedding is the search module)
    peak_mb: float = 0.0  # largest embedding_mb of any architecture visited (<= the budget)
    constrained_steps: int = 0  # architecture steps that broke the budget and were cut back (Eq. 14)
    history: list[dict] = field(default_factory=list)


def _batch(X, y, idx):
    idx = np.sort(idx)
    return torch.from_numpy(np.asarray(X[idx], dtype=np.int64)), torch.from_numpy(np.asarray(y[idx], np.float32))


def search_xlightfm(model_factory, data: dict, budget_mb: float, *, id_offsets, codebooks: int = 4,
                    candidates=CANDIDATES, steps: int = 1000, batch_size: int = 2048, lr: float = 5e-4,
                    arch_lr: float = 3e-3, lam: float = 1.0, temperature: float = 1.0, tau0: float = 1.0,
                    tau_decay: float = 3e-4, tau_min: float = 1e-3, counts=None, target: str = "binary",
                    seed: int = 0, log_every: int = 50, progress: bool = True) -> SearchResult:
    """Algorithm 1: search per-field codebook sizes whose embedding fits in ``budget_mb`` (Eq. 14).

    ``model_factory()`` returns a model (x LongTensor [B, S] -> raw scores [B]) holding its
    embedding in ``.embedding`` with dimension ``.embed_dim``; the search swaps in its own.
    ``data`` = {"train": (X, y), "valid": (X, y)} arrays (memmaps are fine).  ``counts`` are the
    feature frequencies for Eq. 5's popularity weights.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = model_factory()
    n = int(id_offsets[-1])
    emb = XLightFMSearchEmbedding(n, int(model.embed_dim), id_offsets, codebooks, candidates, temperature, seed=seed)
    if counts is not None:
        emb.popularity.copy_(torch.as_tensor(np.asarray(counts), dtype=torch.float32))
    cheapest = emb.memory_mb([o[0] for o in emb.options])
    if cheapest > budget_mb:
        raise ValueError(f"memory budget {budget_mb} MB is below the smallest architecture ({cheapest:.4f} MB)")
    model.embedding = emb
    (Xt, yt), (Xv, yv) = data["train"], data["valid"]
    loss_fn = nn.functional.binary_cross_entropy_with_logits if target == "binary" else nn.functional.mse_loss
    arch_opt = torch.optim.Adam([emb.alpha], lr=arch_lr)
    w_opt = torch.optim.Adam([p for p in model.parameters() if p is not emb.alpha], lr=lr)
    model.train()
    history, peak, constrained = [], 0.0, 0
    for step in tqdm(range(steps), desc="xLightFM search", disable=None if progress else True):
        emb.tau = max(tau_min, tau0 - tau_decay * step)
        prev_alpha, prev_sel = emb.alpha.detach().clone(), emb.selection()
        xv, yb = _batch(Xv, yv, rng.integers(0, len(yv), batch_size))  # architecture step, validation
        arch_opt.zero_grad()
        valid_loss = loss_fn(model(xv), yb)
        valid_loss.backward()
        arch_opt.step()
        constrained += emb.enforce_budget(prev_alpha, prev_sel, budget_mb)
        peak = max(peak, emb.memory_mb())
        xt, yb = _batch(Xt, yt, rng.integers(0, len(yt), batch_size))  # weight step, training
        w_opt.zero_grad()
        train_loss = loss_fn(model(xt), yb) + lam * emb.regularizer()
        train_loss.backward()
        w_opt.step()
        if step % log_every == 0 or step == steps - 1:
            history.append({"step": step, "tau": emb.tau, "valid_loss": valid_loss.item(),
                            "train_loss": train_loss.item(), "sizes": emb.selection(),
                            "embedding_mb": emb.memory_mb()})
    sizes = emb.selection()
    mem = embedding_memory(id_offsets, emb.k, sizes, codebooks)
    return SearchResult(sizes, mem, emb.to_codebook_embedding(), model, peak, constrained, history)
