"""Random models in the artifact's array layout, for tests and benchmarks (never for serving).

``synthetic_model`` draws parameters in the paper's form (``bias, linear, emb`` + ``R`` | ``U, e``
| pruned ``R, mask``: the names a trained model exports and tests/naive.py takes; a pruned model
keeps the pairs the trainer's own pruning rule keeps, ``training.models.pruned.prune_mask``) and
converts them with the exporter's own folding (:func:`exporter.fold.fold`), so they are laid out
exactly as an exported artifact: diagonal terms of single-valued fields folded into ``linear``,
pruned pairs block-ordered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adrank.core import kinds
from adrank.core.hashing import hash_tokens
from adrank.core.preprocess import N_SPECIAL, Preprocessor, Vocab
from adrank.core.schema import Field, Schema
from exporter.fold import fold


@dataclass
class SyntheticModel:
    kind: str
    schema: Schema
    preprocessor: Preprocessor
    arrays: dict  # artifact layout
    naive: dict  # tests/naive.py layout
    rho: int | None = None
    target: str = "binary"
    extra: dict | None = None  # manifest fields the folding adds (n_pairs, pair_blocks)

    def artifact_parts(self) -> tuple[dict, dict]:
        """(manifest, arrays incl. the vocabulary) as ``Ranker`` / the artifact take them."""
        desc, vocab = self.preprocessor.to_state()
        embedded = "emb" in self.arrays  # a kind without embeddings (lr) has embedding type "none"
        manifest = {"kind": self.kind, "rank": self.rho,
                    "embed_dim": int(self.arrays["emb"].shape[1]) if embedded else 0,
                    "target": self.target, "schema": self.schema.to_dict(), "preprocess": desc,
                    "n_features": self.preprocessor.vocab.n_features,
                    "embedding": {"type": "dense" if embedded else "none"},
                    **{k: v for k, v in (self.extra or {}).items() if k in ("n_pairs", "pair_blocks")}}
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
    params = kinds.get(kind).params
    if not kinds.get(kind).embedded:
        del naive["emb"]  # drawn all the same: every kind's other parameters come from one random stream
    if "U" in params:
        naive.update(U=rng.normal(size=(rho, m)).astype(np.float32), e=rng.normal(size=rho).astype(np.float32))
    if "R" in params:
        R = rng.normal(size=(m, m)).astype(np.float32)
        naive["R"] = np.triu(R, 1) + np.triu(R, 1).T
    if "mask" in params:
        from training.models.pruned import prune_mask  # the trainer's rule: the rho (m + 1) largest |R_ij|

        naive["mask"] = prune_mask(naive["R"], rho)
    arrays, extra = fold(kind, naive, schema, np.asarray(pre.vocab.id_offsets))
    return SyntheticModel(kind, schema, pre, arrays, naive, rho if kinds.get(kind).ranked else None, target, extra)


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
