"""Where ``adrank train``'s defaults come from: one grid of DPLR rho=2 runs on several data sets,
judged on the validation split.

Settings (adrank/core/train_config.py names): the field interactions' start (near zero or an FM), no L2,
the paper's per-occurrence L2, and the per-feature L2 (``l2_scale="feature"``: every feature the
same prior strength) at several strengths, lr 3e-3, interaction lr 3e-3 or 1e-2; the other
options at their defaults (batch 512, at most 10 epochs, patience 2).  Every data set
is split once (generated data: random 80/10/10; Criteo / Avazu samples: file order).  A setting's
score on a data set is its validation loss divided by the best validation loss any setting
reached there; the pick is the setting whose worst score over the data sets is smallest (ties: the
smaller mean), because defaults must hold on every data set, not on average (the defaults in
adrank/core/train_config.py then are this pick).  ``--render OUT.json`` re-renders the report from a run's
JSON without training again.  Also reported per setting: test loss, the best epoch, and the
spread of the learned R's off-diagonal entries (std; "did R move from its start?").

    python -m benchmarks.trainer_defaults --out docs/results/trainer-defaults \\
        --data synthetic=/tmp/g7 criteo=../shared/data/criteo/criteo_dac_train_head.txt.gz \\
               avazu=../shared/data/avazu/avazu_train_head.csv.gz
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from adrank.core.files import write_report
from adrank.core.train_config import TrainConfig, default_split
from training import checkpoint
from training.data import prepare
from training.interactions import effective_R
from training.train import fit

KEYS = ("interaction_init", "interaction_lr", "l2_scale", "emb_reg", "lin_reg")
SETTINGS = [dict(zip(KEYS, v, strict=True)) for v in (
    ("small", 3e-3, "occurrence", 0.0, 0.0),
    ("small", 1e-2, "occurrence", 0.0, 0.0),
    ("fm", 3e-3, "occurrence", 0.0, 0.0),
    ("fm", 3e-3, "occurrence", 1e-2, 1e-4),
    ("small", 3e-3, "occurrence", 1e-2, 1e-4),
    ("small", 3e-3, "feature", 10.0, 10.0),
    ("fm", 3e-3, "feature", 3.0, 3.0),
    ("fm", 3e-3, "feature", 10.0, 10.0),
    ("fm", 3e-3, "feature", 30.0, 30.0),
    ("fm", 3e-3, "feature", 100.0, 100.0),
    ("fm", 3e-3, "feature", 30.0, 100.0),
    ("fm", 1e-2, "feature", 10.0, 10.0),
    ("fm", 1e-2, "feature", 30.0, 30.0),
)]


def run_grid(datasets: dict, settings: list[dict], base: dict, cache_dir, progress: bool) -> list[dict]:
    rows = []
    combos = settings
    with tempfile.TemporaryDirectory() as tmp:
        for name, (dataset, path) in datasets.items():
            data = prepare(dataset, path, seed=0, cache_dir=cache_dir, progress=False, split=default_split(dataset))
            truth = Path(path) / "truth.json"
            planted = json.loads(truth.read_text())["test"]["logloss"] if dataset == "synthetic" and truth.is_file() \
                else None
            for i, setting in enumerate(combos):
                cfg = TrainConfig(**{**base, **setting, "dataset": dataset, "progress": False})
                t = time.perf_counter()
                m = fit(cfg, data, Path(tmp) / "run")
                model, _, _ = checkpoint.load(Path(tmp) / "run")
                R = effective_R(model.kind, model.export_arrays(), model.m)
                off = R[~np.eye(model.m, dtype=bool)]
                key = "mse" if "mse" in m["valid"] else "logloss"
                row = {"data": name, **setting, "valid": m["valid"][key], "test": m["test"][key],
                       "test_auc": m["test"].get("auc"), "best_epoch": m["best_epoch"], "epochs_run": m["epochs_run"],
                       "R_offdiag_mean": float(off.mean()), "R_offdiag_std": float(off.std()),
                       "seconds": round(time.perf_counter() - t, 1)}
                if planted:
                    row["test_vs_planted"] = m["test"][key] / planted
                rows.append(row)
                if progress:
                    print(f"[{name} {i + 1}/{len(combos)}] {json.dumps(row)}", flush=True)
    return rows


def pick(rows: list[dict]) -> tuple[dict, list[dict]]:
    """(best setting, every setting with its mean validation ratio to the per-data-set best)."""
    best = {}
    for r in rows:
        best[r["data"]] = min(best.get(r["data"], np.inf), r["valid"])
    scores = {}
    for r in rows:
        key = tuple(r[g] for g in KEYS)
        scores.setdefault(key, []).append(r["valid"] / best[r["data"]])
    ranked = sorted(({**dict(zip(KEYS, k, strict=True)), "mean_valid_ratio": float(np.mean(v)),
                      "worst_valid_ratio": float(np.max(v))} for k, v in scores.items()),
                    key=lambda s: (round(s["worst_valid_ratio"], 4), s["mean_valid_ratio"]))
    return {g: ranked[0][g] for g in KEYS}, ranked


def markdown(rows, ranked, choice, command, load, seconds, base) -> str:
    names = list(dict.fromkeys(r["data"] for r in rows))
    lines = ["# Trainer defaults: the grid they come from", "", "Made by:", "", "```", command, "```", "",
             f"Machine load before the run (uptime): `{load}`. Wall time {seconds / 60:.1f} min. DPLR rho=2, "
             f"other options: {base}.", "",
             "Score of a setting on a data set = its validation loss / the best validation loss of any setting on "
             "that data set; settings ranked by their worst score over the data sets, then by the mean (lower is "
             f"better). The first row is the pick: **{choice}**.", "",
             "| init | interaction_lr | l2_scale | emb_reg | lin_reg | mean valid ratio | worst | "
             + " | ".join(f"{n} valid / test / best epoch / R std" for n in names) + " |",
             "|" + "---|" * (7 + len(names))]
    by = {(r["data"], *(r[g] for g in KEYS)): r for r in rows}
    for s in ranked:
        cells = [s["interaction_init"], f"{s['interaction_lr']:g}", s["l2_scale"], f"{s['emb_reg']:g}",
                 f"{s['lin_reg']:g}", f"{s['mean_valid_ratio']:.4f}", f"{s['worst_valid_ratio']:.4f}"]
        for n in names:
            r = by[(n, *(s[g] for g in KEYS))]
            extra = f" ({r['test_vs_planted']:.3f}x planted)" if "test_vs_planted" in r else ""
            cells.append(f"{r['valid']:.4f} / {r['test']:.4f}{extra} / {r['best_epoch']} / {r['R_offdiag_std']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="OUT.json + OUT.md")
    ap.add_argument("--data", nargs="+", required=True, metavar="DATASET=PATH",
                    help="data sets (synthetic=DIR, criteo=FILE, avazu=FILE, movielens=DIR)")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--render", default=None, metavar="OUT.json", help="re-render the report of an earlier run")
    args = ap.parse_args(argv)
    if args.render:
        old = json.loads(Path(args.render).read_text())
        choice, ranked = pick(old["runs"])
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in KEYS}
        write_report(args.out, {**old, "choice": choice, "defaults_in_code": defaults, "ranked": ranked},
                     markdown(old["runs"], ranked, choice, old["command"], old["load_before"], old["seconds"],
                              old["base"]))
        print(json.dumps({"choice": choice, "defaults_in_code": defaults}))
        return 0
    torch.set_num_threads(1)
    datasets = {}
    for item in args.data:
        kind, _, path = item.partition("=")
        name = kind if kind not in datasets else f"{kind}-{len(datasets)}"
        datasets[name] = (kind, path)
    base = {"model": "dplr", "rank": 2, "lr": 3e-3}
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    t = time.perf_counter()
    rows = run_grid(datasets, SETTINGS, base, args.cache_dir, not args.quiet)
    choice, ranked = pick(rows)
    seconds = time.perf_counter() - t
    command = "python -m benchmarks.trainer_defaults " + " ".join(
        a if " " not in a else repr(a) for a in (argv if argv is not None else __import__("sys").argv[1:]))
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in KEYS}
    write_report(args.out, {"command": command, "load_before": load, "seconds": seconds, "settings": SETTINGS,
                            "base": base,
                            "choice": choice, "defaults_in_code": defaults, "ranked": ranked, "runs": rows},
                 markdown(rows, ranked, choice, command, load, seconds, base))
    print(json.dumps({"choice": choice, "defaults_in_code": defaults}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
