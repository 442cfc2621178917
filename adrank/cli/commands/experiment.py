"""`adrank experiment NAME`: the DPLR-FwFM paper's Table 1 protocol (paper-table) on one data set,
and the field-dropping experiment (drop-fields) that the paper's Sec. 6 leaves as future work."""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from adrank.core.datasets import DATASETS
from adrank.core.train_config import default

HELP = ("Run an experiment: paper-table (LR, FM, FwFM, DPLR rho vs matched pruned FwFM, seeds and a paired "
        "test) or drop-fields (drop the least important fields: accuracy and serving time)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=["paper-table", "drop-fields"], help="which experiment")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--data", required=True, help="raw data file (or directory for movielens/synthetic)")
    p.add_argument("--out", required=True, help="directory for the result files (.md, .csv, .json)")
    p.add_argument("--stem", default=None, help="result file name without suffix (default paper-table-DATASET "
                                                "or drop-fields-DATASET)")
    p.add_argument("--runs-dir", default=None, help="where the run directories go (default OUT/runs/DATASET)")
    p.add_argument("--embed-dims", type=int, nargs="+", default=[8], metavar="K")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3], metavar="RHO",
                   help="paper-table: the ranks compared; drop-fields: its one DPLR rank (first value)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (paper-table)")
    p.add_argument("--epochs", type=int, default=default("epochs"))
    p.add_argument("--tune", type=int, default=0, metavar="N",
                   help="paper-table: Optuna trials for each of LR, FM, FwFM, DPLR(rho) (0 = trainer defaults)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a training option for every run (TrainConfig field, e.g. batch_size=2048)")
    p.add_argument("--drops", type=int, nargs="+", default=[0, 2, 4, 8], metavar="N",
                   help="drop-fields: how many of the least important fields to drop, per candidate")
    p.add_argument("--split", choices=["random", "ordered"], default=None,
                   help="80/10/10 split (default ordered for criteo/avazu, random otherwise)")
    p.add_argument("--min-count", type=int, default=default("min_count"))
    p.add_argument("--max-rows", type=int, default=None)
    p.add_argument("--cache-dir", default=None, help="encoded-data cache (default $ADRANK_CACHE, else .adrank/cache)")
    p.add_argument("--resume", action="store_true",
                   help="paper-table: reuse finished runs of the same configuration in the runs directory")
    p.add_argument("--quiet", action="store_true")


def overrides(items: list[str]) -> dict:
    """``--set`` FIELD=VALUE pairs as TrainConfig keyword arguments (values parsed as JSON when they can be)."""
    import dataclasses

    from adrank.core.errors import UserError
    from adrank.core.train_config import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in names:
            raise UserError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of the training options")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from adrank.cli.settings import CliSettings
    from adrank.core.errors import UserError
    from training.checkpoint import CheckpointError

    if min(args.ranks) < 1 or min(args.embed_dims) < 1:
        raise UserError("--ranks and --embed-dims must be >= 1")
    torch.set_num_threads(1)
    command = shlex.join(["adrank", *sys.argv[1:]]) if sys.argv[1:2] == ["experiment"] else \
        shlex.join(["adrank", "experiment", args.name, "--dataset", args.dataset, "--data", args.data,
                    "--out", args.out])
    sets = overrides(args.set)
    cache_dir = args.cache_dir or CliSettings.from_env().cache
    try:
        if args.name == "paper-table":
            from training.experiment import Plan, paper_table

            plan = Plan(dataset=args.dataset, data=args.data, embed_dims=tuple(args.embed_dims),
                        ranks=tuple(args.ranks), seeds=tuple(args.seeds), epochs=args.epochs, tune=args.tune,
                        min_count=args.min_count, max_rows=args.max_rows, split=args.split, overrides=sets)
            summary = paper_table(plan, args.out, args.runs_dir, cache_dir, command,
                                  progress=not args.quiet, stem=args.stem, resume=args.resume)
            stem = args.stem or f"paper-table-{args.dataset}"
        else:
            from benchmarks.drop_fields import drop_fields

            summary = drop_fields(args.dataset, args.data, args.out, rank=args.ranks[0], k=args.embed_dims[0],
                                  drops=tuple(args.drops), epochs=args.epochs, seed=args.seeds[0],
                                  split=args.split, min_count=args.min_count, max_rows=args.max_rows,
                                  overrides=sets, runs_dir=args.runs_dir, cache_dir=cache_dir,
                                  command=command, stem=args.stem, progress=not args.quiet)
            stem = args.stem or f"drop-fields-{args.dataset}"
    except (ValueError, CheckpointError, OSError) as exc:
        raise UserError(str(exc)) from exc
    print(f"wrote {args.out}/{stem}.md and .json ({summary['seconds']:.0f} s)")
    return 0
