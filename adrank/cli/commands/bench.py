"""`adrank bench kernels`: the paper's Figure 1 timing protocol on the serving kernels.

The measurement lives in ``benchmarks/kernels.py`` (next to the other benchmark scripts); this
module is the CLI over it.  Heavy imports (numba kernels, matplotlib) happen inside ``run``.
"""

from __future__ import annotations

from pathlib import Path

HELP = "benchmarks: `bench kernels` times FM / FwFM / pruned / DPLR scorers per auction (paper Fig. 1)"
ROOT = Path(__file__).resolve().parents[2]


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.replace(",", " ").split())


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    k = sub.add_parser("kernels", help="time per auction vs auction size, one line per model (Figure 1)",
                       description="Time FM, FwFM, pruned FwFM and DPLR-FwFM scorers (service/kernels) on "
                                   "random models with 40 fields: one row per (model, context split, k, "
                                   "popularity, auction size), medians and spread over interleaved repeats.")
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


def _command(args) -> str:
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


def run(args) -> int:
    from adrank.core.errors import UserError
    from benchmarks import kernels

    grid = dict(kernels.QUICK if args.quick else kernels.FULL)
    for key in ("contexts", "ranks", "dims", "candidates", "popularity", "repeats", "table_mib", "target"):
        value = getattr(args, key)
        if value is not None:
            grid[key] = tuple(value) if isinstance(value, (list, tuple)) else value
    problems = [f"--{key.replace('_', '-')} needs at least one value" for key in
                ("contexts", "ranks", "dims", "candidates") if not grid[key]]
    problems += [f"--{key.replace('_', '-')} values must be positive" for key in ("ranks", "dims", "candidates")
                 if any(v < 1 for v in grid[key])]
    problems += [f"--{key.replace('_', '-')} must be >= {lo}" for key, lo in
                 (("repeats", 2), ("table_mib", 1), ("target", 1)) if grid[key] < lo]
    problems += [f"--contexts: {c} is not in [1, {grid['fields'] - 1}]" for c in grid["contexts"]
                 if not 0 < c < grid["fields"]]
    for path in (args.json, args.plot, args.markdown):
        if path and not Path(path).resolve().parent.is_dir():
            problems.append(f"output directory of {path} does not exist")
    target_runs = []
    for path in args.target_runs or ():
        try:
            target_runs.append(kernels.target_run(path))
        except (OSError, ValueError) as exc:
            problems.append(f"--target-runs {path}: {exc}")
    if problems:
        raise UserError("; ".join(problems))
    result = kernels.run(grid, seed=args.seed, progress=not args.quiet, command=_command(args))
    if target_runs:
        result["target_runs"] = target_runs
    kernels.write_outputs(result, args.json, args.plot, args.markdown)
    checks = kernels.target_checks(result["rows"])
    for f_k, f in result["floors"].items():
        print(f"random-gather floor k={f_k}: {f['ns_per_row']:.2f} ns per row ({f['table_mib']} MiB table)")
    for c in checks:
        print(f"target [{c['popularity']}] {c['check']}: {c['measured']:.2f} (target {c['target']}) "
              f"{'met' if c['met'] else 'NOT met'}")
    if not (args.json or args.markdown):
        print(kernels.markdown(result))
    return 0
