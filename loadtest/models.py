"""Criteo-shaped models with random parameters for load tests, plus the values file they need.

``build_models(out_dir, ranks=(1, 2, 3))`` writes, for the Criteo schema of
``training.datasets.schemas`` (39 fields: I1-I13 + C1-C13 context, C14-C26 item):

* ``values.json``: each field's raw values, most popular first (see loadtest/auctions.py):
  categorical fields get Criteo-like 8-hex-digit strings, the integer fields counts 0..n-1;
* ``dplr-{rho}.adrk`` and ``pruned-{rho}.adrk`` for every rho (and ``fm.adrk`` with
  ``with_fm``): random parameters sharing one vocabulary, one embedding table and one linear
  vector; DPLR draws ``U`` [rho, m] and ``e`` [rho] (rho(m + 1) parameters, Eq. 10), pruned keeps
  the rho(m + 1) largest |R_ij| of one random R (the same count).  Written through
  ``exporter.export.export_params`` — the exporter's folding and the artifact writer.

The vocabulary is built from the same raw values through ``adrank.core.preprocess`` tokens, so every
value in ``values.json`` encodes to a kept id and anything else to the rare id.  Scores are
meaningless (random weights); latency is what these models are for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from adrank.core.files import write_json
from adrank.core.hashing import hash_tokens
from adrank.core.preprocess import Preprocessor, Vocab, field_tokens


def raw_values(rng, field, n: int) -> list:
    """``n`` distinct raw values of a field, in popularity order."""
    if field.type == "numeric":
        return list(range(n))  # small counts are the common ones
    hexes = np.unique(rng.integers(0, 2**32, 2 * n, dtype=np.uint64))[: n]
    rng.shuffle(hexes)
    return [f"{int(h):08x}" for h in hexes]


def build_models(out_dir, ranks=(1, 2, 3), embed_dim: int = 16, values_per_field: int = 20_000,
                 seed: int = 0, with_fm: bool = False, progress: bool = False) -> dict:
    """Write the artifacts and values.json into ``out_dir``; returns {name: path, "values": path}."""
    from exporter.export import export_params
    from training.datasets.schemas import CRITEO

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    schema = CRITEO
    values, kept = {}, []
    for f in schema.fields:
        vals = raw_values(rng, f, values_per_field)
        values[f.name] = vals
        toks = sorted({t for t in field_tokens(f, vals) if t is not None})
        kept.append(hash_tokens(toks))
    pre = Preprocessor(schema, Vocab.from_kept(kept))
    n, m = pre.vocab.n_features, schema.m
    base = {"bias": np.zeros(1, np.float32), "linear": rng.normal(0, 0.1, n).astype(np.float32),
            "emb": rng.normal(0, 0.1, (n, embed_dim)).astype(np.float32)}
    R = np.triu(rng.normal(0, 0.5, (m, m)), 1)
    R = (R + R.T).astype(np.float32)
    iu, ju = np.triu_indices(m, 1)
    order = np.argsort(-np.abs(R[iu, ju]), kind="stable")
    models = {}
    if with_fm:
        models["fm"] = ("fm", None, base)
    for rho in ranks:
        U = rng.normal(0, 0.5, (rho, m)).astype(np.float32)
        e = rng.choice([-1.0, 1.0], rho).astype(np.float32)
        models[f"dplr-{rho}"] = ("dplr", rho, {**base, "U": U, "e": e})
        mask = np.zeros((m, m), bool)
        top = order[: rho * (m + 1)]
        mask[iu[top], ju[top]] = mask[ju[top], iu[top]] = True
        models[f"pruned-{rho}"] = ("pruned", rho, {**base, "R": R, "mask": mask})
    paths = {}
    for name, (kind, rho, params) in models.items():
        config = {"kind": kind, "rank": rho, "embed_dim": embed_dim, "dataset": "criteo-shaped random",
                  "seed": seed}
        info = export_params(params, config, pre, out / f"{name}.adrk", source={"loadtest.models": config},
                             progress=progress)
        paths[name] = str(info.path)
    doc = {"schema": schema.to_dict(), "values": values,
           "note": "raw values per field, most popular first (loadtest/models.py)"}
    write_json(out / "values.json", doc, indent=None)
    paths["values"] = str(out / "values.json")
    return paths
