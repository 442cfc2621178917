"""`adrank experiment paper-table`: the DPLR-FwFM paper's Table 1 protocol on one data set."""

from __future__ import annotations

import argparse
import shlex
import sys

from adrank.core.datasets import DATASETS

HELP = "Run a paper experiment (paper-table: FM, FwFM, DPLR rho=1..5 vs matched pruned FwFM)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=["paper-table"], help="which experiment")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--data", required=True, help="raw data file (or directory for movielens/synthetic)")
    p.add_argument("--out", required=True, help="directory for paper-table-<dataset>.{md,csv}")
    p.add_argument("--runs-dir", default=None, help="where the run directories go (default OUT/runs/DATASET)")
    p.add_argument("--embed-dims", type=int, nargs="+", default=[8, 16], metavar="K")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3, 4, 5], metavar="RHO")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds to average over")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--lr-search", type=int, default=0, metavar="N", help="Optuna lr trials per model")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--min-count", type=int, default=10)
    p.add_argument("--max-rows", type=int, default=None)
    p.add_argument("--cache-dir", default=None, help="encoded-data cache (default $ADRANK_CACHE, else .adrank/cache)")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    import torch

    from adrank.cli.settings import CliSettings
    from adrank.core.errors import UserError
    from training.checkpoint import CheckpointError
    from training.experiment import Plan, paper_table

    if min(args.ranks) < 1 or min(args.embed_dims) < 1:
        raise UserError("--ranks and --embed-dims must be >= 1")
    torch.set_num_threads(1)
    plan = Plan(dataset=args.dataset, data=args.data, embed_dims=tuple(args.embed_dims),
                ranks=tuple(args.ranks), seeds=tuple(args.seeds), epochs=args.epochs, lr=args.lr,
                lr_search=args.lr_search, batch_size=args.batch_size, min_count=args.min_count,
                max_rows=args.max_rows)
    command = shlex.join(["adrank", *sys.argv[1:]]) if sys.argv[1:2] == ["experiment"] else \
        shlex.join(["adrank", "experiment", "paper-table", "--dataset", args.dataset, "--data", args.data,
                    "--out", args.out])
    try:
        cache_dir = args.cache_dir or CliSettings.from_env().cache
        summary = paper_table(plan, args.out, args.runs_dir, cache_dir, command, progress=not args.quiet)
    except (ValueError, CheckpointError, OSError) as exc:
        raise UserError(str(exc)) from exc
    print(f"wrote {args.out}/paper-table-{args.dataset}.md and .csv ({summary['seconds']:.0f} s)")
    return 0
