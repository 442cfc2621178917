"""Served tables in huge pages vs views of the artifact's map: ns per candidate, same run.

A loaded artifact is one read-only memory map; its arrays are views of it, in 4 KiB page-cache
pages.  The kernels gather embedding rows and linear weights at random, so on a table of tens
of MiB nearly every row is a TLB miss as well as a cache miss.  ``Ranker.load`` (through
``Scorer(huge_pages=True)``, the serving default ``ADRANK_HUGE_PAGES=1``) copies those two tables into private
memory advised for 2 MiB transparent huge pages (service/kernels/memory.py, ``resident``).  This script loads each
artifact both ways in one process and times ``Scorer.score`` on the same random auctions,
interleaved block by block in a shuffled order (load from other processes hits both alike).

Auctions: ``--candidates`` candidates per auction, every slot's id drawn uniformly from its own
field's ids (the cold case: rows mostly from DRAM when the table is larger than the L3).

    python -m benchmarks.table_pages --models /tmp/h9/criteo/{dplr-2,pruned-2,fm}.adrk \
        --out docs/results/table-pages
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from adrank.core.files import write_report
from service.kernels import memory
from service.ranker import Ranker


def field_ids(ranker: Ranker, rng, slots: range, n: int) -> np.ndarray:
    """int32[n, len(slots)]: each slot's id uniform over its field's ids."""
    schema, offs = ranker.schema, ranker.preprocessor.vocab.id_offsets
    field_of = np.repeat(np.arange(schema.m), [f.width for f in schema.fields])[list(slots)]
    lo, hi = offs[field_of], offs[field_of + 1]
    return (lo + rng.integers(0, hi - lo, (n, len(field_of)))).astype(np.int32)


def run(args) -> dict:
    rng = np.random.default_rng(args.seed)
    cases, loads = {}, {}
    for path in args.models:
        for huge in (True, False):
            t0 = time.perf_counter()
            r = Ranker.load(path, huge_pages=huge)
            r.scorer.warm()
            key = f"{Path(path).stem} {'huge pages' if huge else 'artifact map'}"
            cases[key] = r
            loads[key] = {"load_s": round(time.perf_counter() - t0, 3), "model": Path(path).stem,
                          "huge_pages": huge, "table_mib": round(r.scorer.src.nbytes / 2**20, 1),
                          "anon_huge_mib": (None if not huge else
                                            round((memory.anon_huge_kib(r.scorer.src.ctypes.data) or 0) / 1024, 1))}
    names = list(cases)
    for r in cases.values():  # one untimed block each: the first random pass over a fresh copy is slower
        c = r.scorer.n_context_slots
        for _ in range(args.auctions):
            r.scorer.score(field_ids(r, rng, range(c), 1)[0],
                           field_ids(r, rng, range(c, c + r.scorer.n_item_slots), args.candidates))
    times = {k: [] for k in names}
    for _ in tqdm(range(args.repeats), desc="table pages", unit="round"):
        for i in rng.permutation(len(names)):
            r = cases[names[i]]
            s = r.scorer
            c = s.n_context_slots
            auctions = [(field_ids(r, rng, range(c), 1)[0],
                         field_ids(r, rng, range(c, c + s.n_item_slots), args.candidates))
                        for _ in range(args.auctions)]
            gc.collect()
            gc.disable()
            t0 = time.thread_time()
            for ctx, items in auctions:
                s.score(ctx, items)
            times[names[i]].append((time.thread_time() - t0) / args.auctions / args.candidates * 1e9)
            gc.enable()
    rows = []
    for k in names:
        t = np.asarray(times[k])
        rows.append({**loads[k], "case": k, "ns_per_candidate": round(float(np.median(t)), 1),
                     "p25": round(float(np.percentile(t, 25)), 1), "p75": round(float(np.percentile(t, 75)), 1)})
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return {"command": "python -m benchmarks.table_pages " + " ".join(sys.argv[1:]),
            "meta": {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": platform.processor()
                     or platform.machine(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
                     "thp": thp.read_text().strip() if thp.exists() else None, "commit": rev,
                     "kernel_threads": next(iter(cases.values())).scorer.threads},
            "setup": {"candidates": args.candidates, "auctions_per_block": args.auctions, "repeats": args.repeats,
                      "seed": args.seed},
            "rows": rows}


def markdown(rep: dict) -> str:
    m, s = rep["meta"], rep["setup"]
    out = ["# Served tables: huge pages vs views of the artifact's map\n",
           f"Command: `{rep['command']}`  ",
           f"{m['time']}; {m['cpu']}, {m['cpus']} CPUs (shared), load average at the end "
           f"{tuple(round(x, 2) for x in m['load_average'])}; THP `{m['thp']}`; commit {m['commit']}.\n",
           f"ns per candidate = median over {s['repeats']} blocks of {s['auctions_per_block']} auctions x "
           f"{s['candidates']:,} candidates (thread CPU time of `Scorer.score`, 25th-75th percentile in "
           "brackets); every slot's id uniform over its field; both variants of every model in one process, "
           "blocks interleaved in a shuffled order, after one untimed block per case.  *huge pages*: embedding table and linear weights copied into "
           "private memory advised for 2 MiB pages (the default, `ADRANK_HUGE_PAGES=1`); *artifact map*: views of "
           "the read-only map (4 KiB page-cache pages, `ADRANK_HUGE_PAGES=0`).\n",
           "| model | tables | table MiB | huge pages backing the copy (MiB) | load + warm (s) | ns per candidate | "
           "vs artifact map |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    base = {r["model"]: r["ns_per_candidate"] for r in rep["rows"] if not r["huge_pages"]}
    for r in rep["rows"]:
        hp = "" if r["anon_huge_mib"] is None else f"{r['anon_huge_mib']:.1f}"
        out.append(f"| {r['model']} | {'huge pages' if r['huge_pages'] else 'artifact map'} | {r['table_mib']} | "
                   f"{hp} | {r['load_s']:.2f} | {r['ns_per_candidate']:.1f} ({r['p25']:.1f}-{r['p75']:.1f}) | "
                   f"{r['ns_per_candidate'] / base[r['model']]:.2f} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", required=True, help="artifact files (adrank export / adrank loadtest models)")
    p.add_argument("--candidates", type=int, default=1000)
    p.add_argument("--auctions", type=int, default=10, help="auctions per timed block")
    p.add_argument("--repeats", type=int, default=25, help="timed blocks per case")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write OUT.json and OUT.md")
    args = p.parse_args(argv)
    missing = [m for m in args.models if not Path(m).is_file()]
    if missing:
        p.error(f"no such artifact: {', '.join(missing)}")
    if min(args.candidates, args.auctions, args.repeats) < 1:
        p.error("--candidates, --auctions and --repeats must be >= 1")
    rep = run(args)
    md = markdown(rep)
    print(md)
    if args.out:
        write_report(args.out, rep, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
