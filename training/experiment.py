"""The paper-table experiment: Table 1 of the DPLR-FwFM paper (Sec. 5.1) on one data set.

For every embedding dimension k and training seed: FM, FwFM, DPLR-FwFM for each rank rho, and the
FwFM pruned to its rho(m+1) largest-magnitude interactions (the parameter count of a rank-rho
DPLR model), fine-tuned with its mask.  A control, "FwFM+FT", fine-tunes the same FwFM the
same way with every pair kept: the part of pruned's score that is the extra training phase and
not the pruning.  Test metrics (AUC + LogLoss, or MSE) are averaged over
seeds; "DPLR vs pruned (%)" is the relative improvement of DPLR over pruned (positive = DPLR
better, for both higher-is-better AUC and lower-is-better LogLoss/MSE).  With several seeds, a
difference within two standard errors of the paired seed differences is reported as a tie.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.data import prepare
from training.train import TrainConfig, fit


@dataclasses.dataclass
class Plan:
    dataset: str
    data: str
    embed_dims: tuple[int, ...] = (8, 16)
    ranks: tuple[int, ...] = (1, 2, 3, 4, 5)
    seeds: tuple[int, ...] = (0,)
    epochs: int = 10
    lr: float = 3e-3
    lr_search: int = 0
    batch_size: int = 512
    min_count: int = 10
    max_rows: int | None = None


def sparsity(rho: int, m: int) -> float:
    """Percent of the m(m-1)/2 interactions a pruned model keeps: 100 * 2 rho (m+1) / (m(m-1))."""
    return min(100.0, 100.0 * 2 * rho * (m + 1) / (m * (m - 1)))


def improvement(dplr: float, pruned: float, higher_better: bool) -> float:
    """Relative improvement of DPLR over pruned in percent; positive = DPLR better."""
    return 100.0 * ((dplr - pruned) if higher_better else (pruned - dplr)) / abs(pruned)


def run_all(plan: Plan, runs_dir: Path, cache_dir=None, progress: bool = True) -> tuple[list[dict], dict]:
    """Train every model of the plan; returns (one record per run, data set facts)."""
    data = prepare(plan.dataset, plan.data, seed=0, min_count=plan.min_count, max_rows=plan.max_rows,
                   cache_dir=cache_dir, progress=progress)
    jobs = []
    for k in plan.embed_dims:
        for seed in plan.seeds:
            jobs += [(k, seed, "fm", None), (k, seed, "fwfm", None), (k, seed, "fwfm_ft", None)]
            jobs += [(k, seed, kind, rho) for rho in plan.ranks for kind in ("dplr", "pruned")]
    records, fwfm_runs, m = [], {}, data.schema.m
    bar = tqdm(jobs, desc=f"paper-table {plan.dataset}", unit="run", disable=None if progress else True)
    for k, seed, kind, rho in bar:
        name = f"k{k}-s{seed}-{kind}" + (f"{rho}" if rho else "")
        bar.set_postfix_str(name)
        cfg = TrainConfig(dataset=plan.dataset, model=kind, rank=rho, embed_dim=k, epochs=plan.epochs,
                          lr=plan.lr, batch_size=plan.batch_size, seed=seed, min_count=plan.min_count,
                          max_rows=plan.max_rows, lr_search=plan.lr_search, progress=False)
        if kind in ("pruned", "fwfm_ft"):  # prune the FwFM of the same (k, seed), fine-tune at its lr
            base = fwfm_runs[(k, seed)]
            cfg = dataclasses.replace(cfg, model="pruned", prune_from=str(base[0]), lr=base[1], lr_search=0)
            if kind == "fwfm_ft":  # the control: the same fine-tuning with every pair kept
                cfg.rank = (m * (m - 1) // 2) // (m + 1) + 1  # rho(m+1) > number of pairs
        metrics = fit(cfg, data, runs_dir / name)
        if kind == "fwfm":
            fwfm_runs[(k, seed)] = (runs_dir / name, metrics["lr"])
        records.append({"k": k, "seed": seed, "kind": kind, "rank": rho, "lr": metrics["lr"],
                        "epochs_run": metrics["epochs_run"], "best_epoch": metrics["best_epoch"],
                        "valid": metrics["valid"], "test": metrics["test"]})
    rows = {s: int(len(data.split(s)[1])) for s in ("train", "valid", "test")}
    facts = {"m": data.schema.m, "n_features": data.n_features, "target": data.target, "rows": rows}
    truth = Path(plan.data) / "truth.json"
    if plan.dataset == "synthetic" and truth.is_file():  # the generator's planted model: the ceiling
        facts["truth"] = json.loads(truth.read_text())
    return records, facts


def summarize(records: list[dict], facts: dict, plan: Plan) -> list[dict]:
    """One table row per (metric, rank, k): seed means and DPLR-vs-pruned verdicts."""
    metrics = [("mse", False)] if facts["target"] == "regression" else [("auc", True), ("logloss", False)]

    def values(kind, k, rho, metric):
        return np.array([r["test"][metric] for r in records
                         if r["kind"] == kind and r["k"] == k and r["rank"] == rho])

    out = []
    for metric, higher in metrics:
        for rho in plan.ranks:
            for k in plan.embed_dims:
                dplr, pruned = values("dplr", k, rho, metric), values("pruned", k, rho, metric)
                diff = (dplr - pruned) if higher else (pruned - dplr)  # paired by seed, > 0 = DPLR better
                se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
                if len(diff) > 1 and abs(diff.mean()) <= 2 * se:
                    verdict = "tie (within seed noise)"
                else:
                    verdict = "DPLR better" if diff.mean() > 0 else "pruned better" if diff.mean() < 0 else "tie"
                    if len(diff) == 1:
                        verdict += " (one seed: no noise estimate)"
                out.append({"metric": metric, "rank": rho, "k": k,
                            "sparsity_pct": round(sparsity(rho, facts["m"]), 1),
                            "fm": values("fm", k, None, metric).mean(),
                            "fwfm": values("fwfm", k, None, metric).mean(),
                            "fwfm_ft": values("fwfm_ft", k, None, metric).mean(),
                            "dplr": dplr.mean(), "pruned": pruned.mean(),
                            "dplr_vs_pruned_pct": improvement(dplr.mean(), pruned.mean(), higher),
                            "diff_se": se, "verdict": verdict, "seeds": len(diff)})
    return out


def to_markdown(table: list[dict], facts: dict, plan: Plan, command: str, seconds: float) -> str:
    ks = plan.embed_dims
    head = ["Dataset (Metric)", "Rank", "Pruned sparsity"]
    for k in ks:
        head += [f"k={k} FM", f"k={k} FwFM", f"k={k} FwFM+FT", f"k={k} DPLR", f"k={k} Pruned", f"k={k} DPLR vs Pruned (%)",
                 f"k={k} verdict"]
    lines = [f"# Paper Table 1 protocol: {plan.dataset}", "", "Made by:", "", "```", command, "```", "",
             f"Test-split metrics (mean over training seeds {list(plan.seeds)}; the 80/10/10 split is fixed). "
             f"Data: {facts['rows']} rows per split, m = {facts['m']} fields, "
             f"{facts['n_features']} feature ids (min_count {plan.min_count}). Epochs <= {plan.epochs} with "
             f"early stopping on validation {'MSE' if facts['target'] == 'regression' else 'LogLoss'}, "
             + (f"lr tuned by Optuna ({plan.lr_search} trials per model)" if plan.lr_search else f"lr {plan.lr}")
             + f", batch {plan.batch_size}. Pruned = the FwFM of the same k and seed pruned to its rho(m+1) "
             f"largest |R_ij| and fine-tuned; FwFM+FT = the same fine-tuning with every pair kept (a control: "
             f"how much of pruned's score is the extra training phase, not the pruning). "
             f"Positive 'DPLR vs Pruned' = DPLR better. "
             f"Wall time {seconds:.0f} s.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if "truth" in facts:
        t = facts["truth"]
        args = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in t["params"].items() if k != "rows")
        lines[-2:-2] = [f"Generated by `adrank generate --out DATA --rows {t['params']['rows']} {args}`; "
                        f"the planted model itself scores test AUC {t['test']['auc']:.4f}, "
                        f"LogLoss {t['test']['logloss']:.4f} (the ceiling).", ""]
    by = {(r["metric"], r["rank"], r["k"]): r for r in table}
    for metric in dict.fromkeys(r["metric"] for r in table):
        label = {"auc": "AUC", "logloss": "LogLoss", "mse": "MSE"}[metric]
        for rho in plan.ranks:
            first = by[(metric, rho, ks[0])]
            cells = [f"{plan.dataset} ({label})", str(rho), f"{first['sparsity_pct']}%"]
            for k in ks:
                r = by[(metric, rho, k)]
                cells += [f"{r[c]:.4f}" for c in ("fm", "fwfm", "fwfm_ft", "dplr", "pruned")]
                cells += [f"{r['dplr_vs_pruned_pct']:+.2f}%", r["verdict"]]
            lines.append("| " + " | ".join(cells) + " |")
    wins = sum(r["verdict"].startswith("DPLR better") for r in table)
    losses = sum(r["verdict"].startswith("pruned better") for r in table)
    lines += ["", f"DPLR better in {wins} of {len(table)} cells, pruned better in {losses}, "
              f"the rest ties.", ""]
    return "\n".join(lines)


def paper_table(plan: Plan, out_dir, runs_dir=None, cache_dir=None, command: str = "",
                progress: bool = True) -> dict:
    """Run the plan; write paper-table-<dataset>.{md,csv} under ``out_dir`` (every run's metrics in
    ``runs_dir/summary.json``); return the summary."""
    out = Path(out_dir)
    runs = Path(runs_dir) if runs_dir else out / "runs" / plan.dataset
    started = time.perf_counter()
    records, facts = run_all(plan, runs, cache_dir, progress)
    seconds = time.perf_counter() - started
    table = summarize(records, facts, plan)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"paper-table-{plan.dataset}"
    stem.with_suffix(".md").write_text(to_markdown(table, facts, plan, command, seconds))
    with open(stem.with_suffix(".csv"), "w", newline="") as fh:
        fh.write(f"# {command}\n")
        w = csv.DictWriter(fh, fieldnames=list(table[0]))
        w.writeheader()
        for r in table:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    summary = {"command": command, "plan": dataclasses.asdict(plan), "facts": facts, "seconds": seconds,
               "table": table, "runs": records}
    (runs / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary
