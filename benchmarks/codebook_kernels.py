"""Serving kernels with codebook (xLightFM) embeddings vs the dense table: ns per candidate.

Setup (issue 4's target): 20 context + 20 item fields, 1,000 candidates per request, n >= 1M
features split evenly over the fields, k = 16 and 32, kinds fm, dplr (rho = 2) and pruned
(rho = 2: the rho(m+1) strongest pairs of a random R kept).  The codebook model has D = 4
(and D = 2) codebooks of K = 256 codewords per field (8-bit codes, LightFM), and the dense model is *its
decoded table* (rows.decode_table), so both score the same embeddings; every timed request also
checks the two agree.  Cold regime: each timed request is drawn fresh, uniformly over every
field's ids, so the dense rows a candidate needs mostly come from DRAM (the table is 4-8x the
32 MiB L3), while the codebooks (D K k floats per field) stay cached and only the packed codes
(D bytes per feature) and the linear weights are gathered.

Times are medians over requests of the whole ``Scorer.score`` call / candidates, thread CPU time
and wall time; dense and codebook are interleaved request by request on the same requests, so
load from other processes on the shared cores hits both alike.

    python benchmarks/codebook_kernels.py --out docs/results/codebook-kernels
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from adrank.core.files import write_json, write_text
from adrank.core.schema import Field, Schema
from exporter.codebook import codebook_arrays
from service.kernels.registry import make_scorer
from service.kernels.rows import codebook_source, decode_table


def schema_of(mc: int, mi: int) -> Schema:
    return Schema("bench", tuple([Field(f"c{i}") for i in range(mc)] + [Field(f"i{i}", role="item") for i in range(mi)]))


def models(kind: str, schema: Schema, off: np.ndarray, k: int, D: int, K: int, rho: int, seed: int):
    """(codebook scorer, dense scorer on the decoded table) of one random model."""
    rng = np.random.default_rng(seed)
    m, n = schema.m, int(off[-1])
    W = m * D * K
    params = {"codebooks": rng.normal(0, 0.1, (W, k // D)).astype(np.float32),
              "codes": rng.integers(0, K, (n, D)).astype(np.uint8 if K <= 256 else np.uint16),
              "codebook_base": (np.arange(m)[:, None] * D * K + np.arange(D)[None, :] * K).astype(np.int64),
              "codebook_sizes": np.full(m, K, np.int64), "dense_rows": np.zeros((0, k), np.float32),
              "dense_base": np.full(m, -1, np.int64)}
    cb_arrays, section, _ = codebook_arrays(params, off, k)
    common = {"bias": np.zeros(1, np.float32), "linear": rng.normal(0, 0.1, n).astype(np.float32),
              "vocab_id_offsets": off}
    if kind in ("fm", "dplr"):
        common["d"] = np.zeros(m, np.float32)
    if kind == "dplr":
        common["U"] = rng.normal(0, 0.3, (rho, m)).astype(np.float32)
        common["e"] = rng.choice([-1.0, 1.0], rho).astype(np.float32)
    if kind == "pruned":
        R = np.triu(rng.normal(size=(m, m)), 1)
        i, j = np.triu_indices(m, 1)
        keep = np.argsort(-np.abs(R[i, j]))[: rho * (m + 1)]
        common.update(pair_i=i[keep].astype(np.int32), pair_j=j[keep].astype(np.int32),
                      pair_r=R[i, j][keep].astype(np.float32))
    base = {"schema": schema.to_dict(), "kind": kind, "n_features": n, "embed_dim": k}
    cb = make_scorer({**base, "embedding": {"type": "codebook", **section}}, {**common, **cb_arrays})
    emb = decode_table(codebook_source({**cb_arrays, "vocab_id_offsets": off}, k), np.arange(n))
    dense = make_scorer({**base, "embedding": {"type": "dense"}}, {**common, "emb": emb})
    return cb, dense, emb.nbytes, sum(a.nbytes for a in cb_arrays.values())


def draw(rng, off: np.ndarray, mc: int, N: int):
    lo, hi = off[:-1], off[1:]
    ctx = rng.integers(lo[:mc], hi[:mc]).astype(np.int32)
    items = rng.integers(lo[mc:], hi[mc:], size=(N, len(lo) - mc)).astype(np.int32)
    return ctx, items


def timed(scorer, ctx, items):
    c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
    out = scorer.score(ctx, items)
    return out, time.thread_time_ns() - c0, time.perf_counter_ns() - w0


def run_case(kind, k, D, schema, off, mc, args) -> dict:
    """One round of one case: medians over interleaved requests (ns per candidate)."""
    cb, dense, dense_bytes, cb_bytes = models(kind, schema, off, k, D, args.K, args.rho, seed=k)
    rng = np.random.default_rng(0)
    cb.warm()
    dense.warm()
    times = {"dense": ([], []), "codebook": ([], [])}
    worst = 0.0
    for r in range(args.requests + 3):
        ctx, items = draw(rng, off, mc, args.candidates)
        order = (("dense", dense), ("codebook", cb)) if r % 2 else (("codebook", cb), ("dense", dense))
        outs = {}
        for name, sc in order:
            outs[name], cpu, wall = timed(sc, ctx, items)
            if r >= 3:  # first requests warm the branch predictors / page tables
                times[name][0].append(cpu)
                times[name][1].append(wall)
        worst = max(worst, float(np.max(np.abs(outs["dense"] - outs["codebook"]))))
    med = {n: (float(np.median(c)) / args.candidates, float(np.median(w)) / args.candidates)
           for n, (c, w) in times.items()}
    return {"dense_cpu_ns": med["dense"][0], "dense_wall_ns": med["dense"][1],
            "codebook_cpu_ns": med["codebook"][0], "codebook_wall_ns": med["codebook"][1],
            "ratio_cpu": med["codebook"][0] / med["dense"][0],
            "dense_table_bytes": int(dense_bytes), "codebook_bytes": int(cb_bytes), "max_abs_diff": worst}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/results/codebook-kernels", help="output stem (.json and .md)")
    ap.add_argument("--features", type=int, default=1 << 20, help="total features n (>= 1M for the target)")
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=60, help="timed requests per case")
    ap.add_argument("--ks", default="16,32")
    ap.add_argument("--kinds", default="fm,dplr,pruned")
    ap.add_argument("--Ds", default="4,2", help="codebooks per field to run (comma list)")
    ap.add_argument("--K", type=int, default=256)
    ap.add_argument("--rho", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="whole sweeps; the table shows medians over them")
    args = ap.parse_args(argv)
    mc = mi = 20
    schema = schema_of(mc, mi)
    per = args.features // schema.m
    off = (np.arange(schema.m + 1) * per).astype(np.int64)
    cases = [(kind, int(k), int(D)) for D in args.Ds.split(",") for k in args.ks.split(",")
             for kind in args.kinds.split(",")]
    runs: dict = {c: [] for c in cases}
    for _ in range(args.rounds):  # whole sweeps repeated: load from other processes varies over minutes
        for case in tqdm(cases, desc="cases"):
            runs[case].append(run_case(*case, schema, off, mc, args))
    rows = []
    for (kind, k, D), rs in runs.items():
        def med(key, rs=rs):
            return float(np.median([r[key] for r in rs]))
        rows.append({"kind": kind, "k": k, "D": D, "rho": args.rho if kind != "fm" else None,
                     **{key: med(key) for key in ("dense_cpu_ns", "dense_wall_ns", "codebook_cpu_ns",
                                                  "codebook_wall_ns", "ratio_cpu")},
                     "ratio_cpu_rounds": [r["ratio_cpu"] for r in rs],
                     "dense_table_bytes": rs[0]["dense_table_bytes"], "codebook_bytes": rs[0]["codebook_bytes"],
                     "max_abs_diff": max(r["max_abs_diff"] for r in rs)})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
            "commit": commit, "n_features": int(off[-1]), "fields": [mc, mi], "candidates": args.candidates,
            "requests": args.requests, "Ds": args.Ds, "K": args.K, "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "regime": "cold (fresh random request each time)",
            "loadavg_after": list(os.getloadavg())}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), {"meta": meta, "rows": rows}, indent=2)
    lines = ["# Codebook vs dense serving kernels (ns per candidate, cold)\n",
             f"Command: `{meta['command']}` (commit {commit}); n = {meta['n_features']:,} features, "
             f"20 context + 20 item fields, {args.candidates} candidates, D codebooks of K = {args.K} codewords per field "
             f"({max(1, int(np.ceil(np.log2(args.K))))}-bit packed codes), median over {args.requests} interleaved requests, then over {args.rounds} rounds; CPU = thread CPU time; "
             f"load average after the run {[round(x, 1) for x in meta['loadavg_after']]} (2 shared cores: "
             "other processes evict the codebooks from L2/L3 and inflate both columns).\n",
             "| kind | k | D | dense CPU ns | codebook CPU ns | codebook / dense | dense wall ns | codebook wall ns "
             "| ratio per round | dense table | codebook arrays | max abs diff |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['k']} | {r['D']} | {r['dense_cpu_ns']:.0f} | {r['codebook_cpu_ns']:.0f} | "
                     f"{r['ratio_cpu']:.2f} | {r['dense_wall_ns']:.0f} | {r['codebook_wall_ns']:.0f} | "
                     f"{' / '.join(f'{x:.2f}' for x in r['ratio_cpu_rounds'])} | "
                     f"{r['dense_table_bytes'] / 2**20:.0f} MiB | {r['codebook_bytes'] / 2**20:.1f} MiB | "
                     f"{r['max_abs_diff']:.1e} |")
    miss = [f"{r['kind']} k={r['k']} D={r['D']} ({r['ratio_cpu']:.2f}x)" for r in rows if r["ratio_cpu"] > 1]
    lines += ["", f"Target (codebook per candidate no slower than dense): met in {len(rows) - len(miss)} of "
              f"{len(rows)} cases" + (f"; slower: {', '.join(miss)}." if miss else "."),
              "A dense k=16 row is one cache line that the kernels prefetch two candidates ahead, so a "
              "cold dense gather costs little more than the decode's extra work (D code extractions and "
              "D codeword loads from L2-resident codebooks per field); at k=32 the dense row is two lines "
              "and the 128 MiB table misses more, so decoding has more to gain. Under load from other processes the codebooks (L2/L3-resident) are evicted too, which hurts D = 4 most (see the per-round ratios)."]
    write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
