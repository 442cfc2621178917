"""`adrank train`: train FM / FwFM / pruned FwFM / DPLR-FwFM and write a run directory.

Embeddings (issue 4): ``--embedding lightfm [--codebooks D] [--codewords K]`` or
``--embedding xlightfm --memory-budget-mb X [--codebooks D] [--candidates 64,128,...]`` (searched
per-field sizes, then re-trained from the search), optionally ``--init-from DENSE_RUN`` (PQ init).
metrics.json carries ``embedding_mb`` (paper-style, xLightFM Sec. 4.3) and ``dense_embedding_mb``.

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
    p.add_argument("--cache-dir", default=None, help="encoded-data cache (default $ADRANK_CACHE, else .adrank/cache)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("codebook embeddings (LightFM / xLightFM)")
    g.add_argument("--embedding", default="dense", choices=["dense", "lightfm", "xlightfm"])
    g.add_argument("--codebooks", type=int, default=None, metavar="D", help="codebooks per field (default 4)")
    g.add_argument("--codewords", type=int, default=None, metavar="K", help="lightfm: codewords per codebook "
                   "(default 256; fields with <= K values stay dense)")
    g.add_argument("--memory-budget-mb", type=float, default=None, metavar="X",
                   help="xlightfm: embedding memory budget of the search, paper-style MB")
    g.add_argument("--candidates", default=None, metavar="K1,K2,...",
                   help="xlightfm: codebook sizes the search chooses from (default 64,...,2048)")
    g.add_argument("--search-steps", type=int, default=300, help="xlightfm: search steps (Algorithm 1)")
    g.add_argument("--reg-lambda", type=float, default=None,
                   help="lambda of the codebook distance regulariser, Eq. 5 (default 1.0)")
    g.add_argument("--init-from", default=None, metavar="RUN_DIR",
                   help="PQ-initialise the codebooks from this trained dense run (same data set)")


def embedding_options(args: argparse.Namespace) -> dict:
    """TrainConfig keyword arguments of the codebook flags (validated by TrainConfig.validate)."""
    from adrank.core.errors import UserError

    opts = {k: getattr(args, k) for k in ("codebooks", "codewords") if getattr(args, k) is not None}
    if args.candidates is not None:
        try:
            opts["candidates"] = [int(c) for c in args.candidates.split(",")]
        except ValueError:
            raise UserError(f"--candidates must be comma-separated integers, got {args.candidates!r}") from None
    lam = args.reg_lambda
    if lam is None:
        lam = 0.0 if args.embedding == "dense" else 1.0
    return {"embedding": args.embedding, "embedding_opts": opts, "reg_lambda": lam,
            "memory_budget_mb": args.memory_budget_mb, "search_steps": args.search_steps,
            "init_from": args.init_from}


def run(args: argparse.Namespace) -> int:
    from adrank.cli.settings import CliSettings
    from adrank.core.errors import UserError
    from training.checkpoint import CheckpointError
    from training.data import prepare
    from training.train import TrainConfig, barrier, fit, init_distributed

    cfg = TrainConfig(dataset=args.dataset, model=args.model, rank=args.rank, embed_dim=args.embed_dim,
                      epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                      weight_decay=args.weight_decay, patience=args.patience, seed=args.seed,
                      max_rows=args.max_rows, min_count=args.min_count, lr_search=args.lr_search,
                      prune_from=args.prune_from, finetune=not args.no_finetune, threads=args.threads, progress=not args.quiet,
                      **embedding_options(args))
    try:
        cfg.validate()
        rank, _ = init_distributed()
        if rank != 0:
            barrier()  # rank 0 encodes (or finds the cache) first; the others then read it
        data = prepare(args.dataset, args.data, seed=args.seed, min_count=args.min_count,
                       max_rows=args.max_rows, cache_dir=args.cache_dir or CliSettings.from_env().cache,
                       progress=cfg.progress and rank == 0)
        if rank == 0:
            barrier()
        metrics = fit(cfg, data, args.out)
    except (ValueError, CheckpointError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from exc
    if rank == 0:
        keys = ("model", "rank", "embed_dim", "lr", "valid", "test", "embedding", "embedding_mb",
                "dense_embedding_mb", "compression", "xlightfm_search")
        summary = {k: metrics[k] for k in keys if k in metrics}
        print(json.dumps(summary, indent=1))
    return 0
