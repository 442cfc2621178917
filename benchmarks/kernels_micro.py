"""Micro-benchmark of the scoring kernels: ns per candidate, cold and cached rows.

Default setup (the task's): 20 context + 20 item fields, k = 16, 1,000 candidates per request,
an embedding table of 2^20 rows x 64 B = 64 MiB (twice the 32 MiB L3).  Two regimes:

* cold   a pool of distinct random requests touching ~80 MiB of rows, scored round-robin, so
         nearly every row a candidate needs comes from DRAM;
* cached the same request scored again and again (its 20k rows fit in L2/L3).

Each kind is run with and without software prefetch.  The floor is a kernel that only gathers
and sums the candidates' 20 rows (no linear terms, no model), with and without prefetch.
Times are medians over requests of the scoring call, as thread CPU time (robust when other
processes share the 2 cores) and wall time.

    python benchmarks/kernels_micro.py --out docs/results/kernels-micro
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from numba import njit
from tqdm import tqdm

from adrank.schema import Field, Schema
from service.kernels import config
from service.kernels.registry import make_scorer
from service.kernels.vec import vadd, vdot, vload, vzero


def schema_of(mc: int, mi: int) -> Schema:
    return Schema("bench", tuple([Field(f"c{i}") for i in range(mc)] + [Field(f"i{i}", role="item") for i in range(mi)]))


def arrays_for(kind: str, m: int, mc: int, n: int, k: int, rho: int, rng) -> dict:
    a = {"bias": np.zeros(1, np.float32), "linear": rng.normal(0, 0.1, n).astype(np.float32),
         "emb": config.aligned(rng.normal(0, 0.1, (n, k)).astype(np.float32))}
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
    @njit(**config.NJIT)
    def floor(X, emb, out):
        for n in range(X.shape[0]):
            if prefetch and n + config.PREFETCH_DISTANCE < X.shape[0]:
                for s in range(X.shape[1]):
                    config.prefetch_row(emb, X[n + config.PREFETCH_DISTANCE, s])
            a = vzero(K)
            for s in range(X.shape[1]):
                a = vadd(a, vload(emb, X[n, s], K))
            out[n] = vdot(a, a)

    return floor


def timed(fn, requests, repeats: int) -> dict:
    cpu, wall = [], []
    for _ in range(repeats):
        for req in requests:
            t0, w0 = time.thread_time_ns(), time.perf_counter_ns()
            fn(req)
            cpu.append(time.thread_time_ns() - t0)
            wall.append(time.perf_counter_ns() - w0)
    return {"cpu_ns": float(np.median(cpu)), "wall_ns": float(np.median(wall))}


def run(args) -> dict:
    rng = np.random.default_rng(args.seed)
    m = args.context + args.items
    schema = schema_of(args.context, args.items)
    manifest = {"schema": schema.to_dict(), "n_features": args.rows, "embed_dim": args.k}
    pool = [rng.integers(0, args.rows, (args.candidates, args.items)).astype(np.int32)
            for _ in range(args.pool)]
    ctx = rng.integers(0, args.rows, args.context).astype(np.int32)
    cases = [("fm", 1), *[("dplr", r) for r in args.rhos], *[("pruned", r) for r in args.rhos], ("fwfm", 1)]
    results = []
    bar = tqdm(total=(len(cases) + 1) * 2, desc="kernels", file=sys.stderr)
    for prefetch in (True, False):
        floor = make_floor(args.k, prefetch)
        out = np.empty(args.candidates)
        emb = arrays_for("fm", m, args.context, args.rows, args.k, 1, np.random.default_rng(0))["emb"]
        floor(pool[0], emb, out)
        row = {"kind": "floor (gather+sum 20 rows)", "rho": None, "pairs": None, "prefetch": prefetch}
        fn = lambda X, f=floor, e=emb, o=out: f(X, e, o)  # noqa: E731
        row["cold"] = timed(fn, pool, args.repeats)
        row["cached"] = timed(fn, [pool[0]] * len(pool), args.repeats)
        results.append(row)
        bar.update()
        for kind, rho in cases:
            arrays = arrays_for(kind, m, args.context, args.rows, args.k, rho, np.random.default_rng(1))
            s = make_scorer({**manifest, "kind": kind, "rank": rho}, arrays, prefetch=prefetch,
                            parallel_min=10**9)
            s.warm()
            pairs = len(s.pair_i) if kind in ("pruned", "fwfm") else None
            row = {"kind": kind, "rho": rho if kind in ("dplr", "pruned") else None, "pairs": pairs,
                   "prefetch": prefetch}
            row["cold"] = timed(lambda X, s=s: s.score(ctx, X), pool, args.repeats)
            row["cached"] = timed(lambda X, s=s: s.score(ctx, X), [pool[0]] * len(pool), args.repeats)
            results.append(row)
            bar.update()
            del s, arrays
    bar.close()
    for r in results:
        for regime in ("cold", "cached"):
            r[regime] = {key: v / args.candidates for key, v in r[regime].items()}  # per candidate
    return {"command": " ".join(["python", *sys.argv]), "setup": vars(args),
            "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                        "numba": __import__("numba").__version__, "prefetch_distance": config.PREFETCH_DISTANCE,
                        "prefetch_linear": config.PREFETCH_LINEAR, "load_average": list(os.getloadavg()),
                        "numba_cpu_name": os.environ.get("NUMBA_CPU_NAME", "host")},
            "results": results}


def markdown(rep: dict) -> str:
    s = rep["setup"]
    lines = [f"# Scoring kernels: ns per candidate ({s['context']} context / {s['items']} item fields, "
             f"k = {s['k']}, {s['candidates']} candidates, table {s['rows']:,} rows = "
             f"{s['rows'] * s['k'] * 4 / 2**20:.0f} MiB)", "",
             f"Command: `{rep['command']}`", "",
             "Median over requests of the scoring call (context part + all candidates), divided by the number "
             "of candidates; CPU = thread CPU time (robust to the other processes sharing the 2 cores), "
             "wall = elapsed time.  *cold*: a pool of distinct requests (rows come from DRAM); *cached*: one "
             "request repeated.", "",
             "| kernel | rho | pairs | prefetch | cold CPU | cold wall | cached CPU | cached wall |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rep["results"]:
        lines.append(f"| {r['kind']} | {r['rho'] or ''} | {r['pairs'] or ''} | {'yes' if r['prefetch'] else 'no'} | "
                     f"{r['cold']['cpu_ns']:.0f} | {r['cold']['wall_ns']:.0f} | {r['cached']['cpu_ns']:.0f} | "
                     f"{r['cached']['wall_ns']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--context", type=int, default=20)
    p.add_argument("--items", type=int, default=20)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--candidates", type=int, default=1000)
    p.add_argument("--rows", type=int, default=1 << 20, help="embedding table rows (2^20 x k=16 = 64 MiB)")
    p.add_argument("--rhos", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--pool", type=int, default=64, help="distinct requests in the cold pool")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    rep = run(args)
    md = markdown(rep)
    print(md)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(rep, indent=1) + "\n")
        out.with_suffix(".md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
