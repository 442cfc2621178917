"""Checkpoint (run directory) -> one torch-free artifact, written through adrank/core/artifact.py.

``export_run`` reads the run with ``training.checkpoint.load(run_dir) -> (model, config,
preprocessor)`` and ``model.export_arrays()``; ``export_params`` does the rest from plain numpy
arrays (so it is testable without torch): fold (exporter/fold.py), build the manifest, write
atomically.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from adrank.core.artifact import FORMAT_NAME, WriteInfo, write_artifact
from adrank.core.preprocess import Preprocessor
from exporter.fold import ExportError, fold


def _plain(x):
    """JSON-safe copy: non-finite floats -> None, numpy scalars -> Python, unknown -> str."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if x is None or isinstance(x, (bool, int, str)):
        return x
    return str(x)


def _to_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor; never imported here
        a = a.detach().cpu().numpy()
    return np.asarray(a)


CODEBOOK_METHODS = ("lightfm", "xlightfm")


def embedding_section(config: dict, dense_embeddings: bool = False) -> dict:
    """The manifest's ``embedding``: dense; a codebook model's codebooks + packed codes
    (``{"type": "codebook", "method": ...}``, the rest filled by exporter/codebook.py); or, with
    ``dense_embeddings``, a codebook model's decoded table."""
    if (config.get("kind") or config.get("model")) == "lr":
        return {"type": "none"}  # logistic regression: no embedding table
    emb = config.get("embedding", "dense")
    t = emb.get("type", "dense") if isinstance(emb, dict) else (emb or "dense")
    if t == "dense":
        return {"type": "dense"}
    if dense_embeddings:
        return {"type": "dense", "decoded_from": t}
    if t not in CODEBOOK_METHODS:
        raise ExportError(f"embedding type {t!r} is unknown (known: dense, {', '.join(CODEBOOK_METHODS)}); "
                          "pass --dense-embeddings to export its decoded table")
    return {"type": "codebook", "method": t}


def _codebook(params: dict, config: dict, pre: Preprocessor, embedding: dict):
    """(arrays, embedding section, ||q_i||^2) of a codebook model, with paper-style memory."""
    from exporter.codebook import codebook_arrays

    k = config.get("embed_dim") or (params["codebooks"].shape[1] * params["codes"].shape[1]
                                    if "codebooks" in params and "codes" in params else None)
    if not isinstance(k, int) or k < 1:
        raise ExportError("codebook model: config gives no embed_dim and codebooks/codes are missing "
                          "(or pass --dense-embeddings to export its decoded table)")
    arrays, section, sq = codebook_arrays(params, pre.vocab.id_offsets, k)
    from training.quantize import embedding_memory  # paper-style MB (xLightFM Sec. 4.3)

    sizes = section["K"]
    mem = embedding_memory(pre.vocab.id_offsets, k, sizes, section["D"])
    section = {**embedding, **section, "dense_fields": [f.name for f, K in zip(pre.schema.fields, sizes,
                                                                             strict=True) if not K],
               "paper_mb": {n: float(v) for n, v in mem.items()},
               "stored_bytes": int(sum(a.nbytes for a in arrays.values()))}
    return arrays, section, sq, k


def build_manifest(kind: str, pre: Preprocessor, extra: dict, embedding: dict, config: dict,
                   source: dict) -> dict:
    """The artifact's manifest.  Nothing in it depends on when or where the export ran (no clock),
    so two exports of one run are the same bytes and the version (the checksum prefix) names
    the model's content: replicas serving one model report one version."""
    desc, _ = pre.to_state()
    rank = extra.pop("rank")
    if rank is None and kind == "pruned":
        rank = config.get("rank")
    return {
        "format": FORMAT_NAME,
        "kind": kind,
        "rank": rank,
        "embed_dim": extra.pop("embed_dim"),
        "target": pre.schema.target,
        "schema": pre.schema.to_dict(),
        "preprocess": _plain(desc),
        "n_features": pre.vocab.n_features,
        "embedding": embedding,
        "source": _plain(source),
        **extra,
    }


def export_params(params: dict, config: dict, pre: Preprocessor, out, source: dict | None = None,
                  progress: bool = False, dense_embeddings: bool = False, calibration: dict | None = None
                  ) -> WriteInfo:
    """Fold ``params`` (the ``export_arrays()`` names) and write the artifact to ``out``;
    ``calibration``: the manifest's calibration member (exporter/calibrate.py), if any."""
    kind = config.get("kind") or config.get("model")
    if not isinstance(kind, str):
        raise ExportError("config names no model kind (expected a 'kind' or 'model' string)")
    embedding = embedding_section(config, dense_embeddings)
    params = {k: _to_numpy(v) for k, v in params.items()}
    if embedding["type"] == "codebook":
        emb_arrays, embedding, sq, k = _codebook(params, config, pre, embedding)
        params.pop("emb", None)  # the decoded table is not stored
        arrays, extra = fold(kind, params, pre.schema, pre.vocab.id_offsets, sq_norms=sq, embed_dim=k)
        arrays.update(emb_arrays)
    else:
        arrays, extra = fold(kind, params, pre.schema, pre.vocab.id_offsets)
    arrays.update(pre.vocab.arrays())
    manifest = build_manifest(kind, pre, extra, embedding, config, source or {"config": config})
    if calibration is not None:
        manifest["calibration"] = calibration
    out = Path(out)
    if not out.parent.is_dir():
        raise ExportError(f"output directory {out.parent} does not exist")
    if not progress:
        return write_artifact(out, manifest, arrays)
    from tqdm import tqdm

    total = sum(a.nbytes for a in arrays.values())
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"writing {out.name}", disable=None) as bar:
        return write_artifact(out, manifest, arrays, progress=bar.update)


def export_run(run_dir, out, progress: bool = True, dense_embeddings: bool = False,
               source: dict | None = None, calibrate: str | None = None, data=None, cache_dir=None) -> WriteInfo:
    """``adrank export``: load a run directory's checkpoint and write its artifact.  ``source``
    replaces the manifest's default record of the run (its path, config and metrics).
    ``calibrate`` ("platt" | "isotonic") fits a calibration map on the run's validation split,
    re-derived from the raw ``data`` the run was trained on (exporter/calibrate.py)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"run directory {run_dir} does not exist")
    from training.checkpoint import load  # torch lives behind this import

    model, config, pre = load(run_dir)
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
    if source is None:
        source = {"run_dir": str(run_dir.resolve()), "config": config, "metrics": metrics}
    calibration = None
    if calibrate is not None:
        from exporter.calibrate import calibration_section, validation_scores

        data = data or ((metrics or {}).get("data") or {}).get("source")  # recorded by adrank train
        if data is None:
            raise ExportError("--calibrate needs --data: the raw data the run was trained on (its validation "
                              "split is re-derived from it)")
        z, y = validation_scores(run_dir, model, config, pre, data, cache_dir)
        calibration = calibration_section(calibrate, z, y)
    return export_params(model.export_arrays(), config, pre, out, source, progress=progress,
                         dense_embeddings=dense_embeddings, calibration=calibration)
