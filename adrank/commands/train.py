"""`adrank train`: train FM / FwFM / pruned FwFM / DPLR-FwFM and write a run directory.

Multi-process: ``torchrun --nproc_per_node 2 -m adrank.cli train ...`` (DDP over gloo).
"""

from __future__ import annotations

import argparse
import json

HELP = "Train a model on a data set and write a self-describing run directory."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, choices=["criteo", "avazu", "movielens", "synthetic"])
    p.add_argument("--data", required=True, help="raw data file (or directory for movielens/synthetic)")
    p.add_argument("--model", required=True, choices=["fm", "fwfm", "pruned", "dplr"])
    p.add_argument("--rank", type=int, default=None, help="rho: DPLR rank / pruned keeps rho(m+1) pairs")
    p.add_argument("--embed-dim", type=int, default=8, help="embedding dimension k (default 8)")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=512, help="global batch (split across processes)")
    p.add_argument("--weight-decay", type=float, default=1e-6, help="L2 on embedding/linear tables")
    p.add_argument("--patience", type=int, default=2, help="early-stopping patience in epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-rows", type=int, default=None, help="read only the first N raw rows")
    p.add_argument("--min-count", type=int, default=10, help="rarer values map to the rare id")
    p.add_argument("--lr-search", type=int, default=0, metavar="N", help="Optuna trials tuning lr on valid")
    p.add_argument("--prune-from", default=None, metavar="RUN_DIR", help="prune this trained FwFM run")
    p.add_argument("--no-finetune", action="store_true", help="pruned: keep the pruned FwFM as is")
    p.add_argument("--cache-dir", default=None, help="encoded-data cache (default $ADRANK_CACHE)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from adrank.cli import UserError
    from training.checkpoint import CheckpointError
    from training.data import prepare
    from training.train import TrainConfig, _barrier, fit, init_distributed

    cfg = TrainConfig(dataset=args.dataset, model=args.model, rank=args.rank, embed_dim=args.embed_dim,
                      epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                      weight_decay=args.weight_decay, patience=args.patience, seed=args.seed,
                      max_rows=args.max_rows, min_count=args.min_count, lr_search=args.lr_search,
                      prune_from=args.prune_from, finetune=not args.no_finetune, threads=args.threads, progress=not args.quiet)
    try:
        cfg.validate()
        rank, _ = init_distributed()
        if rank != 0:
            _barrier()  # rank 0 encodes (or finds the cache) first; the others then read it
        data = prepare(args.dataset, args.data, seed=args.seed, min_count=args.min_count,
                       max_rows=args.max_rows, cache_dir=args.cache_dir, progress=cfg.progress and rank == 0)
        if rank == 0:
            _barrier()
        metrics = fit(cfg, data, args.out)
    except (ValueError, CheckpointError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from exc
    if rank == 0:
        summary = {k: metrics[k] for k in ("model", "rank", "embed_dim", "lr", "valid", "test")}
        print(json.dumps(summary, indent=1))
    return 0
