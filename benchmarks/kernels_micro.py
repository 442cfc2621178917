"""Micro-benchmark of the scoring kernels: ns per candidate, cold and cached rows.

Default setup (the task's): 20 context + 20 item fields, k = 16, 1,000 candidates per request,
an embedding table of 2^20 rows x 64 B = 64 MiB (twice the 32 MiB L3).  Two regimes:

* cold   every timed request is freshly drawn at random over the whole table, so most rows a
         candidate needs come from DRAM (at most half the table fits in L3);
* cached one fixed request, scored once untimed right before the timed call (its rows are in
         L2/L3).

Each kind is run under every prefetch schedule of ``--schedules`` (default: the schedule
service/kernels/schedule.py picks for it, and no prefetch), so a schedule change is an A/B inside
one run.  The floor is a kernel that only gathers and sums the candidates' 20 rows (no linear
terms, no model), with and without prefetch.
Times are medians over requests of the whole ``Scorer.score`` call (bounds check + context part
+ candidates) divided by the candidates, as thread CPU time and wall time.  All cases are timed
on the same request sequence, interleaved case by case in a fresh random order per request, so
load from other processes on the shared 2 cores hits every case alike and the ratios between
kernels stay meaningful.

``--baseline REV`` adds the FM, DPLR and pruned/FwFM kernels of git revision REV (their files
fm.py, dplr.py, pruned.py as of REV, on today's shared helpers vec/fields/rows/codegen/schedule), timed in
the same interleaved sequence: an A/B of a kernel change inside one run.

    python benchmarks/kernels_micro.py --out docs/results/kernels-micro
    python benchmarks/kernels_micro.py --rhos 2 --schedules default off 2:burst 1:inter 2:burst-nolin
    python benchmarks/kernels_micro.py --rhos 2 --schedules default --baseline ea810f3 --large 0
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
from numba import njit
from tqdm import tqdm

from adrank.core.files import write_report
from adrank.core.schema import Field, Schema
from benchmarks.kernels import kernels_version
from service.kernels import codegen, memory, pool
from service.kernels import schedule as sched
from service.kernels.registry import make_scorer
from service.kernels.vec import vadd, vdot, vload, vzero


def schema_of(mc: int, mi: int) -> Schema:
    return Schema("bench", tuple([Field(f"c{i}") for i in range(mc)] + [Field(f"i{i}", role="item") for i in range(mi)]))


def arrays_for(kind: str, m: int, mc: int, n: int, k: int, rho: int, rng) -> dict:
    a = {"bias": np.zeros(1, np.float32), "linear": rng.normal(0, 0.1, n).astype(np.float32),
         "emb": memory.aligned(rng.normal(0, 0.1, (n, k)).astype(np.float32))}
    if kind in ("fm", "dplr"):
        a["d"] = np.zeros(m, np.float32)
    if kind == "dplr":
        a["U"] = rng.normal(0, 0.5, (rho, m)).astype(np.float32)
        a["e"] = rng.normal(0, 1, rho).astype(np.float32)
    if kind == "pruned":  # P = rho (m + 1) pairs, the DPLR model's parameter budget
        i, j = np.triu_indices(m, 1)
        keep = np.sort(rng.choice(len(i), rho * (m + 1), replace=False))
        a.update(pair_i=i[keep].astype(np.int32), pair_j=j[keep].astype(np.int32),
                 pair_r=rng.normal(0, 0.5, len(keep)).astype(np.float32))
    if kind == "fwfm":
        R = np.triu(rng.normal(0, 0.5, (m, m)), 1)
        a["R"] = (R + R.T).astype(np.float32)
    return a


def make_floor(K: int, prefetch: bool):
    @njit(**codegen.KERNEL)
    def floor(X, emb, out):
        for n in range(X.shape[0]):
            if prefetch and n + sched.PREFETCH_DISTANCE < X.shape[0]:
                for s in range(X.shape[1]):
                    codegen.prefetch_row_l2(emb, X[n + sched.PREFETCH_DISTANCE, s])
            a = vzero(K)
            for s in range(X.shape[1]):
                a = vadd(a, vload(emb, X[n, s], K))
            out[n] = vdot(a, a)

    return floor


BASELINE_CLASSES = {"fm": ("fm", "FMScorer"), "dplr": ("dplr", "DPLRScorer"), "pruned": ("pruned", "PrunedScorer"),
                    "fwfm": ("fwfm", "FwFMScorer")}


def baseline_classes(rev: str) -> dict:
    """kind -> Scorer class of the kernel files of git revision ``rev`` (fm, dplr, pruned, fwfm),
    imported as private modules that use today's helpers (vec, fields, rows, base; an old revision's
    ``service.kernels.config`` imports are served from today's codegen/schedule/memory/pool)."""
    root = Path(__file__).resolve().parents[1]
    tmp = Path(tempfile.mkdtemp(prefix="kernels-baseline-"))
    mods = {}
    shim = types.ModuleType("_baseline_config")  # what service/kernels/config.py held before the split
    for mod in (codegen, memory, pool, sched):
        shim.__dict__.update({k: v for k, v in vars(mod).items() if not k.startswith("_")})
    shim.NJIT = codegen.KERNEL
    sys.modules["_baseline_config"] = shim
    for stem in ("pruned", "fm", "dplr", "fwfm"):  # pruned first: fwfm imports it
        try:
            text = subprocess.run(["git", "-C", str(root), "show", f"{rev}:service/kernels/{stem}.py"], check=True,
                                  capture_output=True, text=True).stdout
        except (OSError, subprocess.CalledProcessError) as exc:
            raise SystemExit(f"--baseline {rev}: cannot read service/kernels/{stem}.py at that revision ({exc})") from exc
        name = f"_baseline_{stem}"
        text = text.replace("from service.kernels.pruned import", "from _baseline_pruned import")
        text = text.replace("from service.kernels.config import", "from _baseline_config import")
        path = tmp / f"{name}.py"
        path.write_text(text)
        spec = importlib.util.spec_from_file_location(name, path)
        mods[stem] = importlib.util.module_from_spec(spec)
        sys.modules[name] = mods[stem]
        spec.loader.exec_module(mods[stem])
    return {kind: getattr(mods[stem], cls) for kind, (stem, cls) in BASELINE_CLASSES.items()}


def schedule(name: str, kind: str) -> tuple:
    """(prefetch, prefetch_mode) scorer options of a schedule name: ``default`` (schedule.py's choice), ``off``, or ``D:burst|inter[-nolin][-l2]`` = D candidates ahead, all rows at the
    top of the iteration (burst) or field by field inside the field loop (inter), linear weights
    too unless ``-nolin``, into L1 (prefetcht0) or with ``-l2`` into L2 (prefetcht1)."""
    if name in ("default", "off"):
        return name == "default", None
    dist, _, how = name.partition(":")
    base, *extra = how.split("-")
    bits = {"burst": 0, "inter": sched.PF_INTERLEAVE}
    if not dist.isdigit() or base not in bits or not set(extra) <= {"nolin", "l2"}:
        raise SystemExit(f"bad schedule {name!r}: expected default, off or D:burst|inter[-nolin][-l2]")
    return int(dist), bits[base] | (0 if "nolin" in extra else sched.PF_LINEAR) | (sched.PF_L2 if "l2" in extra else 0)


def describe(dist: int, mode: int) -> str:
    if dist == 0:
        return "off"
    how = "inter" if mode & sched.PF_INTERLEAVE else "burst"
    return (f"{dist}:{how}" + ("" if mode & sched.PF_LINEAR else "-nolin")
            + ("-l2" if mode & sched.PF_L2 else ""))


def run(args) -> dict:
    """Every case is timed on the same sequence of requests, interleaved case by case, so that
    load from other processes shifts all cases alike (ratios stay meaningful on a busy box)."""
    rng = np.random.default_rng(args.seed)
    m = args.context + args.items
    schema = schema_of(args.context, args.items)
    manifest = {"schema": schema.to_dict(), "n_features": args.rows, "embed_dim": args.k}
    shared = arrays_for("fm", m, args.context, args.rows, args.k, 1, rng)  # one 64 MiB table for all
    ctx = rng.integers(0, args.rows, args.context).astype(np.int32)
    kinds = [("fm", 1), *[("dplr", r) for r in args.rhos], *[("pruned", r) for r in args.rhos], ("fwfm", 1)]
    kinds = [(kind, rho) for kind, rho in kinds if kind in args.kinds]
    cases = []
    baselines = baseline_classes(args.baseline) if args.baseline else {}
    out = np.empty(args.candidates)
    for name in args.schedules:
        if name in ("default", "off"):
            floor = make_floor(args.k, name == "default")
            cases.append(({"kind": "floor (gather+sum rows)", "rho": None, "pairs": None, "schedule": name},
                          lambda X, f=floor: f(X, shared["emb"], out)))
        for kind, rho in kinds:
            prefetch, mode = schedule(name, kind)
            arrays = {**arrays_for(kind, m, args.context, 4, args.k, rho, np.random.default_rng(rho)),
                      "emb": shared["emb"], "linear": shared["linear"]}
            s = make_scorer({**manifest, "kind": kind, "rank": rho}, arrays, prefetch=prefetch, prefetch_mode=mode,
                            parallel_min=10**9)
            s.warm()
            pairs = len(s.pair_i) if kind in ("pruned", "fwfm") else None
            label = name if name != "default" else f"default ({describe(s.prefetch, s.prefetch_mode)})"
            cases.append(({"kind": kind, "rho": rho if kind in ("dplr", "pruned") else None, "pairs": pairs,
                           "schedule": label}, lambda X, s=s: s.score(ctx, X)))
            if args.baseline:  # the same model and schedule through the kernels of --baseline REV
                b = baselines[kind]({**manifest, "kind": kind, "rank": rho}, arrays, prefetch=prefetch,
                                    prefetch_mode=mode, parallel_min=10**9)
                b.warm()
                cases.append(({**cases[-1][0], "kind": f"{kind} @{args.baseline}"}, lambda X, b=b: b.score(ctx, X)))
    hot = rng.integers(0, args.rows, (args.candidates, args.items)).astype(np.int32)
    times = {(i, regime, clock): [] for i in range(len(cases)) for regime in ("cold", "cached")
             for clock in ("cpu_ns", "wall_ns")}
    for _ in tqdm(range(args.requests), desc="requests", file=sys.stderr):
        for i in rng.permutation(len(cases)):
            fn = cases[i][1]
            for regime in ("cold", "cached"):
                X = rng.integers(0, args.rows, (args.candidates, args.items)).astype(np.int32) \
                    if regime == "cold" else hot
                if regime == "cached":
                    fn(X)  # bring this request's rows back after the other cases ran
                t0, w0 = time.thread_time_ns(), time.perf_counter_ns()
                fn(X)
                times[i, regime, "cpu_ns"].append(time.thread_time_ns() - t0)
                times[i, regime, "wall_ns"].append(time.perf_counter_ns() - w0)
    threads = threads_check(args, manifest, shared, ctx, m, rng) if args.large > 0 else None
    results = []
    for i, (row, _) in enumerate(cases):
        for regime in ("cold", "cached"):
            row[regime] = {c: float(np.median(times[i, regime, c])) / args.candidates for c in ("cpu_ns", "wall_ns")}
        results.append(row)
    return {"command": " ".join(["python", *sys.argv]), "setup": vars(args),
            "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                        "numba": __import__("numba").__version__, "prefetch_distance": sched.PREFETCH_DISTANCE,
                        "prefetch_mode": sched.PREFETCH_MODE, "load_average": list(os.getloadavg()),
                        "numba_cpu_name": os.environ.get("NUMBA_CPU_NAME", "host"),
                        "kernels_version": kernels_version()},
            "results": results, "threads": threads}


def threads_check(args, manifest, shared, ctx, m, rng) -> dict:
    """DPLR rho=2 on one large cold auction: one thread vs the scorer's thread split."""
    arrays = {**arrays_for("dplr", m, args.context, 4, args.k, 2, np.random.default_rng(2)),
              "emb": shared["emb"], "linear": shared["linear"]}
    one = make_scorer({**manifest, "kind": "dplr", "rank": 2}, arrays, parallel_min=10**9)
    split = make_scorer({**manifest, "kind": "dplr", "rank": 2}, arrays, parallel_min=1)
    wall = {"1 thread": [], f"{split.threads} threads": []}
    for _ in range(max(5, args.requests // 4)):
        for name, s in (("1 thread", one), (f"{split.threads} threads", split)):
            X = rng.integers(0, args.rows, (args.large, args.items)).astype(np.int32)
            t0 = time.perf_counter_ns()
            s.score(ctx, X)
            wall[name].append(time.perf_counter_ns() - t0)
    return {"candidates": args.large, "wall_ns_per_candidate": {k: float(np.median(v)) / args.large
                                                                  for k, v in wall.items()}}


def markdown(rep: dict) -> str:
    s = rep["setup"]
    lines = [f"# Scoring kernels: ns per candidate ({s['context']} context / {s['items']} item fields, "
             f"k = {s['k']}, {s['candidates']} candidates, table {s['rows']:,} rows = "
             f"{s['rows'] * s['k'] * 4 / 2**20:.0f} MiB)", "",
             f"Command: `{rep['command']}`", "",
             "Median over requests of the whole `Scorer.score` call (bounds check + context part + all "
             "candidates), divided by the number of candidates; CPU = thread CPU time, wall = elapsed time. "
             "*cold*: a fresh random request each time (rows mostly from DRAM); *cached*: one request whose rows "
             "were just touched.  Cases interleaved request by request (fair under background load); "
             f"load average during the run: {rep['machine']['load_average']}.", "",
             "Schedules: `D:burst` = the rows and linear weights of the candidate D ahead prefetched at the top "
             "of each iteration, `D:inter` = the same prefetches issued field by field inside the field loop, "
             "`-nolin` = rows only, `-l2` = into L2 (prefetcht1) instead of L1 (prefetcht0); `default` = what "
             "service/kernels/schedule.py uses (the floor's default: L2, "
             f"{sched.PREFETCH_DISTANCE} ahead).  Kernels measured: service/kernels at "
             f"{rep['machine'].get('kernels_version', 'unknown')}"
             + (f"; rows `KIND @{s['baseline']}` are the fm/dplr/pruned/fwfm kernel files of revision "
                f"{s['baseline']} on the same helpers, same models, same request sequence (an A/B inside one run)."
                if s.get("baseline") else "."), "",
             "| kernel | rho | pairs | prefetch schedule | cold CPU | cold wall | cached CPU | cached wall |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rep["results"]:
        lines.append(f"| {r['kind']} | {r['rho'] or ''} | {r['pairs'] or ''} | {r['schedule']} | "
                     f"{r['cold']['cpu_ns']:.0f} | {r['cold']['wall_ns']:.0f} | {r['cached']['cpu_ns']:.0f} | "
                     f"{r['cached']['wall_ns']:.0f} |")
    t = rep["threads"]
    if t is None:
        return "\n".join(lines) + "\n"
    lines += ["", f"Threads (DPLR rho = 2, one cold auction of {t['candidates']:,} candidates, wall ns per candidate; "
              "the scorer splits auctions of >= `ADRANK_PARALLEL_MIN_CANDIDATES` over `ADRANK_KERNEL_THREADS`): "
              + ", ".join(f"{k}: {v:.0f}" for k, v in t["wall_ns_per_candidate"].items())]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--context", type=int, default=20)
    p.add_argument("--items", type=int, default=20)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--candidates", type=int, default=1000)
    p.add_argument("--rows", type=int, default=1 << 20, help="embedding table rows (2^20 x k=16 = 64 MiB)")
    p.add_argument("--rhos", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--kinds", nargs="+", default=["fm", "dplr", "pruned", "fwfm"], choices=["fm", "dplr", "pruned", "fwfm"])
    p.add_argument("--schedules", nargs="+", default=["default", "off"],
                   help="prefetch schedules to compare: default, off, D:burst, D:inter, ...-nolin (see schedule())")
    p.add_argument("--requests", type=int, default=40, help="timed requests per case and regime")
    p.add_argument("--large", type=int, default=20000, help="candidates of the threads check (0: no threads check)")
    p.add_argument("--baseline", metavar="REV", help="also time the fm/dplr/pruned/fwfm kernels of git revision REV")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    rep = run(args)
    md = markdown(rep)
    print(md)
    if args.out:
        write_report(args.out, rep, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
