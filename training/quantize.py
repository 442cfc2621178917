"""LightFM codebook embeddings (xLightFM paper, Sec. 3.3) and their memory accounting.

Each quantized field f owns D codebooks ``C_f^d`` of K_f codewords of dimension k/D.  A feature
i of field f keeps a continuous embedding ``v_i`` [k] (training only); its served embedding is
the composition ``q_i = [C_f^1 b_i^1, ..., C_f^D b_i^D]`` of one codeword per codebook, with

    b_i^d = one-hot(argmax_c s(v_i^d, c)),  s(v, c) = -||v - c||^2                       (Eq. 6)
    b~_i^d = softmax(s(v_i^d, C_f^d) / T)                                                 (Eq. 7)
    b^_i^d = b~_i^d + stop_gradient(b_i^d - b~_i^d)                                       (Eq. 8)

so the forward pass uses the hard codeword (as served) and the backward pass the tempered softmax
(straight-through estimator).  Codes are recomputed from the current (v, C) at every forward:
they keep being reassigned during training.  The training loss adds lambda * ``regularizer()``:

    L_distance = sum_i w_i ||v_i - q_i||^2 / sum_i w_i,   w_i = log(1 + f_i)               (Eq. 5)

over the distinct features of the last batch (the paper sums over all n features with
w_i = log f_i / sum_k log f_k; we use log(1 + f_i) so features seen once still count, and the
batch-normalised mean so lambda does not depend on batch coverage).  Fields with no more
features than codewords (n_f <= K_f) are kept dense, as in the paper's Sec. 4.4.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from adrank.core.bitpack import bits_for

MB = 1024 * 1024
_CHUNK = 16384  # features quantized per step when decoding the whole table


def feature_counts(X, n_features: int, chunk: int = 1 << 20) -> np.ndarray:
    """Frequencies f_i of every feature id in encoded rows X [N, S] (PAD < 0 ignored), for Eq. 5."""
    counts = np.zeros(n_features, np.int64)
    for a in tqdm(range(0, len(X), chunk), desc="feature counts", disable=True if len(X) <= chunk else None):
        ids = np.asarray(X[a:a + chunk]).ravel()
        counts += np.bincount(ids[ids >= 0], minlength=n_features)[:n_features]
    return counts


def field_sizes_of(id_offsets) -> np.ndarray:
    """n_f per field from ``vocab.id_offsets`` (field f owns ids [off[f], off[f+1]))."""
    off = np.asarray(id_offsets, dtype=np.int64)
    if off.ndim != 1 or off.size < 2 or off[0] != 0 or np.any(np.diff(off) < 1):
        raise ValueError(f"id_offsets must start at 0 and increase strictly, got {off.tolist()[:8]}...")
    return np.diff(off)


def lightfm_sizes(id_offsets, K: int) -> list[int]:
    """Per-field codebook sizes of LightFM: K everywhere, 0 (= kept dense) where n_f <= K."""
    return [int(K) if n_f > K else 0 for n_f in field_sizes_of(id_offsets)]


def embedding_memory(id_offsets, k: int, sizes=None, codebooks: int = 1) -> dict:
    """Paper-style memory (Sec. 4.3) in MB (2^20 bytes): 32-bit floats, ceil(log2 K)-bit codes.

    ``sizes=None`` is a dense table; else ``sizes[f]`` is field f's codebook size K_f (0 = kept
    dense) and ``codebooks`` is D.  ``embedding_mb`` = codebooks + codes + dense-kept rows; the
    linear weights (n floats) are reported separately as ``linear_mb``, as the paper does.
    """
    n_f = field_sizes_of(id_offsets)
    if sizes is None:
        sizes = [0] * len(n_f)
    if len(sizes) != len(n_f):
        raise ValueError(f"sizes has {len(sizes)} entries for {len(n_f)} fields")
    codebook_b = codes_bits = dense_b = 0
    for n, K in zip(n_f.tolist(), sizes, strict=True):
        if K:
            codebook_b += 4 * K * k  # D codebooks of K codewords of k/D floats
            codes_bits += n * codebooks * bits_for(K)
        else:
            dense_b += 4 * n * k
    out = {"codebook_mb": codebook_b / MB, "codes_mb": codes_bits / 8 / MB, "dense_mb": dense_b / MB}
    out["embedding_mb"] = out["codebook_mb"] + out["codes_mb"] + out["dense_mb"]
    out["linear_mb"] = 4 * int(n_f.sum()) / MB
    return out


def memory_for(kind: str, id_offsets, k: int, codebooks: int = 4, codewords: int = 256, sizes=None) -> dict:
    """``embedding_memory`` of an embedding kind: "dense", "lightfm" (K = ``codewords`` in every
    field larger than K) or "xlightfm" (the searched per-field ``sizes``)."""
    if kind == "dense":
        return embedding_memory(id_offsets, k)
    if kind == "lightfm":
        return embedding_memory(id_offsets, k, lightfm_sizes(id_offsets, codewords), codebooks)
    if kind == "xlightfm" and sizes is not None:
        return embedding_memory(id_offsets, k, sizes, codebooks)
    raise ValueError(f"memory_for: unknown kind {kind!r} (xlightfm needs sizes)")


def quantize(v: torch.Tensor, C: torch.Tensor, T: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(q [U, k], codes [U, D]) of continuous rows v [U, k] with codebooks C [D, K, k/D].

    Forward value: the hard codewords (Eq. 6), exactly ``C[d, codes[:, d]]``; gradient: the
    tempered softmax of Eq. 7 via Eq. 8.  Similarities are computed in float64 so the argmax does
    not depend on how rows are batched (``forward`` and ``decoded`` agree bit for bit).
    """
    U = v.shape[0]
    D, K, kd = C.shape
    vd = v.reshape(U, D, kd)
    with torch.no_grad():  # the codes: float64 similarities, outside the autograd graph
        Cd = C.double()
        s = 2.0 * torch.einsum("udj,dcj->udc", vd.double(), Cd) - Cd.pow(2).sum(-1)  # -||v-c||^2 + ||v||^2
        codes = s.argmax(-1)  # [U, D]
        del s
    q = C[torch.arange(D, device=C.device), codes]  # [U, D, kd]: exact codewords
    if torch.is_grad_enabled() and (v.requires_grad or C.requires_grad):
        # the gradient path in the parameters' own dtype: the same s, at half the memory traffic
        s = 2.0 * torch.einsum("udj,dcj->udc", vd, C) - C.pow(2).sum(-1)
        soft = torch.softmax(s / T, dim=-1)  # b~ (Eq. 7)
        q = q + torch.einsum("udc,dcj->udj", soft - soft.detach(), C)  # value += 0; grad via b~
    return q.reshape(U, D * kd), codes


class BatchCache(list):
    """The last training batch's (ids, v, q) for ``regularizer()``: holds autograd graph nodes,
    so copies and pickles of the module start empty instead of failing."""

    def __deepcopy__(self, memo):
        return BatchCache()

    def __reduce__(self):
        return BatchCache, ()


class CodebookEmbedding(nn.Module):
    """LightFM embedding ``ids [...] -> [..., k]``: per-field codebooks, codes by argmax (Eq. 3).

    ``sizes[f]`` is field f's codebook size K_f (0 = kept dense); by default every field gets
    ``codewords`` (LightFM), dense where n_f <= K.  xLightFM passes the searched ``sizes``.
    Parameters: ``weight`` [n, k] (continuous v), ``codebooks.<j>`` [D, K_f, k/D] per quantized
    field, buffer ``popularity`` [n] (feature counts f_i for Eq. 5; set with ``set_popularity``).
    """

    def __init__(self, n_features: int, k: int, id_offsets, codebooks: int = 4, codewords: int = 256,
                 sizes=None, temperature: float = 1.0, init_std: float = 0.01, seed: int | None = None):
        super().__init__()
        n_f = field_sizes_of(id_offsets)
        if int(n_f.sum()) != n_features:
            raise ValueError(f"id_offsets end at {int(n_f.sum())} but n_features is {n_features}")
        if codebooks < 1 or k % codebooks:
            raise ValueError(f"embedding dim k={k} must be a multiple of the number of codebooks D={codebooks}")
        if temperature <= 0:
            raise ValueError(f"temperature T must be > 0, got {temperature}")
        self.sizes = lightfm_sizes(id_offsets, codewords) if sizes is None else [int(s) for s in sizes]
        if len(self.sizes) != len(n_f) or any(s < 0 or (s and s < 2) for s in self.sizes):
            raise ValueError(f"sizes must give K_f >= 2 or 0 (dense) for each of {len(n_f)} fields")
        for f, (K, n) in enumerate(zip(self.sizes, n_f.tolist(), strict=True)):
            if K >= n:
                raise ValueError(f"field {f} has {n} features: its codebook size must be below that "
                                 f"(got {K}; 0 keeps it dense)")
        self.n_features, self.k, self.D, self.T = int(n_features), int(k), int(codebooks), float(temperature)
        self.id_offsets = [int(o) for o in np.asarray(id_offsets)]
        g = torch.Generator().manual_seed(seed) if seed is not None else None  # None: torch's global RNG
        self.weight = nn.Parameter(torch.randn(n_features, k, generator=g) * init_std)
        self.codebooks = nn.ParameterList()
        self.slot = []  # field -> index into self.codebooks, or -1 when kept dense
        for f, K in enumerate(self.sizes):
            self.slot.append(len(self.codebooks) if K else -1)
            if K:  # codewords start as K distinct rows of the field's initial embeddings
                a = self.id_offsets[f]
                pick = a + torch.randperm(int(n_f[f]), generator=g)[:K]
                self.codebooks.append(nn.Parameter(self.weight.detach()[pick].reshape(K, self.D, -1)
                                                   .transpose(0, 1).contiguous()))
        self.register_buffer("popularity", torch.ones(n_features))
        self._last = BatchCache()  # (ids, v, q) of the last training batch, for regularizer()

    # --- forward -----------------------------------------------------------------------
    def _rows(self, uniq: torch.Tensor, keep: bool) -> torch.Tensor:
        """Embeddings of sorted distinct ids: fields are contiguous id ranges, one segment each."""
        bounds = torch.searchsorted(uniq, torch.tensor(self.id_offsets, device=uniq.device)).tolist()
        # one gather for all fields: each indexing of ``weight`` costs a zero-filled [n, k]
        # gradient in backward, so per-field gathers would cost m full-table fills per step
        rows = self.weight[uniq]
        parts, reg = [], []
        for f in range(len(self.sizes)):
            a, b = bounds[f], bounds[f + 1]
            if a == b:
                continue
            v = rows[a:b]
            if self.slot[f] < 0:
                parts.append(v)
                continue
            C = self.codebooks[self.slot[f]]
            if torch.is_grad_enabled():
                q = quantize(v, C, self.T)[0]
            else:  # bounded memory for whole-table decoding: [chunk, D, K] similarities at a time
                q = torch.cat([quantize(v[i:i + _CHUNK], C, self.T)[0] for i in range(0, len(v), _CHUNK)])
            parts.append(q)
            reg.append((uniq[a:b], v, q))
        if keep:
            self._last = BatchCache(reg)
        return torch.cat(parts) if parts else self.weight[:0]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.n_features):
            raise IndexError(f"feature ids must be in [0, {self.n_features}), got [{int(ids.min())}, {int(ids.max())}]")
        uniq, inv = torch.unique(ids.reshape(-1), return_inverse=True)
        rows = self._rows(uniq, keep=torch.is_grad_enabled())
        return rows[inv].reshape(*ids.shape, self.k)

    def regularizer(self) -> torch.Tensor:
        """Eq. 5 over the last training batch: popularity-weighted mean ||v_i - q_i||^2."""
        if not self._last:
            return self.weight.new_zeros(())
        num = den = 0.0
        for ids, v, q in self._last:
            w = torch.log1p(self.popularity[ids])
            num = num + (w * (v - q).pow(2).sum(1)).sum()
            den = den + w.sum()
        return num / den.clamp(min=1e-12)

    def set_popularity(self, counts) -> None:
        """Feature frequencies f_i [n] (e.g. ``np.bincount`` of the training ids) for Eq. 5."""
        counts = torch.as_tensor(np.asarray(counts), dtype=torch.float32)
        if counts.shape != (self.n_features,) or bool((counts < 0).any()):
            raise ValueError(f"popularity must be {self.n_features} non-negative counts, got shape {tuple(counts.shape)}")
        self.popularity.copy_(counts)

    # --- initialisation from a trained dense model ---------------------------------------
    @torch.no_grad()
    def init_from_dense(self, dense, iters: int = 20, seed: int = 0, progress: bool = True) -> None:
        """v <- the dense table, codebooks <- per-subspace k-means of each field (PQ, Eq. 2)."""
        dense = torch.as_tensor(np.asarray(dense), dtype=torch.float32)
        if dense.shape != (self.n_features, self.k):
            raise ValueError(f"dense table must be [{self.n_features}, {self.k}], got {tuple(dense.shape)}")
        self.weight.copy_(dense)
        books = pq_init(dense, self.id_offsets, self.D, self.sizes, iters=iters, seed=seed, progress=progress)
        for f, C in enumerate(books):
            if C is not None:
                self.codebooks[self.slot[f]].copy_(C)

    # --- what is served -----------------------------------------------------------------
    @torch.no_grad()
    def codes(self) -> torch.Tensor:
        """Current code of every feature and codebook, int64 [n, D] (0 on dense-kept fields)."""
        out = torch.zeros(self.n_features, self.D, dtype=torch.long)
        for f, j in enumerate(self.slot):
            if j >= 0:
                for a in range(self.id_offsets[f], self.id_offsets[f + 1], _CHUNK):
                    b = min(a + _CHUNK, self.id_offsets[f + 1])
                    out[a:b] = quantize(self.weight[a:b], self.codebooks[j], self.T)[1]
        return out

    @torch.no_grad()
    def table(self) -> torch.Tensor:
        """The decoded table [n, k] the codes represent (dense-kept rows as they are)."""
        return self._rows(torch.arange(self.n_features), keep=False).detach().clone()

    def decoded(self) -> np.ndarray:
        return self.table().numpy().astype(np.float32)

    def export_arrays(self) -> dict[str, np.ndarray]:
        """Codebooks + codes for the artifact (decoded by ``decode_arrays``):

        codebooks float32 [W, k/D]: field f's d-th codebook is rows
            ``codebook_base[f, d] : codebook_base[f, d] + codebook_sizes[f]`` (-1 / 0 when dense);
        codes uint8/uint16 [n, D]: the codeword of feature i in its field's d-th codebook
            (``code_bits[f] = ceil(log2 K_f)`` bits are enough: see adrank/core/bitpack.py);
        dense_rows float32 [n_dense, k]: the rows of dense-kept fields, field f's feature i at
            ``dense_base[f] + i - id_offsets[f]`` (-1 for quantized fields).
        """
        m, D = len(self.sizes), self.D
        books, base, dense_rows, dense_base = [], np.full((m, D), -1, np.int64), [], np.full(m, -1, np.int64)
        n_books = n_dense = 0
        for f, (K, j) in enumerate(zip(self.sizes, self.slot, strict=True)):
            if j >= 0:
                base[f] = n_books + K * np.arange(D)
                books.append(self.codebooks[j].detach().reshape(D * K, -1).numpy())
                n_books += D * K
            else:
                dense_base[f] = n_dense
                dense_rows.append(self.weight.detach()[self.id_offsets[f]:self.id_offsets[f + 1]].numpy())
                n_dense += self.id_offsets[f + 1] - self.id_offsets[f]
        kd = self.k // D
        code_dtype = np.uint8 if max(self.sizes) <= 256 else np.uint16
        return {
            "codebooks": np.ascontiguousarray(np.concatenate(books) if books else np.zeros((0, kd)), np.float32),
            "codebook_base": base,
            "codebook_sizes": np.asarray(self.sizes, np.int64),
            "code_bits": np.array([bits_for(K) if K else 0 for K in self.sizes], np.int64),
            "codes": self.codes().numpy().astype(code_dtype),
            "dense_rows": np.ascontiguousarray(np.concatenate(dense_rows) if dense_rows
                                               else np.zeros((0, self.k)), np.float32),
            "dense_base": dense_base,
        }

    def memory(self) -> dict:
        return embedding_memory(self.id_offsets, self.k, self.sizes, self.D)


def decode_arrays(arrays: dict, id_offsets) -> np.ndarray:
    """The dense table [n, k] from ``export_arrays`` output, by plain loops (the reference)."""
    off = [int(o) for o in id_offsets]
    codes, books = arrays["codes"], arrays["codebooks"]
    D, kd = codes.shape[1], books.shape[1]
    out = np.zeros((off[-1], D * kd), np.float32)
    for f in range(len(off) - 1):
        for i in range(off[f], off[f + 1]):
            if arrays["codebook_sizes"][f]:
                for d in range(D):
                    out[i, d * kd:(d + 1) * kd] = books[arrays["codebook_base"][f, d] + int(codes[i, d])]
            else:
                out[i] = arrays["dense_rows"][arrays["dense_base"][f] + i - off[f]]
    return out


def kmeans(x: torch.Tensor, K: int, iters: int = 20, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means of rows x [N, j] (N >= K) -> centroids [K, j]; empty clusters re-seeded
    at the points farthest from their centroid."""
    g = torch.Generator().manual_seed(seed)
    u = torch.unique(x, dim=0)  # start from distinct points (duplicates would share a cluster)
    C = u[torch.randperm(u.shape[0], generator=g)[:K]] if u.shape[0] >= K else u[torch.arange(K) % u.shape[0]]
    for _ in range(iters):
        a, dmin = _nearest(x, C)
        C_new = torch.zeros_like(C).index_add_(0, a, x)
        cnt = torch.bincount(a, minlength=K)
        C_new /= cnt.clamp(min=1).unsqueeze(1).to(x.dtype)
        empty = torch.nonzero(cnt == 0).flatten()
        if empty.numel():
            C_new[empty] = x[dmin.argsort(descending=True)[: empty.numel()]]
        C = C_new
    return C


def _nearest(x: torch.Tensor, C: torch.Tensor, chunk: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, squared distance) of the nearest centroid of every row, [chunk, K] at a time."""
    idx, dmin = [], []
    for a in range(0, x.shape[0], chunk):
        d, i = torch.cdist(x[a:a + chunk], C).pow(2).min(1)
        idx.append(i)
        dmin.append(d)
    return torch.cat(idx), torch.cat(dmin)


def pq_init(dense, id_offsets, D: int, K, iters: int = 20, seed: int = 0, progress: bool = True) -> list:
    """Product quantization of a trained dense table (Eq. 2), one quantizer per field.

    ``K`` is one size or per-field sizes (0 = kept dense).  Returns, per field, the codebooks
    float32 tensor [D, K_f, k/D] (k-means in each of the D subspaces) or None when kept dense.
    """
    dense = torch.as_tensor(np.asarray(dense), dtype=torch.float32)
    n, k = dense.shape
    if k % D:
        raise ValueError(f"embedding dim k={k} must be a multiple of D={D}")
    sizes = lightfm_sizes(id_offsets, K) if np.isscalar(K) else list(K)
    off = [int(o) for o in id_offsets]
    if off[-1] != n:
        raise ValueError(f"id_offsets end at {off[-1]} but the dense table has {n} rows")
    kd, out = k // D, []
    bar = tqdm(total=sum(D for s in sizes if s), desc="PQ init (k-means)", disable=None if progress else True)
    for f, Kf in enumerate(sizes):
        if not Kf or off[f + 1] - off[f] <= Kf:
            out.append(None)
            continue
        rows = dense[off[f]:off[f + 1]]
        books = []
        for d in range(D):
            books.append(kmeans(rows[:, d * kd:(d + 1) * kd], Kf, iters, seed + 7919 * f + d))
            bar.update(1)
        out.append(torch.stack(books))
    bar.close()
    return out


def make_codebook_embedding(n_features: int, k: int, kind: str = "lightfm", **opts) -> CodebookEmbedding:
    """Entry point for ``make_embedding``: ``kind`` "lightfm" (``codewords`` K everywhere) or
    "xlightfm" (``sizes`` from ``training.xlightfm.search_xlightfm``); opts as CodebookEmbedding."""
    if kind == "xlightfm" and opts.get("sizes") is None:
        raise ValueError("an xlightfm embedding needs per-field `sizes` (run training.xlightfm.search_xlightfm)")
    if kind not in ("lightfm", "xlightfm"):
        raise ValueError(f"unknown codebook embedding kind {kind!r}")
    if "id_offsets" not in opts:
        raise ValueError(f"a {kind} embedding needs `id_offsets` (vocab.id_offsets: the field layout)")
    return CodebookEmbedding(n_features, k, **opts)

