"""`adrank export RUN_DIR --out PATH`: checkpoint -> torch-free serving artifact."""

from __future__ import annotations

import argparse

HELP = "Export a training run directory to one torch-free, memory-mappable artifact."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="run directory written by `adrank train` (config.json, model.pt, ...)")
    p.add_argument("--out", required=True, help="artifact path to write (replaced atomically)")
    p.add_argument("--dense-embeddings", action="store_true",
                   help="export a codebook (LightFM/xLightFM) model's decoded table as a dense embedding")
    p.add_argument("--calibrate", choices=("platt", "isotonic"), default=None,
                   help="fit a calibration map of the predicted CTR on the run's validation split")
    p.add_argument("--data", default=None, help="with --calibrate: the raw data the run was trained on (default: the path its "
                   "metrics.json records)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adrank.cli.preflight import check_run_dir
    from adrank.core.artifact import ArtifactError, read_artifact
    from adrank.core.errors import UserError
    from exporter.describe import describe
    from exporter.export import ExportError, export_run

    check_run_dir(Path(args.run_dir))  # an artifact or another file given by mistake: say what it is
    try:
        cache = None
        if args.calibrate:
            from adrank.cli.settings import CliSettings

            cache = CliSettings.from_env().cache
        info = export_run(args.run_dir, args.out, progress=not args.quiet,
                          dense_embeddings=args.dense_embeddings, calibrate=args.calibrate, data=args.data,
                          cache_dir=cache)
        art = read_artifact(info.path)  # read back through the server's own validation
    except (ExportError, ArtifactError, FileNotFoundError, OSError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    print(describe(art))
    return 0
