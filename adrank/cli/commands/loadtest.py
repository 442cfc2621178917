"""`adrank loadtest`: HTTP load tests on loopback (Locust), comparing models under the same traffic.

    adrank loadtest models --out DIR [--ranks 1 2 3]     Criteo-shaped random models + values.json
    adrank loadtest compare --models A B [...] [--values V | --requests BODIES.jsonl | --rows DATA --dataset NAME]
                            [--port P] [--rps R] [--duration S] [--out DIR]

The work lives in ``loadtest/`` (auctions.py: request generator; traffic.py: the user's own
requests or data rows; locustfile.py; compare.py: orchestration; models.py; report.py); this
module is the CLI over it.
"""

from __future__ import annotations

import re
from pathlib import Path

HELP = "load tests: `loadtest compare` runs the same fixed-rate traffic against each model in turn"
ROOT = Path(__file__).resolve().parents[2]


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="loadtest", metavar="ACTION", required=True)
    m = sub.add_parser("models", help="write Criteo-shaped random DPLR/pruned artifacts and their values.json")
    m.add_argument("--out", required=True, help="output directory (artifacts + values.json)")
    m.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3], help="rho values (default 1 2 3)")
    m.add_argument("--embed-dim", type=int, default=16, help="k (default 16)")
    m.add_argument("--values-per-field", type=int, default=20_000, help="raw values per field (default 20000)")
    m.add_argument("--fm", action="store_true", help="also write fm.adrk")
    m.add_argument("--seed", type=int, default=0)

    c = sub.add_parser("compare", help="same traffic against each model in turn (A B A B ...), one server",
                       description="Start one `adrank serve` on 127.0.0.1 with every model, warm up, then run "
                                   "headless Locust at a fixed rate against one model at a time, interleaved; "
                                   "writes loadtest-NAME.{md,json,png} to --out.")
    c.add_argument("--models", nargs="+", required=True, metavar="[NAME=]ARTIFACT",
                   help="two or more artifacts; with --port, names the server serves (NAME=ARTIFACT also times "
                        "the model in process)")
    c.add_argument("--port", type=int, help="measure the adrank server already running on 127.0.0.1:PORT (e.g. "
                                            "scripts/run's, 8000) instead of starting one")
    c.add_argument("--requests", metavar="BODIES.jsonl",
                   help="your own traffic: /v1/rank request bodies, one JSON object per line (a \"model\" key is "
                        "replaced); the first --pool lines are replayed")
    c.add_argument("--rows", metavar="DATA", help="raw rows of a data set (with --dataset): each request takes its "
                                                  "context from one row and its ads from other rows")
    c.add_argument("--dataset", choices=("criteo", "avazu", "movielens", "synthetic"),
                   help="the format of --rows (as `adrank train --dataset`)")
    c.add_argument("--values", help="generated traffic from a values file (JSON) or an `adrank generate` data "
                                    "directory; default: values.json next to the first artifact, or for the "
                                    "embedded default models their data set")
    c.add_argument("--rps", type=float, default=20, help="offered requests per second (default 20)")
    c.add_argument("--duration", type=float, default=20, help="seconds per measured run (default 20)")
    c.add_argument("--warmup", type=float, default=5, help="seconds of warm-up per model (default 5)")
    c.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    c.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
    c.add_argument("--candidates", type=float, default=200, help="median candidates per request (default 200)")
    c.add_argument("--sigma", type=float, default=1.0, help="log-normal shape of the candidate count (default 1)")
    c.add_argument("--max-candidates", type=int, default=5000, help="cap on candidates (default 5000)")
    c.add_argument("--pool", type=int, default=300, help="distinct requests replayed (default 300)")
    c.add_argument("--out", default=".", help="output directory (default .)")
    c.add_argument("--name", default="compare", help="files are loadtest-NAME.* (default compare)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--traffic", choices=("inline", "catalog"), default="inline",
                   help="inline (default): every ad with its raw item features in the body; catalog: ads "
                        "by id alone from a server-side catalog of --catalog-ads generated ads (adrank serve "
                        "--catalog), the per-ad parts precomputed")
    c.add_argument("--catalog-ads", type=int, default=100_000, help="catalog size with --traffic catalog "
                   "(default 100000); candidates are distinct ads drawn uniformly from it")
    c.add_argument("--arrivals", choices=("poisson", "uniform"), default="poisson",
                   help="arrival process at --rps: poisson (default; requests sometimes coincide and queue, as "
                        "in production) or uniform (evenly spaced: latency without queueing)")
    c.add_argument("--control", metavar="NAME", help="also run model NAME a second time as NAME-again: the "
                   "report's A/A row shows how far two identical models differ (the noise floor)")
    c.add_argument("--pin", default="auto", metavar="auto|none|SERVER/CLIENT",
                   help="CPU placement: auto (default) gives the server the upper half of the usable CPUs and "
                        "Locust the lower half, so the load generator does not steal the measured server's "
                        "CPU; none; or CPU lists like 1/0")
    c.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from adrank.core.errors import UserError

    if args.loadtest == "models":
        return _models(args, UserError)
    return _compare(args, UserError)


def _models(args, UserError) -> int:
    from loadtest.models import build_models

    if not args.ranks or min(args.ranks) < 1 or args.embed_dim < 1 or args.values_per_field < 2:
        raise UserError("--ranks must be >= 1, --embed-dim >= 1, --values-per-field >= 2")
    paths = build_models(args.out, ranks=tuple(args.ranks), embed_dim=args.embed_dim,
                         values_per_field=args.values_per_field, seed=args.seed, with_fm=args.fm, progress=True)
    for name, path in paths.items():
        print(f"{name}\t{path}")
    return 0


def _compare(args, UserError) -> int:
    from loadtest.compare import LoadTestError, compare
    from loadtest.traffic import locust_missing

    missing = locust_missing()
    if missing:  # said first: nothing else can be measured without it
        raise UserError(missing)
    problems = []
    if len(args.models) < 2:
        problems.append("--models needs at least two " + ("models" if args.port else "artifacts"))
    sources = [flag for flag, v in (("--requests", args.requests), ("--rows", args.rows), ("--values", args.values))
               if v]
    if len(sources) > 1:
        problems.append(f"give one traffic source, not {' and '.join(sources)}")
    if args.rows and not args.dataset:
        problems.append("--rows needs --dataset (the format of the rows)")
    for flag, path in (("--requests", args.requests), ("--rows", args.rows), ("--values", args.values)):
        if path and not Path(path).exists():
            problems.append(f"{flag} {path} does not exist")
    if args.port is not None and not 0 < args.port < 65536:
        problems.append("--port must be 1-65535")
    try:
        from loadtest.compare import split_cpus
        split_cpus(args.pin)
    except LoadTestError as exc:
        problems.append(str(exc))
    for spec in args.models:
        if args.port is not None and "=" not in spec:
            continue  # a name the running server serves
        path = Path(spec.split("=", 1)[-1])
        if not path.is_file():
            problems.append(f"artifact {path} does not exist")
    for flag, value, lo in (("--rps", args.rps, 0.1), ("--duration", args.duration, 1), ("--warmup", args.warmup, 0),
                            ("--repeats", args.repeats, 1), ("--workers", args.workers, 1),
                            ("--candidates", args.candidates, 1), ("--max-candidates", args.max_candidates, 1),
                            ("--pool", args.pool, 1), ("--catalog-ads", args.catalog_ads, 1)):
        if value < lo:
            problems.append(f"{flag} must be >= {lo}")
    if args.duration > 3600 or args.repeats * len(args.models) * (args.duration + args.warmup) > 4 * 3600:
        problems.append("the whole comparison must stay under 4 hours (and one run under 1 hour)")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", args.name):
        problems.append("--name may hold only letters, digits, '_' and '-'")
    values = args.values
    if not sources and (args.port is None or "=" in args.models[0]):  # generated models keep theirs beside them
        beside = Path(args.models[0].split("=", 1)[-1]).with_name("values.json")
        values = str(beside) if beside.is_file() else None
    if problems:
        raise UserError("; ".join(problems))
    from adrank.cli.default_model import PARAMS, MissingDefaults, shipped

    try:
        defaults = {"versions": set(shipped()["versions"].values()), "params": PARAMS}
    except MissingDefaults:
        defaults = None
    traffic = (["--requests", args.requests] if args.requests else ["--rows", args.rows, "--dataset", args.dataset]
               if args.rows else ["--values", values] if values else [])
    command = "adrank loadtest compare " + " ".join(
        ["--models", *args.models, *traffic, *(["--port", str(args.port)] if args.port is not None else []),
         "--rps", f"{args.rps:g}", "--duration", f"{args.duration:g}",
         "--warmup", f"{args.warmup:g}", "--repeats", str(args.repeats), "--workers", str(args.workers),
         "--candidates", f"{args.candidates:g}", "--sigma", f"{args.sigma:g}", "--max-candidates",
         str(args.max_candidates), "--pool", str(args.pool), "--out", args.out, "--name", args.name,
         "--seed", str(args.seed), "--pin", args.pin, "--traffic", args.traffic, "--arrivals", args.arrivals]
        + (["--catalog-ads", str(args.catalog_ads)] if args.traffic == "catalog" else [])
        + (["--control", args.control] if args.control else []))
    try:
        result = compare(args.models, values, args.out, name=args.name, rps=args.rps, duration=args.duration,
                         warmup=args.warmup, repeats=args.repeats, workers=args.workers, pool_size=args.pool,
                         median=args.candidates, sigma=args.sigma, max_candidates=args.max_candidates,
                         seed=args.seed, command=command, progress=not args.quiet, pin=args.pin,
                         traffic=args.traffic, catalog_ads=args.catalog_ads, control=args.control, arrivals=args.arrivals,
                         port=args.port, requests=args.requests, rows=args.rows, dataset=args.dataset,
                         defaults=defaults)
    except (LoadTestError, ValueError) as exc:
        raise UserError(str(exc)) from None
    for m in result["summary"]:
        print(f"{m['model']}: {m['achieved_rps']:.1f} req/s, errors {m['error_rate']:.2%}, client P50/P99 "
              f"{m['client_p50_ms']}/{m['client_p99_ms']} ms, server P99 {m['server_p99_ms']} ms")
    print(f"wrote {Path(args.out) / f'loadtest-{args.name}'}.{{md,json,png}}")
    return 0
