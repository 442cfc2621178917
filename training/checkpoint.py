"""One save/load module for run directories: a checkpoint that carries its own config.

    RUN/config.json      model kind, rank, embed_dim, embedding, n_features, schema, target,
                         and the training config (dataset, seed, lr, ...)
    RUN/model.pt         torch.save({"config": ..., "state_dict": ...})
    RUN/preprocess.json  RUN/vocab.npz      the preprocessing (adrank.core.preprocess.Preprocessor)
    RUN/metrics.json     {"model", "valid": {...}, "test": {...}, ...}

Every file is written to a temporary name and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from adrank.core.files import replacing
from adrank.core.preprocess import Preprocessor
from adrank.core.schema import Schema
from training.models import build

FILES = ("config.json", "model.pt", "preprocess.json", "vocab.npz", "metrics.json")


class CheckpointError(ValueError):
    """A run directory that cannot be loaded; the message names the file and the problem."""


def _atomic(path: Path, write) -> None:
    with replacing(path) as tmp, open(tmp, "wb") as fh:
        write(fh)


def _write_json(path: Path, obj) -> None:
    _atomic(path, lambda fh: fh.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def model_config(model, config=None) -> dict:
    """The flat config.json: the training config overlaid with what rebuilds the model."""
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config or {})
    cfg.update(model.describe())
    cfg["model"] = model.kind
    return cfg


def save(run_dir, model, config, preprocessor: Preprocessor, metrics: dict | None = None) -> Path:
    """Write a self-describing run directory (see the module docstring); returns its path."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    cfg = model_config(model, config)
    cfg["target"] = preprocessor.schema.target
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _atomic(run / "model.pt", lambda fh: torch.save({"config": cfg, "state_dict": state}, fh))
    desc, arrays = preprocessor.to_state()
    if desc.get("min_count") is None and "min_count" in cfg:
        desc["min_count"] = cfg["min_count"]
    _atomic(run / "vocab.npz", lambda fh: np.savez(fh, **arrays))
    _write_json(run / "preprocess.json", desc)
    _write_json(run / "config.json", cfg)
    if metrics is not None:
        _write_json(run / "metrics.json", metrics)
    return run


def load_preprocessor(run_dir) -> Preprocessor:
    run = Path(run_dir)
    try:
        desc = json.loads((run / "preprocess.json").read_text())
        with np.load(run / "vocab.npz") as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError as exc:
        raise CheckpointError(f"{run}: missing {Path(exc.filename).name}") from None
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"{run}: unreadable preprocessing: {exc}") from None
    return Preprocessor.from_state(desc, arrays)


def load(run_dir) -> tuple[torch.nn.Module, dict, Preprocessor]:
    """(model in eval mode, config dict, preprocessor) of a run directory written by ``save``."""
    run = Path(run_dir)
    if not run.is_dir():
        raise CheckpointError(f"{run}: not a run directory")
    for name in ("config.json", "model.pt"):
        if not (run / name).exists():
            raise CheckpointError(f"{run}: missing {name} (not a finished training run?)")
    try:
        cfg = json.loads((run / "config.json").read_text())
        blob = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    except (ValueError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"{run}: unreadable checkpoint: {exc}") from None
    try:
        model = build(cfg["kind"], Schema.from_dict(cfg["schema"]), cfg["n_features"], cfg["embed_dim"],
                      rank=cfg.get("rank"), embedding=cfg.get("embedding", "dense"),
                      embedding_opts=cfg.get("embedding_opts"))
        model.load_state_dict(blob["state_dict"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{run}: config.json and model.pt do not fit together: {exc}") from None
    return model.eval(), cfg, load_preprocessor(run)
