"""`adrank generate`: write a synthetic CTR data set from a planted FwFM (training/generate.py)."""

from __future__ import annotations

HELP = "Generate a synthetic CTR data set from a planted FwFM (with its true metrics and R)."


def add_arguments(p) -> None:
    p.add_argument("--out", required=True, help="output directory (replaced if it exists)")
    p.add_argument("--rows", type=int, default=150_000, help="number of rows (default 150000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--interactions", choices=("dplr", "block", "sparse"), default="dplr",
                   help="planted R: dplr = diagonal plus rank --rank (default); block = full rank, field "
                        "groups with group-pair strengths plus noise; sparse = a few strong pairs")
    p.add_argument("--rank", type=int, default=2, help="dplr: rank rho of the planted interaction matrix (default 2)")
    p.add_argument("--groups", type=int, default=4, help="block: number of field groups (default 4)")
    p.add_argument("--noise", type=float, default=0.3, help="block: std of the per-pair noise (default 0.3)")
    p.add_argument("--pairs", type=int, default=None, help="sparse: number of strong pairs (default m)")
    p.add_argument("--vocab", type=int, default=20_000, help="total number of distinct features V (default 20000)")
    p.add_argument("--fields", type=int, default=16, help="number of fields m (default 16)")
    p.add_argument("--context-fields", type=int, default=8, help="context fields, the rest are items (default 8)")
    p.add_argument("--embed-dim", type=int, default=8, help="planted embedding dimension k (default 8)")
    p.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of feature frequencies (default 1.1)")
    p.add_argument("--multi-max", type=int, default=4,
                   help="the last field holds 1..L values; 0 = no multi-valued field (default 4)")
    p.add_argument("--clusters", type=int, default=0,
                   help="plant tail embeddings around C centroids per field (default 0 = off)")
    p.add_argument("--ctr", type=float, default=0.2, help="mean click-through rate (default 0.2)")
    p.add_argument("--signal", type=float, default=1.2,
                   help="standard deviation of the planted logit; larger = easier (default 1.2)")
    p.add_argument("--signs", choices=("mixed", "positive"), default="mixed",
                   help="dplr: signs of the planted e: alternating (indefinite R, default) or all positive")
    p.add_argument("--decay", type=float, default=0.5,
                   help="weights of popularity rank p scale as (1+p)^-decay; 0 = even (default 0.5)")
    p.add_argument("--plain", action="store_true", help="write data.tsv instead of data.tsv.gz")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    import json

    from adrank.core.errors import UserError
    from training.generate import generate

    try:
        truth = generate(args.out, rows=args.rows, seed=args.seed, rank=args.rank, vocab=args.vocab,
                         fields=args.fields, context_fields=args.context_fields, embed_dim=args.embed_dim,
                         zipf=args.zipf, multi_max=args.multi_max, clusters=args.clusters, ctr=args.ctr,
                         signal=args.signal, signs=args.signs, decay=args.decay, interactions=args.interactions,
                         groups=args.groups, noise=args.noise, pairs=args.pairs, compress=not args.plain,
                         progress=not args.quiet)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    summary = {s: {k: truth[s][k] for k in ("rows", "auc", "logloss")} for s in ("train", "valid", "test")}
    print(json.dumps({"out": args.out, "ctr": truth["ctr"], **summary}, indent=1))
    return 0
