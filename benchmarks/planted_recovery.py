"""Planted recovery at default settings: `adrank generate --rows R --seed S --rank 2 [--signs X]`,
then `adrank train --dataset synthetic --data D --model dplr --rank 2` with no other option; the
trained model's test logloss over the planted model's own (the Bayes ceiling on that split).

Both commands run as subprocesses, verbatim (plus --out/--quiet/--cache-dir), so what is measured
is what a user gets.  With several ``--rows`` values the table shows how the gap to the ceiling
shrinks with data (estimation error) rather than staying (optimisation error).

    python -m benchmarks.planted_recovery --out docs/results/planted-recovery --seeds 0 1 2 \\
        --signs mixed positive --rows 200000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from adrank.core.files import write_report

ADRANK = [sys.executable, "-m", "adrank.cli"]


def one(rows: int, seed: int, signs: str, work: Path, extra: list[str]) -> dict:
    data, run = work / f"g-{rows}-{seed}-{signs}", work / f"r-{rows}-{seed}-{signs}"
    gen = [*ADRANK, "generate", "--out", str(data), "--rows", str(rows), "--seed", str(seed), "--rank", "2",
           "--signs", signs, "--quiet"]
    subprocess.run(gen, check=True, capture_output=True)
    train = [*ADRANK, "train", "--dataset", "synthetic", "--data", str(data), "--model", "dplr", "--rank", "2",
             "--out", str(run), "--quiet", "--cache-dir", str(work / "cache"), *extra]
    t = time.perf_counter()
    subprocess.run(train, check=True, capture_output=True)
    seconds = time.perf_counter() - t
    truth = json.loads((data / "truth.json").read_text())
    m = json.loads((run / "metrics.json").read_text())
    return {"rows": rows, "seed": seed, "signs": signs, "planted_test_logloss": truth["test"]["logloss"],
            "planted_test_auc": truth["test"]["auc"], "test_logloss": m["test"]["logloss"], "test_auc": m["test"]["auc"],
            "ratio": m["test"]["logloss"] / truth["test"]["logloss"], "best_epoch": m["best_epoch"],
            "epochs_run": m["epochs_run"], "train_seconds": round(seconds, 1)}


def markdown(rows: list[dict], command: str, load: str, seconds: float, extra: list[str]) -> str:
    lines = ["# Planted recovery at default settings", "", "Made by:", "", "```", command, "```", "",
             f"Machine load before the run (uptime): `{load}`. Wall time {seconds / 60:.1f} min.", "",
             "Each row: `adrank generate --out D --rows ROWS --seed S --rank 2 --signs X`, then `adrank train "
             "--dataset synthetic --data D --model dplr --rank 2 --out R`"
             + (f" {' '.join(extra)}" if extra else " (no other option)")
             + "; test logloss of the trained model / the planted model's (the ceiling on the same split). "
             "Target: <= 1.01.", "",
             "| rows | seed | signs | planted test logloss | trained | ratio | planted AUC | trained AUC | best epoch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['rows']} | {r['seed']} | {r['signs']} | {r['planted_test_logloss']:.4f} | "
                     f"{r['test_logloss']:.4f} | {r['ratio']:.4f} | {r['planted_test_auc']:.4f} | {r['test_auc']:.4f} | "
                     f"{r['best_epoch']} of {r['epochs_run']} |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--signs", nargs="+", default=["mixed", "positive"], choices=["mixed", "positive"])
    ap.add_argument("--rows", type=int, nargs="+", default=[200_000])
    ap.add_argument("--train-args", default="", help="extra `adrank train` options (default: none)")
    args = ap.parse_args(argv)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    extra = args.train_args.split()
    t = time.perf_counter()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            for signs in args.signs:
                for seed in args.seeds:
                    r = one(rows, seed, signs, Path(tmp), extra)
                    print(json.dumps(r), flush=True)
                    out.append(r)
    seconds = time.perf_counter() - t
    command = "python -m benchmarks.planted_recovery " + " ".join(argv if argv is not None else sys.argv[1:])
    write_report(args.out, {"command": command, "load_before": load, "seconds": seconds, "runs": out},
                 markdown(out, command, load, seconds, extra))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
