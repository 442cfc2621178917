"""The embedded default: `adrank serve` with no artifact serves small DPLR and pruned models.

Built once and cached under ``ADRANK_HOME`` (default ``~/.cache/adrank/default``): generate a
planted-FwFM data set (training.generate), encode it (training.data.prepare), train DPLR-FwFM
(rho=2) and pruned FwFM (rho=2) (training.train.fit), export both (exporter.export.export_run).
An ``flock`` on ``ADRANK_HOME/.lock`` makes a second `adrank serve` wait for the first build
instead of racing it; ``default.json`` is written last (atomically) and marks a finished build.
``ADRANK_DEFAULT_ROWS`` / ``ADRANK_DEFAULT_EPOCHS`` shrink the build (tests); all three are read by
adrank/cli/settings.py.

This module imports training (torch) *inside* ``build()`` only, and `adrank serve` runs it
in a child process (``python -m adrank.cli.default_model``), so neither the CLI process that
becomes the server nor the app ever imports torch.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import json
import sys
import time
from pathlib import Path

from adrank.cli.settings import CliSettings
from adrank.core.files import write_text

MODELS = (("dplr", "dplr", 2), ("pruned", "pruned", 2))  # (served name, kind, rho)
DEFAULTS = dict(rows=40_000, seed=0, fields=16, context_fields=8, vocab=5_000, embed_dim=8, epochs=3,
                batch_size=1024)
MARKER = "default.json"


def home_dir(home=None) -> Path:
    return Path(home).expanduser() if home else CliSettings.from_env().home


def cached(home=None) -> dict | None:
    """The finished build's description (models, example request) or None."""
    try:
        info = json.loads((home_dir(home) / MARKER).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if all(Path(p).is_file() for p in info.get("models", {}).values()):
        return info
    return None


def build(home=None, progress: bool = True) -> dict:
    """Generate -> prepare -> fit -> export (skipped when already cached); returns default.json."""
    home = home_dir(home)
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent start waits here, then finds the cache
        info = cached(home)
        if info is not None:
            return info
        from exporter.export import export_run
        from training.data import prepare
        from training.generate import generate
        from training.train import TrainConfig, fit

        t0 = time.perf_counter()
        env = CliSettings.from_env()
        p = {**DEFAULTS, "rows": env.default_rows or DEFAULTS["rows"], "epochs": env.default_epochs or DEFAULTS["epochs"]}
        generate(home / "data", rows=p["rows"], seed=p["seed"], fields=p["fields"],
                 context_fields=p["context_fields"], vocab=p["vocab"], embed_dim=p["embed_dim"],
                 progress=progress)
        data = prepare("synthetic", home / "data", seed=p["seed"], cache_dir=home / "cache", progress=progress)
        models, metrics = {}, {}
        for name, kind, rho in MODELS:
            cfg = TrainConfig(dataset="synthetic", model=kind, rank=rho, embed_dim=p["embed_dim"],
                              epochs=p["epochs"], batch_size=p["batch_size"], seed=p["seed"], progress=progress,
                              threads=2)
            metrics[name] = fit(cfg, data, home / "runs" / name)["test"]
            out = home / f"{name}.adrk"
            export_run(home / "runs" / name, out, progress=False)
            models[name] = str(out)
        info = {"models": models, "test_metrics": metrics, "params": p,
                "build_seconds": round(time.perf_counter() - t0, 1),
                "example": example_request(home / "data")}
        write_text(home / MARKER, json.dumps(info, indent=1))
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
    return {"model": "dplr", "context": ctx, "ads": ads, "top_k": 10}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build (or find) the embedded default models; prints default.json.")
    ap.add_argument("--home", help="default: $ADRANK_HOME or ~/.cache/adrank/default")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    info = build(args.home, progress=not args.quiet)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
