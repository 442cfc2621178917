"""How close to the planted model can *any* learner get?  The statistical floor of planted recovery.

`benchmarks/planted_recovery.py` measures the default trainer against the planted model's test
logloss (the Bayes ceiling).  This benchmark asks what the data allows, on the same generated
data, with two learners that know more than any real one:

* **Laplace floor** (no training): a learner that knows the planted R and the planted prior
  (every value's embedding and linear weight ~ N(0, s^2 / (1 + p)^(2 decay)), p its popularity
  rank, s estimated from the planted arrays) and estimates only the embeddings and linear
  weights.  Under the usual Gaussian (Laplace) approximation its expected excess test logloss is
  dof / (2 N), N the training rows and dof = sum over coordinates of F s^2 / (1 + F s^2), F a
  coordinate's Fisher information over N rows (diagonal: coordinates treated as independent).
  F comes from a fresh planted sample of ``--fisher-rows`` rows, scaled to N, so the floor at
  other data sizes costs nothing: the table shows it at every ``--floor-rows``.
* **Oracle learner** (trained): adrank's own trainer with U, e fixed at the planted ones and
  the L2 penalties set to that planted prior (``train_model(penalty_scale=...)``), from the
  trainer's random start, 20 epochs with learning-rate decay 0.8: what a MAP fit with the right
  prior and the true interactions reaches on these rows.
* **Default trainer**: ``fit`` with ``TrainConfig(model="dplr", rank=2)`` and nothing else, which is
  what ``adrank train --model dplr --rank 2`` runs.

Only the default generator (``--interactions dplr``, no clusters) is supported: the prior is
read off its decay-with-popularity construction.

    python -m benchmarks.recovery_floor --out docs/results/recovery-floor --seeds 0 1 2 \\
        --signs mixed positive --rows 200000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from adrank.core.files import write_report
from adrank.core.hashing import hash_tokens
from adrank.core.preprocess import RARE
from adrank.core.train_config import TrainConfig
from training.data import prepare
from training.generate import Planted, generate, make_schema, token_table
from training.train import evaluate_split, fit, new_model, train_model


def planted_model(data_dir) -> tuple[Planted, dict]:
    """The generator's Planted object of ``data_dir`` (its sampler, sizes and weights) and truth.json."""
    truth = json.loads((Path(data_dir) / "truth.json").read_text())
    p = truth["params"]
    if p["interactions"] != "dplr" or p["clusters"]:
        raise ValueError("the recovery floor needs the default generator (dplr interactions, no clusters)")
    schema = make_schema(p["fields"], p["context_fields"], p["multi_max"])
    planted = Planted(schema, p["vocab"], p["rank"], p["embed_dim"], p["zipf"], 0,
                      np.random.default_rng(np.random.SeedSequence([p["seed"], 0])), p["signs"], p["decay"])
    arrays = np.load(Path(data_dir) / "planted.npz")
    if not np.allclose(planted.R, arrays["R"], atol=1e-5):  # same construction as the generator's
        raise ValueError(f"{data_dir}: planted.npz does not match the generator's construction")
    planted.linear = arrays["linear"].astype(np.float64)
    planted.emb = arrays["emb"].astype(np.float64)
    planted.bias = float(arrays["bias"][0])
    return planted, truth


def prior(planted: Planted, decay: float) -> tuple[np.ndarray, float, float]:
    """(precision ratio (1 + p)^(2 decay) of every planted value, s_emb^2 per coordinate, s_lin^2):
    the planted prior is N(0, s^2 / (1 + p)^(2 decay)), p the value's popularity rank in its
    field; s^2 estimated from the planted weights themselves."""
    precision = _precision(np.concatenate([np.arange(n) for n in planted.sizes]), decay)
    return precision, float(np.mean(planted.emb**2 * precision[:, None])), float(np.mean(planted.linear**2 * precision))


def _precision(rank, decay: float) -> np.ndarray:
    return (1.0 + np.asarray(rank, dtype=np.float64)) ** (2 * decay)


def fisher(planted: Planted, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Diagonal Fisher information per planted value over ``rows`` fresh rows: (emb [V, k], linear [V]).

    score = b + sum_f mean(w over f's values) + 1/2 sum_ij R_ij <v_i, v_j>, v_f the mean of f's
    embeddings, so d score / d e_x = (R v)_f / n_f and d score / d w_x = 1 / n_f for a value x of
    field f listed n_f times in the row; each row weighs by p (1 - p)."""
    X = planted.sample(rows, np.random.default_rng([seed, 99]))
    V, lin, counts = planted.pooled(X)
    w = 1.0 / (1.0 + np.exp(-(planted.bias + lin + planted.interaction(V))))
    w = w * (1.0 - w)
    G = np.einsum("ij,njk->nik", planted.R, V)  # d score / d v_i
    F_emb, F_lin = np.zeros_like(planted.emb), np.zeros(len(planted.linear))
    offs = planted.schema.slot_offsets
    for f in range(planted.schema.m):
        ids = X[:, offs[f]:offs[f + 1]]
        for slot in range(ids.shape[1]):
            ok = ids[:, slot] >= 0
            np.add.at(F_emb, ids[ok, slot], w[ok, None] * (G[ok, f] / counts[ok, f, None]) ** 2)
            np.add.at(F_lin, ids[ok, slot], w[ok] / counts[ok, f] ** 2)
    return F_emb, F_lin


def dof(F_emb, F_lin, var_emb, var_lin, scale: float) -> float:
    """Effective number of estimated parameters, sum of F s^2 / (1 + F s^2) over coordinates, with
    the Fisher scaled by ``scale`` (training rows / Fisher sample rows)."""
    a = scale * F_emb * var_emb[:, None]
    b = scale * F_lin * var_lin
    return float((a / (1 + a)).sum() + (b / (1 + b)).sum())


def floor_table(planted, truth, fisher_rows: int, floor_rows: list[int], seed: int) -> list[dict]:
    """Laplace floor (test logloss / planted) for each total row count in ``floor_rows``
    (80 % of them train, as the trainer's split)."""
    precision, s_emb, s_lin = prior(planted, truth["params"]["decay"])
    F_emb, F_lin = fisher(planted, fisher_rows, seed)
    out = []
    for rows in floor_rows:
        n_train = 0.8 * rows
        d = dof(F_emb, F_lin, s_emb / precision, s_lin / precision, n_train / fisher_rows)
        excess = d / (2 * n_train)
        out.append({"rows": rows, "train_rows": int(n_train), "dof": round(d, 1), "excess_nats": excess,
                    "floor_ratio": 1 + excess / truth["test"]["logloss"]})
    return out


def oracle_learner(planted: Planted, truth: dict, data, epochs: int, lr_decay: float) -> dict:
    """The trainer with U, e fixed at the planted ones and the planted prior as its L2."""
    p = truth["params"]
    precision, s_emb, s_lin = prior(planted, p["decay"])
    vocab, n = data.preprocessor.vocab, data.n_features
    scale = np.ones(n)  # each encoded id's prior precision ratio (missing ids: that of the head)
    tokens = token_table(planted)
    for f in range(planted.schema.m):
        lo, hi = planted.field_offsets[f], planted.field_offsets[f + 1]
        ids = vocab.lookup(f, hash_tokens(list(tokens[lo:hi])))
        kept = ids != vocab.id_offsets[f] + RARE
        scale[ids[kept]] = precision[lo:hi][kept]
        scale[vocab.id_offsets[f] + RARE] = _precision(kept.sum(), p["decay"])  # the pooled tail: its first rank
    cfg = TrainConfig(dataset="synthetic", model="dplr", rank=p["rank"], embed_dim=p["embed_dim"], epochs=epochs,
                      lr_decay=lr_decay, patience=3, emb_reg=1 / (2 * s_emb), lin_reg=1 / (2 * s_lin),
                      l2_scale="feature", progress=False)
    model, _ = new_model(cfg, data)
    with torch.no_grad():
        model.U.copy_(torch.as_tensor(planted.U, dtype=torch.float32))
        model.e.copy_(torch.as_tensor(planted.e, dtype=torch.float32))
    model.U.requires_grad_(False)
    model.e.requires_grad_(False)
    t = time.perf_counter()
    model, hist = train_model(model, cfg, data, desc="oracle", penalty_scale=scale)
    test = evaluate_split(model, data, "test")
    return {"test_logloss": test["logloss"], "test_auc": test["auc"], "ratio": test["logloss"] / truth["test"]["logloss"],
            "best_epoch": hist["best_epoch"], "epochs_run": hist["epochs_run"], "emb_reg": cfg.emb_reg,
            "lin_reg": cfg.lin_reg, "seconds": round(time.perf_counter() - t, 1)}


def default_trainer(truth: dict, data, run_dir) -> dict:
    cfg = TrainConfig(dataset="synthetic", model="dplr", rank=2, progress=False)
    m = fit(cfg, data, run_dir)
    return {"test_logloss": m["test"]["logloss"], "test_auc": m["test"]["auc"],
            "ratio": m["test"]["logloss"] / truth["test"]["logloss"], "best_epoch": m["best_epoch"],
            "epochs_run": m["epochs_run"]}


def one(rows: int, seed: int, signs: str, work: Path, args) -> dict:
    d = work / f"g-{rows}-{seed}-{signs}"
    generate(d, rows=rows, seed=seed, rank=2, signs=signs, progress=False)
    planted, truth = planted_model(d)
    out = {"rows": rows, "seed": seed, "signs": signs, "planted_test_logloss": truth["test"]["logloss"],
           "floor": floor_table(planted, truth, args.fisher_rows, sorted({rows, *args.floor_rows}), seed)}
    if not args.no_train:
        data = prepare("synthetic", d, cache_dir=work / "cache", progress=False)
        out["oracle"] = oracle_learner(planted, truth, data, args.epochs, args.lr_decay)
        out["default"] = default_trainer(truth, data, work / f"r-{rows}-{seed}-{signs}")
    return out


def markdown(runs: list[dict], command: str, load: str, seconds: float) -> str:
    lines = ["# Planted recovery: the statistical floor", "", "Made by:", "", "```", command, "```", "",
             f"Machine load before the run (uptime): `{load}`. Wall time {seconds / 60:.1f} min.", "",
             "Test logloss / the planted model's on the same split (the issue's target: <= 1.01). "
             "*Laplace floor*: expected ratio for a learner that knows the planted R and prior and "
             "estimates only the embeddings and linear weights (dof / 2N, `benchmarks/recovery_floor.py`). "
             "*Oracle learner*: adrank's trainer with U, e fixed at the planted values and L2 set to the "
             "planted prior. *Default*: `adrank train --model dplr --rank 2`, nothing else.", "",
             "| rows | seed | signs | planted test logloss | Laplace floor (dof) | oracle learner | default trainer |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        fl = next(f for f in r["floor"] if f["rows"] == r["rows"])
        cells = [str(r["rows"]), str(r["seed"]), r["signs"], f"{r['planted_test_logloss']:.4f}",
                 f"{fl['floor_ratio']:.4f} ({fl['dof']:.0f})"]
        for key in ("oracle", "default"):
            x = r.get(key)
            cells.append(f"{x['ratio']:.4f} (epoch {x['best_epoch']} of {x['epochs_run']})" if x else "-")
        lines.append("| " + " | ".join(cells) + " |")
    sizes = sorted({f["rows"] for r in runs for f in r["floor"]})
    lines += ["", "Laplace floor at other data sizes (same planted models, Fisher scaled to the rows):", "",
              "| seed | signs | " + " | ".join(f"{s:,} rows" for s in sizes) + " |",
              "|---|---|" + "---|" * len(sizes)]
    for r in runs:
        by = {f["rows"]: f for f in r["floor"]}
        lines.append(f"| {r['seed']} | {r['signs']} | "
                     + " | ".join(f"{by[s]['floor_ratio']:.4f}" if s in by else "-" for s in sizes) + " |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="OUT.json + OUT.md")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--signs", nargs="+", default=["mixed", "positive"], choices=["mixed", "positive"])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--floor-rows", type=int, nargs="*", default=[500_000, 1_000_000, 2_000_000, 5_000_000])
    ap.add_argument("--fisher-rows", type=int, default=200_000, help="planted sample the Fisher is taken on")
    ap.add_argument("--epochs", type=int, default=20, help="oracle learner: most epochs")
    ap.add_argument("--lr-decay", type=float, default=0.8, help="oracle learner: learning-rate decay per epoch")
    ap.add_argument("--no-train", action="store_true", help="the Laplace floor only")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    t = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for signs in args.signs:
            for seed in args.seeds:
                r = one(args.rows, seed, signs, Path(tmp), args)
                print(json.dumps(r), flush=True)
                runs.append(r)
    seconds = time.perf_counter() - t
    command = "python -m benchmarks.recovery_floor " + " ".join(argv if argv is not None else sys.argv[1:])
    write_report(args.out, {"command": command, "load_before": load, "seconds": seconds,
                            "options": dataclasses.asdict(TrainConfig(model="dplr", rank=2)), "runs": runs},
                 markdown(runs, command, load, seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
