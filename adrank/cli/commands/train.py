"""`adrank train`: train LR / FM / FwFM / pruned FwFM / DPLR-FwFM and write a run directory.

Every training option, with its default and help, is a field of ``adrank.core.train_config.TrainConfig``;
the flags are generated from it.  Here only what is not a training option: the input
(``--data``), the outputs (``--out``, ``--test-out``), the cache and the codebook sizes that
become ``embedding_opts``.

Embeddings (issue 4): ``--embedding lightfm [--codebooks D] [--codewords K]`` or
``--embedding xlightfm --memory-budget-mb X [--codebooks D] [--candidates 64,128,...]`` (searched
per-field sizes, then re-trained from the search), optionally ``--init-from DENSE_RUN`` (PQ init).
metrics.json carries ``embedding_mb`` (paper-style, xLightFM Sec. 4.3) and ``dense_embedding_mb``.

Multi-process: ``torchrun --nproc_per_node 2 -m adrank.cli train ...`` (DDP over gloo).
"""

from __future__ import annotations

import argparse
import json

from adrank.core.train_config import add_arguments as add_config_arguments

HELP = "Train a model on a data set and write a self-describing run directory."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="raw data file (or directory for movielens/synthetic)")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--test-out", default=None, metavar="PATH",
                   help="also write the raw rows of the test split here, in the input's format (a file "
                        "for criteo/avazu, .gz compresses; a directory for movielens/synthetic): held-out "
                        "data for `adrank evaluate`")
    p.add_argument("--cache-dir", default=None, help="encoded-data cache (default $ADRANK_CACHE, else .adrank/cache)")
    add_config_arguments(p, required=("dataset", "model"))
    g = [a for a in p._action_groups if a.title == "codebook embeddings"][0]
    g.add_argument("--codebooks", type=int, default=None, metavar="D", help="codebooks per field (default 4)")
    g.add_argument("--codewords", type=int, default=None, metavar="K", help="lightfm: codewords per codebook "
                   "(default 256; fields with <= K values stay dense)")
    g.add_argument("--candidates", default=None, metavar="K1,K2,...",
                   help="xlightfm: codebook sizes the search chooses from (default 64,...,2048)")


def embedding_options(args: argparse.Namespace) -> dict:
    """``embedding_opts`` from the codebook size flags (validated by TrainConfig.validate)."""
    from adrank.core.errors import UserError

    opts = {k: getattr(args, k) for k in ("codebooks", "codewords") if getattr(args, k) is not None}
    if args.candidates is not None:
        try:
            opts["candidates"] = [int(c) for c in args.candidates.split(",")]
        except ValueError:
            raise UserError(f"--candidates must be comma-separated integers, got {args.candidates!r}") from None
    return opts


def run(args: argparse.Namespace) -> int:
    from adrank.cli.settings import CliSettings
    from adrank.core.errors import UserError
    from adrank.core.train_config import from_args
    from training.checkpoint import CheckpointError
    from training.data import prepare
    from training.splits import Splitter, count_rows, write_split
    from training.train import barrier, fit, init_distributed

    cfg = from_args(args, embedding_opts=embedding_options(args))
    try:
        cfg.validate()
        rank, _ = init_distributed()
        if rank != 0:
            barrier()  # rank 0 encodes (or finds the cache) first; the others then read it
        data = prepare(cfg.dataset, args.data, seed=cfg.split_seed, min_count=cfg.min_count,
                       max_rows=cfg.max_rows, cache_dir=args.cache_dir or CliSettings.from_env().cache,
                       progress=cfg.progress and rank == 0,
                       split=cfg.split_kind())
        if rank == 0:
            barrier()
        metrics = fit(cfg, data, args.out)
        if args.test_out and rank == 0:
            kind = cfg.split_kind()
            total = count_rows(cfg.dataset, args.data, cfg.max_rows) if kind == "ordered" else None
            n = write_split(cfg.dataset, args.data, args.test_out, Splitter(kind, cfg.split_seed, total),
                            "test", cfg.max_rows)
            metrics["test_out"] = {"path": args.test_out, "rows": n}
    except (ValueError, CheckpointError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from exc
    if rank == 0:
        keys = ("model", "rank", "embed_dim", "lr", "interaction_lr", "emb_reg", "lin_reg", "valid", "test",
                "best_epoch", "embedding", "embedding_mb", "dense_embedding_mb", "compression", "xlightfm_search",
                "test_out")
        summary = {k: metrics[k] for k in keys if k in metrics}
        print(json.dumps(summary, indent=1))
    return 0
