"""Drop the least important fields: accuracy and serving time per candidate for each candidate set.

The trainer's half (training/field_drop.py): DPLR(rho) on all fields, the fields ranked by their
importance from U, and for each N in ``--drops`` a model retrained without the N least important
fields.  This half exports every model and times the serving kernel on the same auctions:
``N_CANDIDATES`` test rows' item fields under one test context, the models interleaved block by
block in one process (``BLOCKS`` blocks, rotating order), median ns per candidate.

    python -m benchmarks.drop_fields --dataset synthetic --data DATA --out docs/results --ranks 3 \
        --drops 0 4 8 12

(``adrank experiment drop-fields`` runs the same with the same options.)
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np

from adrank.core.files import write_json, write_text
from adrank.core.schema import Schema
from adrank.core.train_config import TrainConfig, default, default_split

N_CANDIDATES = 1000
BLOCKS = 30


def time_models(rankers: dict, ctx_rows: dict, item_rows: dict) -> dict:
    """Median ns per candidate of ``Scorer.score`` per model, blocks interleaved in rotating order."""
    times: dict[str, list[float]] = {name: [] for name in rankers}
    names = list(rankers)
    for r in rankers.values():
        r.warm()
    for b in range(BLOCKS):
        for name in names[b % len(names):] + names[: b % len(names)]:
            sc = rankers[name].scorer
            t = time.perf_counter_ns()
            sc.score(ctx_rows[name], item_rows[name])
            times[name].append((time.perf_counter_ns() - t) / len(item_rows[name]))
    return {n: float(np.median(v)) for n, v in times.items()}


def drop_fields(dataset: str, data_path, out_dir, rank: int = 3, k: int = 8, drops=(0, 2, 4, 8), epochs=None,
                seed: int = 0, split=None, min_count=None, max_rows=None, overrides=None, runs_dir=None,
                cache_dir=None, command: str = "", stem: str | None = None, progress: bool = True) -> dict:
    """Run the experiment; write ``<stem>.{md,json}`` under ``out_dir``; return the summary."""
    from exporter.export import export_run
    from service.ranker import Ranker
    from training.data import prepare
    from training.field_drop import train_without_fields

    split = split or default_split(dataset)
    epochs = default("epochs") if epochs is None else epochs
    min_count = default("min_count") if min_count is None else min_count
    out = Path(out_dir)
    runs = Path(runs_dir) if runs_dir else out / "runs" / f"drop-fields-{dataset}"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.perf_counter()
    data = prepare(dataset, data_path, seed=0, min_count=min_count, max_rows=max_rows, cache_dir=cache_dir,
                   progress=progress, split=split)
    cfg = TrainConfig(**{**(overrides or {}), "dataset": dataset, "model": "dplr", "rank": rank, "embed_dim": k,
                         "epochs": epochs, "seed": seed, "split": split, "progress": False})
    order, imp, records = train_without_fields(data, cfg, runs, drops)
    rankers, ctx_rows, item_rows, results = {}, {}, {}, []
    for r in records:
        name = f"drop-{r['dropped']}"
        art = runs / f"{name}.adrk"
        export_run(r["run"], art, progress=False)
        rankers[name] = Ranker.load(art)
        X = np.asarray(r["data"].split("test")[0])
        s = rankers[name].schema
        c = s.slot_offsets[s.m_context]
        ctx_rows[name] = np.ascontiguousarray(X[0, :c])
        item_rows[name] = np.ascontiguousarray(X[1 : N_CANDIDATES + 1, c:])
        results.append({k: v for k, v in r.items() if k not in ("data", "run")})
    ns = time_models(rankers, ctx_rows, item_rows)
    for r in results:
        r["ns_per_candidate"] = ns[f"drop-{r['dropped']}"]
    seconds = time.perf_counter() - started
    summary = {"command": command, "load_before": load, "seconds": seconds, "dataset": dataset, "rank": rank,
               "k": k, "seed": seed, "split": split, "importance": imp, "order": order, "results": results,
               "config": dataclasses.asdict(cfg)}
    out.mkdir(parents=True, exist_ok=True)
    path = out / (stem or f"drop-fields-{dataset}")
    write_json(path.with_suffix(".json"), summary)
    write_text(path.with_suffix(".md"), _markdown(summary, data.schema))
    return summary


def _markdown(s: dict, schema: Schema) -> str:
    metric = "mse" if "mse" in s["results"][0]["test"] else "logloss"
    lines = [f"# Dropping the least important fields: {s['dataset']}", "", "Made by:", "", "```", s["command"], "```",
             "", f"Machine load before the run (uptime): `{s['load_before']}`. Wall time {s['seconds'] / 60:.1f} min.",
             "", f"DPLR rho={s['rank']}, k={s['k']}, seed {s['seed']}, {s['split']} split. Field importance from "
             "the full model's U (sqrt(sum_r |e_r| U_rf^2), max 1), least important first: "
             + ", ".join(f"{n} ({s['importance'][n]:.2f}, {schema.fields[[f.name for f in schema.fields].index(n)].role})"
                         for n in s["order"]) + ".", "",
             f"Each row retrains on the remaining fields; serving time = median over {BLOCKS} interleaved blocks "
             f"of the kernel's `Scorer.score` on {N_CANDIDATES} test rows' item fields under one test context.", "",
             "| dropped | fields left (item) | test AUC | test " + metric + " | ns / candidate | dropped fields |",
             "|---|---|---|---|---|---|"]
    for r in s["results"]:
        lines.append(f"| {r['dropped']} | {r['m']} ({r['item_fields']}) | {r['test'].get('auc', float('nan')):.4f} | "
                     f"{r['test'][metric]:.4f} | {r['ns_per_candidate']:.0f} | {', '.join(r['dropped_fields']) or '-'} |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse
    import shlex
    import sys

    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True, help="directory of drop-fields-DATASET.{md,json}")
    ap.add_argument("--stem", default=None)
    ap.add_argument("--runs-dir", default=None)
    ap.add_argument("--ranks", type=int, nargs="+", default=[3], help="the DPLR rank (first value)")
    ap.add_argument("--embed-dims", type=int, nargs="+", default=[8])
    ap.add_argument("--drops", type=int, nargs="+", default=[0, 2, 4, 8])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    command = shlex.join(["python", "-m", "benchmarks.drop_fields", *(argv if argv is not None else sys.argv[1:])])
    s = drop_fields(args.dataset, args.data, args.out, rank=args.ranks[0], k=args.embed_dims[0], drops=args.drops,
                    seed=args.seed, runs_dir=args.runs_dir, cache_dir=args.cache_dir, command=command, stem=args.stem)
    print(f"wrote {args.out} ({s['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
