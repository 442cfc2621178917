"""Random models in the artifact's array layout, for tests and benchmarks (never for serving).

``synthetic_model`` draws parameters in the paper's form (``bias, linear, emb`` + ``R`` | ``U, e``
| pruned ``R, mask``: the names tests/naive.py takes) and converts them to the artifact layout of
docs/internals.md: the diagonal terms d_f ||v_f||^2 of single-valued fields folded into
``linear``, ``d`` kept only for multi-valued fields, pruned pairs as ``pair_i < pair_j``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adrank.core.hashing import hash_tokens
from adrank.core.preprocess import N_SPECIAL, Preprocessor, Vocab
from adrank.core.schema import Field, Schema


@dataclass
class SyntheticModel:
    kind: str
    schema: Schema
    preprocessor: Preprocessor
    arrays: dict  # artifact layout
    naive: dict  # tests/naive.py layout
    rho: int | None = None
    target: str = "binary"

    def artifact_parts(self) -> tuple[dict, dict]:
        """(manifest, arrays incl. the vocabulary) as ``Ranker.from_parts`` / the artifact take them."""
        desc, vocab = self.preprocessor.to_state()
        manifest = {"kind": self.kind, "rank": self.rho, "embed_dim": int(self.arrays["emb"].shape[1]),
                    "target": self.target, "schema": self.schema.to_dict(), "preprocess": desc,
                    "n_features": self.preprocessor.vocab.n_features, "embedding": {"type": "dense"}}
        return manifest, {**self.arrays, **vocab}


def make_schema(n_context: int = 4, n_item: int = 5, multi_item: int = 1, multi_context: int = 1,
                max_values: int = 3) -> Schema:
    """Context fields then item fields; the last ``multi_*`` of each side are multi-valued."""
    fields = []
    for role, n, n_multi in (("context", n_context, multi_context), ("item", n_item, multi_item)):
        for f in range(n):
            multi = f >= n - n_multi
            fields.append(Field(f"{role[0]}{f}", "multi" if multi else "categorical", role,
                                max_values if multi else 1))
    return Schema("synthetic", tuple(fields))


def value(f: int, p: int) -> str:
    """Raw value number p of field f; p < values_per_field are kept in the vocabulary."""
    return f"f{f}v{p}"


def make_preprocessor(schema: Schema, values_per_field: int) -> Preprocessor:
    kept = [hash_tokens([value(f, p) for p in range(values_per_field)]) for f in range(schema.m)]
    return Preprocessor(schema, Vocab.from_kept(kept))


def synthetic_model(kind: str, schema: Schema, values_per_field: int = 20, k: int = 8, rho: int = 2,
                    seed: int = 0, target: str = "binary", preprocessor: Preprocessor | None = None
                    ) -> SyntheticModel:
    """Random parameters for ``schema`` (vocabulary: ``preprocessor``'s, or ``values_per_field``
    synthetic values per field, see :func:`value`)."""
    rng = np.random.default_rng(seed)
    pre = preprocessor or make_preprocessor(schema, values_per_field)
    m, n = schema.m, pre.vocab.n_features
    naive = {"bias": rng.normal(size=1).astype(np.float32),
             "linear": rng.normal(scale=0.1, size=n).astype(np.float32),
             "emb": rng.normal(scale=0.3, size=(n, k)).astype(np.float32)}
    arrays = {key: v.copy() for key, v in naive.items()}
    diag = np.zeros(m)  # R_ff of the identity sum_ij R_ij <v_i, v_j> that the kind's form implies
    if kind == "fm":
        diag[:] = -1.0
    elif kind == "dplr":
        U = rng.normal(size=(rho, m)).astype(np.float32)
        e = rng.normal(size=rho).astype(np.float32)
        naive.update(U=U, e=e)
        arrays.update(U=U, e=e)
        diag = -np.einsum("r,rf,rf->f", e.astype(np.float64), U, U)
    else:
        R = rng.normal(size=(m, m)).astype(np.float32)
        R = np.triu(R, 1) + np.triu(R, 1).T
        naive["R"] = R
        if kind == "fwfm":
            arrays["R"] = R
        else:
            keep = min(rho * (m + 1), m * (m - 1) // 2)
            iu, ju = np.triu_indices(m, 1)
            order = np.argsort(-np.abs(R[iu, ju]), kind="stable")[:keep]
            mask = np.zeros((m, m), bool)
            mask[iu[order], ju[order]] = mask[ju[order], iu[order]] = True
            naive["mask"] = mask
            pi, pj = iu[np.sort(order)], ju[np.sort(order)]
            arrays.update(pair_i=pi.astype(np.int32), pair_j=pj.astype(np.int32),
                          pair_r=R[pi, pj].astype(np.float32))
    if kind in ("fm", "dplr"):
        d = np.zeros(m, np.float32)
        lin = arrays["linear"].astype(np.float64)
        for f, fld in enumerate(schema.fields):
            lo, hi = int(pre.vocab.id_offsets[f]), int(pre.vocab.id_offsets[f + 1])
            if fld.type == "multi":
                d[f] = diag[f]
            else:  # ||v_f||^2 is a per-feature scalar: fold 1/2 d_f ||emb_t||^2 into linear_t
                lin[lo:hi] += 0.5 * diag[f] * np.sum(naive["emb"][lo:hi].astype(np.float64) ** 2, axis=1)
        arrays["linear"] = lin.astype(np.float32)
        arrays["d"] = d
    return SyntheticModel(kind, schema, pre, arrays, naive, rho if kind in ("dplr", "pruned") else None, target)


def random_features(schema: Schema, fields, values_per_field: int, rng, n: int) -> list[dict]:
    """``n`` raw feature dicts over ``fields`` (kept values, unseen values, missing, multi lists)."""
    out = []
    for _ in range(n):
        row = {}
        for f in fields:
            fld = schema.fields[f]
            u = rng.random()
            if u < 0.05:
                continue  # missing
            if fld.type == "multi":
                cnt = int(rng.integers(0, fld.max_values + 2))
                row[fld.name] = [value(f, int(p)) for p in rng.integers(0, values_per_field + N_SPECIAL, cnt)]
            else:
                row[fld.name] = value(f, int(rng.integers(0, values_per_field + 3)))  # some unseen
        out.append(row)
    return out
