"""The embedded default: `adrank serve` with no artifact serves small DPLR and pruned models.

They ship with the package (``adrank/cli/defaults/``: ``dplr.adrk``, ``pruned.adrk`` and
``default.json``, about 0.2 MB each), so the main job needs no torch and no build: the serving
install (extra ``serve``) reads them as they are.

One command rebuilds them with the project's own generator, trainer and exporter::

    adrank default-models --out adrank/cli/defaults

It generates a planted-FwFM data set (training.generate), encodes it (training.data.prepare),
trains DPLR-FwFM (rho=2) and pruned FwFM (rho=2) (training.train.fit) and exports both
(exporter.export). Every input is fixed (:data:`PARAMS`, seeds, torch threads) and the artifacts
record nothing of the time or place of the build, so two builds with the same torch build on
the same CPU capability are the same bytes; ``default.json`` records that environment
(``built_with``) and tests/cli/test_default_models.py compares the shipped files with a rebuild.

This module imports training (torch) inside :func:`build` only: serving never imports it.
"""

from __future__ import annotations

import gzip
import json
import sys
import tempfile
from pathlib import Path

from adrank.core.files import write_text

SHIPPED = Path(__file__).resolve().parent / "defaults"
COMMAND = "adrank default-models --out adrank/cli/defaults"
INFO = "default.json"
MODELS = (("dplr", "dplr", 2), ("pruned", "pruned", 2))  # (served name, kind, rho); the first is the default
PARAMS = {"rows": 40_000, "seed": 0, "fields": 16, "context_fields": 8, "vocab": 5_000, "embed_dim": 8,
          "epochs": 3, "batch_size": 1024, "threads": 2}


class MissingDefaults(FileNotFoundError):
    """The shipped default models are not where the package keeps them."""


def shipped(directory: Path = SHIPPED) -> dict:
    """``default.json`` of the shipped models with ``models`` as name -> absolute artifact path and
    ``versions`` as name -> version."""
    try:
        info = json.loads((directory / INFO).read_text())
        paths = {name: directory / m["file"] for name, m in info["models"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MissingDefaults(f"the embedded default models are missing or unreadable in {directory} "
                              f"({exc}); rebuild them with `{COMMAND}` (needs the train extra) or "
                              "pass artifacts to `adrank serve`") from None
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise MissingDefaults(f"the embedded default models are missing: {', '.join(missing)}; rebuild them "
                              f"with `{COMMAND}` (needs the train extra) or pass artifacts to `adrank serve`")
    return {**info, "models": {name: str(p) for name, p in paths.items()},
            "versions": {name: m["version"] for name, m in info["models"].items()}}


def build_environment() -> dict:
    """What decides the trained weights' last bits besides the inputs: torch's build and the CPU
    kernels it dispatches to (AVX2, AVX-512, ...)."""
    import numpy as np
    import torch

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "numpy": np.__version__, "threads": PARAMS["threads"]}


def build(out, work=None, progress: bool = True, say=None) -> dict:
    """Generate -> prepare -> fit -> export into ``out``; returns what ``out/default.json`` holds.
    ``work`` keeps the data set and the training runs there (default: a temporary directory)."""
    from exporter.export import export_run
    from training.data import prepare
    from training.generate import generate
    from training.train import TrainConfig, fit

    say = say or (lambda msg: print(f"adrank default-models: {msg}", file=sys.stderr, flush=True))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    p = PARAMS
    with tempfile.TemporaryDirectory(prefix="adrank-defaults-") as tmp:
        work = Path(work) if work else Path(tmp)
        say(f"generating {p['rows']:,} rows of planted-FwFM data ({p['fields']} fields) in {work / 'data'}")
        generate(work / "data", rows=p["rows"], seed=p["seed"], fields=p["fields"], context_fields=p["context_fields"],
                 vocab=p["vocab"], embed_dim=p["embed_dim"], progress=progress)
        say("encoding it (vocabularies, 80/10/10 split)")
        data = prepare("synthetic", work / "data", seed=p["seed"], cache_dir=work / "cache", progress=progress)
        models = {}
        for name, kind, rho in MODELS:
            say(f"training {name} ({kind}, rho={rho}, k={p['embed_dim']}, {p['epochs']} epochs)")
            cfg = TrainConfig(dataset="synthetic", model=kind, rank=rho, embed_dim=p["embed_dim"], epochs=p["epochs"],
                              batch_size=p["batch_size"], seed=p["seed"], progress=progress, threads=p["threads"])
            metrics = fit(cfg, data, work / "runs" / name)
            test = {k: round(v, 6) for k, v in metrics["test"].items()}  # 6 digits: what the reader needs
            source = {"built_by": COMMAND, "params": p, "model": name, "test": test}
            info = export_run(work / "runs" / name, out / f"{name}.adrk", progress=False, source=source)
            say(f"wrote {info.path} ({info.nbytes / 1e3:.0f} kB, version {info.version}; test AUC {test['auc']:.4f})")
            models[name] = {"file": f"{name}.adrk", "kind": kind, "rank": rho, "version": info.version, "test": test}
        info = {"command": COMMAND, "params": p, "models": models, "example": example_request(work / "data"),
                "built_with": build_environment()}
    write_text(out / INFO, json.dumps(info, indent=1) + "\n")
    return info


def example_request(data_dir: Path, n_ads: int = 3) -> dict:
    """A /v1/rank body made of real raw values: context from row 1, ads from the next rows."""
    schema = json.loads((data_dir / "schema.json").read_text())
    roles = {f["name"]: f for f in schema["fields"]}
    with gzip.open(data_dir / "data.tsv.gz", "rt") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        rows = [dict(zip(header, fh.readline().rstrip("\n").split("\t"), strict=True)) for _ in range(n_ads + 1)]

    def value(name, raw):
        if roles[name]["type"] == "multi":
            return [v for v in raw.split("|") if v]
        return raw or None

    ctx = {k: value(k, v) for k, v in rows[0].items() if k in roles and roles[k]["role"] == "context"}
    ads = [{"id": f"ad-{i + 1}", "features": {k: value(k, v) for k, v in r.items()
                                              if k in roles and roles[k]["role"] == "item"}}
           for i, r in enumerate(rows[1:])]
    return {"model": MODELS[0][0], "context": ctx, "ads": ads, "top_k": 10}
