"""The options of the kernel benchmark (benchmarks/kernels.py), shared by ``adrank bench kernels``
and ``python -m benchmarks.kernels``.  Light at import (argparse only), because `adrank --help`
imports it; the benchmark itself (``kernels.run_command``) validates and runs them.
"""

from __future__ import annotations


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.replace(",", " ").split())


HELP = "time per auction vs auction size, one line per model (Figure 1)"
DESCRIPTION = ("Time FM, FwFM, pruned FwFM and DPLR-FwFM scorers (service/kernels) on random models with 40 "
               "fields: one row per (model, context split, k, popularity, auction size), medians and spread "
               "over interleaved repeats.")


def add_arguments(k) -> None:
    k.add_argument("--quick", action="store_true", help="reduced grid (20 context fields, k=16, 3 sizes, both popularities): < 2 min")
    k.add_argument("--json", metavar="OUT", help="write the rows (+ machine, floors, command) as JSON")
    k.add_argument("--plot", metavar="PNG", help="write the Figure-1-style plot")
    k.add_argument("--markdown", metavar="MD", help="write a Markdown summary (targets, tables at 10/1k/10k)")
    k.add_argument("--contexts", type=_ints, help="context field counts, e.g. '10,20' (default 10..30 step 5)")
    k.add_argument("--ranks", type=_ints, help="DPLR ranks / pruned budgets rho (default 1,2,3)")
    k.add_argument("--dims", type=_ints, help="embedding dimensions k (default 8,16)")
    k.add_argument("--candidates", type=_ints, help="auction sizes (default 10,100,1000,3000,10000)")
    k.add_argument("--popularity", nargs="+", choices=["uniform", "zipf"], help="id popularity (default both)")
    k.add_argument("--repeats", type=int, help="timed blocks per model and cell (default 5)")
    k.add_argument("--table-mib", type=int, help="embedding table size per k in MiB (default 128)")
    k.add_argument("--target", type=int,
                   help="candidates per timed block; a block holds ceil(target/N) auctions, 1..100")
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--target-runs", nargs="+", metavar="JSON",
                   help="JSON outputs of separate runs of the target cell (20 context fields, k=16, 1,000 "
                        "candidates) to summarise in a 'Target runs' section and keep in this run's JSON")
    k.add_argument("--quiet", action="store_true", help="no progress bar")


def command_line(args) -> str:
    """The command line that reproduces this run (recorded in the results)."""
    parts = ["adrank", "bench", "kernels"] + (["--quick"] if args.quick else [])
    for key in ("contexts", "ranks", "dims", "candidates", "repeats", "table_mib", "target", "seed",
                "json", "plot", "markdown"):
        value = getattr(args, key)
        if value is not None and not (key == "seed" and value == 0):
            text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            parts += [f"--{key.replace('_', '-')}", text]
    if args.popularity:
        parts += ["--popularity", *args.popularity]
    if args.target_runs:
        parts += ["--target-runs", *args.target_runs]
    return " ".join(parts)
