"""`adrank evaluate MODEL --dataset NAME --data PATH`: metrics of a run directory or an artifact."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adrank.core.datasets import DATASETS
from adrank.core.files import write_text

HELP = "Score every row of a raw file with a trained run or an exported artifact (AUC/LogLoss or MSE)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="run directory (adrank train) or artifact file (adrank export)")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--data", required=True, help="raw data file (or directory for movielens/synthetic)")
    p.add_argument("--max-rows", type=int, default=None, help="score only the first N raw rows")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the metrics to this JSON file")


def evaluate_artifact(path, dataset: str, data, max_rows=None) -> dict:
    """The serving path only: service.ranker.Ranker (no torch)."""
    from adrank.core.errors import UserError
    from training.evaluate import score_file

    try:
        from service.ranker import Ranker
    except ImportError as exc:
        raise UserError(f"cannot evaluate an artifact: the serving ranker is unavailable ({exc})") from exc
    r = Ranker.load(path)
    return {**score_file(dataset, data, r.preprocessor, r.predict_encoded, max_rows), "source": "artifact"}


def run(args: argparse.Namespace) -> int:
    from adrank.core.errors import UserError
    from training.evaluate import evaluate_run

    target = Path(args.model)
    if not target.exists():
        raise UserError(f"{target}: no such run directory or artifact")
    try:
        if target.is_dir():
            metrics = evaluate_run(target, args.dataset, args.data, args.max_rows)
        else:
            metrics = evaluate_artifact(target, args.dataset, args.data, args.max_rows)
    except (ValueError, OSError) as exc:  # DataError, CheckpointError, ArtifactError are ValueErrors
        raise UserError(str(exc)) from exc
    text = json.dumps(metrics, indent=1)
    print(text)
    if args.json:
        write_text(args.json, text + "\n")
    return 0
