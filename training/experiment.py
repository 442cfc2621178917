"""The paper-table experiment: Table 1 of the DPLR-FwFM paper (Sec. 5.1) on one data set, with
seeds, spreads and a paired test.

For every embedding dimension k and training seed (one fixed data split for all seeds):

* ``lr`` (logistic regression: the floor every model must beat), ``fm``, ``fwfm``;
* ``dplr`` for each rank rho;
* the FwFM of the same (k, seed) pruned to its rho(m+1) largest |R_ij| (the parameter count of a
  rank-rho DPLR model) two ways: ``pruned`` -- pruned and evaluated, no retraining, as the
  paper's code does -- and ``pruned_ft`` -- then fine-tuned with the mask;
* ``fwfm_ft``: the same FwFM fine-tuned the same way with every pair kept, the control for
  the extra training phase pruned_ft gets (what of pruned_ft's score is the extra epochs).

Every model trains with the same epoch budget and early stopping; with ``tune`` N each of lr, fm,
fwfm and dplr(rho) gets the same N Optuna trials (training/tune.py), and the pruned variants
start from the tuned FwFM.  The test split is the held-out set: for the chronological Criteo
and Avazu files, their last 10% of rows (``split="ordered"``, training/splits.py).

Per cell (metric, rho, k): mean and standard deviation over seeds of every model, and the
paired t-test of DPLR against each pruned variant over seeds (training/stats.py): "DPLR better"
only when every seed agrees and p < 0.05.  On generated data the planted model's metrics (the
ceiling) and the Pearson correlation of each learned R with the planted R are reported too.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from adrank.core import kinds
from adrank.core.files import write_json, write_text
from adrank.core.train_config import TrainConfig, default, default_split
from training import stats
from training.data import prepare
from training.train import fit

BASE_KINDS = ("lr", "fm", "fwfm", "fwfm_ft")
RANK_KINDS = ("dplr", "pruned", "pruned_ft")
LABEL = {"lr": "LR", "fm": "FM", "fwfm": "FwFM", "fwfm_ft": "FwFM+FT", "dplr": "DPLR",
         "pruned": "Pruned (no FT)", "pruned_ft": "Pruned+FT"}


@dataclasses.dataclass
class Plan:
    dataset: str
    data: str
    embed_dims: tuple[int, ...] = (8,)
    ranks: tuple[int, ...] = (1, 2, 3)
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = default("epochs")
    tune: int = 0
    min_count: int = default("min_count")
    max_rows: int | None = None
    split: str | None = None
    overrides: dict = dataclasses.field(default_factory=dict)  # TrainConfig fields (lr, batch_size, ...)

    @property
    def split_kind(self) -> str:
        return self.split or default_split(self.dataset)


def sparsity(rho: int, m: int) -> float:
    """Percent of the m(m-1)/2 interactions a pruned model keeps: 100 * 2 rho (m+1) / (m(m-1))."""
    return min(100.0, 100.0 * 2 * rho * (m + 1) / (m * (m - 1)))


def improvement(dplr: float, pruned: float, higher_better: bool) -> float:
    """Relative improvement of DPLR over pruned in percent; positive = DPLR better."""
    return 100.0 * ((dplr - pruned) if higher_better else (pruned - dplr)) / abs(pruned)


def _planted_R(plan: Plan):
    truth = Path(plan.data) / "truth.json"
    if plan.dataset == "synthetic" and truth.is_file():
        t = json.loads(truth.read_text())
        return t, (np.array(t["R"]) if "R" in t else None)
    return None, None


def _pearson(run_dir: Path, truth_R, data_dir) -> tuple[float | None, float | None]:
    """(Pearson of the learned R with the planted R in the planted gauge, raw) -- see
    training/interactions.py for why the gauge matters; (None, None) without a planted R."""
    if truth_R is None:
        return None, None
    from training import checkpoint
    from training.interactions import effective_R, offdiag_pearson, planted_gauge

    model, _, pre = checkpoint.load(run_dir)
    if model.kind in ("lr", "fm"):
        return None, None
    arrays = model.export_arrays()
    R = effective_R(model.kind, arrays, model.m)
    g = planted_gauge(arrays, pre, data_dir)
    return (None if g is None else offdiag_pearson(R * g, truth_R)), offdiag_pearson(R, truth_R)


def _finished(run: Path, cfg: TrainConfig) -> dict | None:
    """metrics.json of a finished run trained with exactly ``cfg`` (else None): --resume."""
    try:
        saved = json.loads((run / "config.json").read_text())
        metrics = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    want = dataclasses.asdict(cfg)
    if not kinds.get(cfg.model).embedded:  # config.json holds the model's own embed_dim: 0 without embeddings
        want["embed_dim"] = 0
    if any(saved.get(k) != v for k, v in want.items() if k not in ("progress", "prune_from", "threads")):
        return None
    return metrics


def run_all(plan: Plan, runs_dir: Path, cache_dir=None, progress: bool = True,
            resume: bool = False) -> tuple[list[dict], dict]:
    """Train every model of the plan; returns (one record per run, data set facts).  With
    ``resume``, a run directory already holding a finished run of the same configuration is
    reused (an interrupted or extended experiment -- more seeds -- trains only what is missing)."""
    data = prepare(plan.dataset, plan.data, seed=0, min_count=plan.min_count, max_rows=plan.max_rows,
                   cache_dir=cache_dir, progress=progress, split=plan.split_kind)
    truth, truth_R = _planted_R(plan)
    m = data.schema.m
    every_pair = (m * (m - 1) // 2) // (m + 1) + 1  # rho(m+1) > number of pairs: the FwFM+FT control
    jobs = []
    for k in plan.embed_dims:
        for seed in plan.seeds:
            if k == plan.embed_dims[0]:
                jobs.append((k, seed, "lr", None))  # no embeddings: one run per seed serves every k
            jobs += [(k, seed, "fm", None), (k, seed, "fwfm", None), (k, seed, "fwfm_ft", None)]
            for rho in plan.ranks:
                jobs += [(k, seed, "dplr", rho), (k, seed, "pruned", rho), (k, seed, "pruned_ft", rho)]
    records, fwfm_runs = [], {}
    bar = tqdm(jobs, desc=f"paper-table {plan.dataset}", unit="run", disable=None if progress else True)
    for k, seed, kind, rho in bar:
        name = f"k{k}-s{seed}-{kind}" + (f"{rho}" if rho else "")
        bar.set_postfix_str(name)
        cfg = TrainConfig(**{**plan.overrides, "dataset": plan.dataset, "model": kind, "rank": rho, "embed_dim": k,
                             "epochs": plan.epochs, "seed": seed, "min_count": plan.min_count,
                             "max_rows": plan.max_rows, "tune": plan.tune, "split": plan.split_kind,
                             "progress": False})
        if kind in ("pruned", "pruned_ft", "fwfm_ft"):  # prune the FwFM of the same (k, seed)
            cfg = dataclasses.replace(cfg, model="pruned", prune_from=str(fwfm_runs[(k, seed)]), tune=0,
                                      finetune=kind != "pruned", rank=every_pair if kind == "fwfm_ft" else rho)
        metrics = (_finished(runs_dir / name, cfg) if resume else None) or fit(cfg, data, runs_dir / name)
        if kind == "fwfm":
            fwfm_runs[(k, seed)] = runs_dir / name
        pearson, pearson_raw = _pearson(runs_dir / name, truth_R, plan.data)
        records.append({"k": k, "seed": seed, "kind": kind, "rank": rho, "valid": metrics["valid"],
                        "test": metrics["test"], "epochs_run": metrics["epochs_run"],
                        "best_epoch": metrics["best_epoch"], "train_seconds": metrics["train_seconds"],
                        "hyper": {h: metrics[h] for h in ("lr", "interaction_lr", "emb_reg", "lin_reg")},
                        "pearson_R": pearson, "pearson_R_raw": pearson_raw})
    rows = {s: int(len(data.split(s)[1])) for s in ("train", "valid", "test")}
    facts = {"m": m, "n_features": data.n_features, "target": data.target, "rows": rows,
             "split": plan.split_kind}
    if truth is not None:
        facts["truth"] = {k: v for k, v in truth.items() if k != "R"}
    return records, facts


def summarize(records: list[dict], facts: dict, plan: Plan) -> list[dict]:
    """One table row per (metric, rank, k): mean/sd per kind and the paired DPLR-vs-pruned tests."""
    metrics = [("mse", False)] if facts["target"] == "regression" else [("auc", True), ("logloss", False)]

    def by_seed(kind, k, rho, metric):
        kk = plan.embed_dims[0] if kind == "lr" else k
        return {r["seed"]: r["test"][metric] for r in records
                if r["kind"] == kind and r["k"] == kk and r["rank"] == rho}

    out = []
    for metric, higher in metrics:
        for rho in plan.ranks:
            for k in plan.embed_dims:
                row = {"metric": metric, "rank": rho, "k": k, "sparsity_pct": round(sparsity(rho, facts["m"]), 1)}
                vals = {kind: by_seed(kind, k, None, metric) for kind in BASE_KINDS}
                vals.update({kind: by_seed(kind, k, rho, metric) for kind in RANK_KINDS})
                for kind, v in vals.items():
                    a = np.array(list(v.values()))
                    row[kind] = float(a.mean()) if len(a) else None
                    row[f"{kind}_sd"] = float(a.std(ddof=1)) if len(a) > 1 else None
                for other in ("pruned", "pruned_ft"):
                    seeds = sorted(set(vals["dplr"]) & set(vals[other]))
                    d = [(vals["dplr"][s] - vals[other][s]) * (1 if higher else -1) for s in seeds]
                    test = stats.paired(d)
                    row[f"vs_{other}_pct"] = improvement(row["dplr"], row[other], higher)
                    row[f"vs_{other}_p"] = test["p"]
                    row[f"vs_{other}_diff_sd"] = test["sd"]
                    row[f"vs_{other}_verdict"] = stats.verdict(test)
                row["seeds"] = len(vals["dplr"])
                out.append(row)
    return out


def _fmt(mean, sd) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f}" + (f" ± {sd:.4f}" if sd is not None else "")


def _p(p) -> str:
    return "-" if p is None else (f"{p:.3f}" if p >= 0.001 else "<0.001")


def to_markdown(table: list[dict], records: list[dict], facts: dict, plan: Plan, command: str, seconds: float,
                load: str) -> str:
    target_metrics = [r for r in dict.fromkeys(t["metric"] for t in table)]
    title = plan.dataset
    if "truth" in facts:
        title += f" ({facts['truth']['params'].get('interactions', 'dplr')} interactions)"
    lines = [f"# Paper Table 1 protocol: {title}", "", "Made by:", "", "```", command, "```", "",
             f"Machine load before the run (uptime): `{load}`. Wall time {seconds / 60:.1f} min.", ""]
    split = ("the last 10% of the file's rows (chronological: the held-out set a user would trust), "
             "validation the 10% before them" if facts["split"] == "ordered" else "a seeded random 80/10/10 split")
    tuning = (f"each of LR, FM, FwFM and DPLR(rho) tuned by {plan.tune} Optuna trials on the validation split "
              "(learning rates and L2 coefficients, training/tune.py); the pruned variants use the tuned FwFM's"
              if plan.tune else "the trainer's defaults for every model (no tuning)")
    lines += [f"Test metrics, mean ± standard deviation over training seeds {list(plan.seeds)} (one fixed split "
              f"for all seeds). Test set: {split}. Rows per split: {facts['rows']}; m = {facts['m']} fields, "
              f"{facts['n_features']} feature ids (min_count {plan.min_count}). At most {plan.epochs} epochs "
              f"with early stopping on validation; {tuning}."
              + (f" Overrides: {plan.overrides}." if plan.overrides else ""), "",
              "Pruned (no FT) = the FwFM of the same k and seed with all but its rho(m+1) largest |R_ij| "
              "zeroed, evaluated as is (the paper's code); Pruned+FT = the same, then fine-tuned with its "
              "mask; FwFM+FT = the same fine-tuning with every pair kept (how much of Pruned+FT is the extra "
              "training, not the pruning). 'vs' columns: relative improvement of DPLR (positive = DPLR "
              "better), the two-sided paired t-test over seeds (p), and the verdict: a side wins only when "
              "every seed agrees and p < 0.05.", ""]
    if "truth" in facts:
        t = facts["truth"]
        args = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in t["params"].items() if k not in ("rows",))
        lines += [f"Data: `adrank generate --out DATA --rows {t['params']['rows']} {args}`; the planted model "
                  f"itself scores test AUC {t['test']['auc']:.4f}, LogLoss {t['test']['logloss']:.4f} (the "
                  "ceiling).", ""]
    for k in plan.embed_dims:
        lines += [f"## k = {k}", "", "Baselines (no rank):", "",
                  "| metric | " + " | ".join(LABEL[x] for x in BASE_KINDS) + " |",
                  "|---|" + "---|" * len(BASE_KINDS)]
        for metric in target_metrics:
            r = next(t for t in table if t["metric"] == metric and t["k"] == k)
            lines.append(f"| {metric} | " + " | ".join(_fmt(r[x], r[f"{x}_sd"]) for x in BASE_KINDS) + " |")
        head = ["metric", "rank", "pruned keeps", "DPLR", "Pruned (no FT)", "Pruned+FT",
                "vs no-FT", "p", "verdict", "vs +FT", "p", "verdict"]
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for metric in target_metrics:
            for r in (t for t in table if t["metric"] == metric and t["k"] == k):
                lines.append("| " + " | ".join([
                    metric, str(r["rank"]), f"{r['sparsity_pct']}%", _fmt(r["dplr"], r["dplr_sd"]),
                    _fmt(r["pruned"], r["pruned_sd"]), _fmt(r["pruned_ft"], r["pruned_ft_sd"]),
                    f"{r['vs_pruned_pct']:+.2f}%", _p(r["vs_pruned_p"]), r["vs_pruned_verdict"],
                    f"{r['vs_pruned_ft_pct']:+.2f}%", _p(r["vs_pruned_ft_p"]), r["vs_pruned_ft_verdict"]]) + " |")
        lines.append("")
    lines += _vs_lr(records, facts, plan)
    for other in ("pruned", "pruned_ft"):
        wins = sum(r[f"vs_{other}_verdict"].startswith("DPLR better") for r in table)
        losses = sum(r[f"vs_{other}_verdict"].startswith("pruned better") for r in table)
        lines.append(f"DPLR vs {LABEL[other]}: DPLR better in {wins} of {len(table)} cells, pruned better in "
                     f"{losses}, the rest ties.")
    pear = [r for r in records if r["pearson_R"] is not None]
    if pear:
        lines += ["", "Learned R vs planted R: Pearson over the off-diagonal entries, mean ± sd over seeds, with the "
                  "learned R in the planted model's gauge (R_ij times the slope of the learned <v_i, v_j> on the "
                  "planted one over data rows: an FwFM's R is defined only up to a per-field scale and sign; "
                  "training/interactions.py):", ""]
        groups: dict = {}
        for r in pear:
            groups.setdefault((r["k"], LABEL[r["kind"]] + (f" rho={r['rank']}" if r["rank"] else "")), []).append(
                r["pearson_R"])
        for (k, name), v in groups.items():
            lines.append(f"- k={k} {name}: {_fmt(float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else None)}")
    lines.append("")
    return "\n".join(lines)


def _vs_lr(records: list[dict], facts: dict, plan: Plan) -> list[str]:
    """The floor: the best model (by its mean test metric) against logistic regression, paired by seed."""
    metrics = [("mse", False)] if facts["target"] == "regression" else [("auc", True), ("logloss", False)]
    lr = {r["seed"]: r["test"] for r in records if r["kind"] == "lr"}
    if not lr:
        return []
    out = ["", "Against the floor (logistic regression), the best model by mean test metric, paired by seed:", ""]
    for metric, higher in metrics:
        groups: dict = {}
        for r in records:
            if r["kind"] != "lr":
                groups.setdefault((r["k"], r["kind"], r["rank"]), {})[r["seed"]] = r["test"][metric]
        mean = {g: float(np.mean(list(v.values()))) for g, v in groups.items()}
        (k, kind, rho) = max(mean, key=lambda g: mean[g] if higher else -mean[g])
        seeds = sorted(set(groups[(k, kind, rho)]) & set(lr))
        d = [(groups[(k, kind, rho)][s] - lr[s][metric]) * (1 if higher else -1) for s in seeds]
        test = stats.paired(d)
        name = f"{LABEL[kind]}" + (f" rho={rho}" if rho else "") + f" (k={k})"
        lr_mean = float(np.mean([lr[s][metric] for s in seeds]))
        out.append(f"- {metric}: {name} {mean[(k, kind, rho)]:.4f} vs LR {lr_mean:.4f}: the model better by "
                   f"{test['mean']:+.4f}"
                   + (f" (sd {test['sd']:.4f}, p {_p(test['p'])})" if test["sd"] is not None else "")
                   + f"; {stats.verdict(test, better='the model', worse='LR')}")
    return out + [""]


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "unknown"


def render(summary: dict) -> str:
    """The Markdown of a written summary (``<stem>.json``) again, with this module's renderer."""
    plan = Plan(**{**summary["plan"], **{k: tuple(summary["plan"][k]) for k in ("embed_dims", "ranks", "seeds")}})
    return to_markdown(summary["table"], summary["runs"], summary["facts"], plan, summary["command"],
                       summary["seconds"], summary["load_before"])


def paper_table(plan: Plan, out_dir, runs_dir=None, cache_dir=None, command: str = "", progress: bool = True,
                stem: str | None = None, resume: bool = False) -> dict:
    """Run the plan; write ``<stem>.{md,csv,json}`` under ``out_dir`` (default stem
    paper-table-<dataset>); every run directory stays under ``runs_dir``."""
    out = Path(out_dir)
    runs = Path(runs_dir) if runs_dir else out / "runs" / plan.dataset
    load = _load()
    started = time.perf_counter()
    records, facts = run_all(plan, runs, cache_dir, progress, resume)
    seconds = time.perf_counter() - started
    table = summarize(records, facts, plan)
    out.mkdir(parents=True, exist_ok=True)
    path = out / (stem or f"paper-table-{plan.dataset}")
    write_text(path.with_suffix(".md"), to_markdown(table, records, facts, plan, command, seconds, load))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(table[0]))
    w.writeheader()
    for r in table:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    write_text(path.with_suffix(".csv"), f"# {command}\n" + buf.getvalue())
    summary = {"command": command, "load_before": load, "plan": dataclasses.asdict(plan), "facts": facts,
               "seconds": seconds, "table": table, "runs": records}
    write_json(path.with_suffix(".json"), summary)
    return summary
