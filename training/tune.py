"""``--tune N``: Optuna (TPE) over the learning rates and L2 coefficients, on the validation split.

The DPLR-FwFM paper tunes the learning rate with Optuna on the validation split (Sec. 5.1).
Regularisation matters as much on CTR data (an unregularised FwFM overfits after one epoch), so
the search also covers the L2 coefficients and the field interactions' own learning rate --
whatever the kind has:

    lr               [3e-4, 3e-2]  log    every kind
    lin_reg          [1e-2, 1e4]   log    every kind        ([1e-8, 1e-3] with l2_scale="occurrence")
    emb_reg          [1e-2, 1e4]   log    kinds with embeddings       ([1e-7, 1e-2] likewise)
    interaction_lr   [1e-3, 1e-1]  log    fwfm, pruned (its FwFM), dplr

(the L2 ranges follow ``l2_scale``: a per-feature coefficient is a prior strength in rows, a
per-occurrence one a fraction of each row's loss).

Every trial is a full training run with the same epoch budget and early stopping as an untuned
run, so comparing kinds tuned with the same N gives each the same budget.  Trial 0 is the
configuration as given (the defaults; a coefficient of 0, below the log range, is recorded for
the sampler at the range's floor), so tuning never picks something worse on validation than not
tuning.  A trial whose validation metric after an epoch is worse than the median of earlier
trials at that epoch is stopped there (Optuna's MedianPruner, after 4 complete trials): it
could not have won.  The best trial's model is the result -- no retraining.  Every trial
(parameters, per-epoch validation metric, state) is returned for ``RUN/tuning.json``.
"""

from __future__ import annotations

import dataclasses

from adrank.core.train_config import TrainConfig
from training.metrics import primary

SPACE = {
    "lr": (3e-4, 3e-2),
    "lin_reg": (1e-2, 1e4),
    "emb_reg": (1e-2, 1e4),
    "interaction_lr": (1e-3, 1e-1),
}
OCCURRENCE_L2 = {"lin_reg": (1e-8, 1e-3), "emb_reg": (1e-7, 1e-2)}


def space_for(kind: str, l2_scale: str = "feature") -> dict[str, tuple[float, float]]:
    """The tuned parameters of a model kind ("pruned" tunes the FwFM it starts from)."""
    names = ["lr", "lin_reg"]
    if kind != "lr":
        names.append("emb_reg")
    if kind in ("fwfm", "pruned", "dplr"):
        names.append("interaction_lr")
    ranges = {**SPACE, **(OCCURRENCE_L2 if l2_scale == "occurrence" else {})}
    return {n: ranges[n] for n in names}


def tune(cfg: TrainConfig, data, trials: int, new_model, train_model, warm=None):
    """(best model, its history, cfg with the best parameters, tuning record) over ``trials``;
    ``new_model(cfg, data, warm=...)`` and ``train_model(model, cfg, data, desc=, on_epoch=)`` are
    the trainer's own (training/train.py passes them: this module never imports the trainer)."""
    import optuna

    if trials < 1:
        raise ValueError(f"tune needs >= 1 trial, got {trials}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    key, higher_better = primary(data.target)
    space = space_for(cfg.model, cfg.l2_scale)
    best = {"value": None}
    records = []

    def better(a, b) -> bool:
        return b is None or (a > b if higher_better else a < b)

    kind = "fwfm" if cfg.model == "pruned" else cfg.model

    def run(number: int, params: dict, trial=None) -> tuple[float, list]:
        trial_cfg = dataclasses.replace(cfg, **params, tune=0)
        curve = []

        def report(epoch, valid):
            curve.append(valid[key])
            if trial is not None:
                trial.report(valid[key], epoch)
                if trial.should_prune():
                    records.append({"number": number, "params": params, "state": "pruned", "curve": curve})
                    raise optuna.TrialPruned()

        model, _ = new_model(trial_cfg, data, warm=warm)
        model, hist = train_model(model, trial_cfg, data, desc=f"{kind} trial {number}", on_epoch=report)
        value = max(curve) if higher_better else min(curve)
        records.append({"number": number, "params": params, "state": "complete", "value": value,
                        "curve": curve, "best_epoch": hist["best_epoch"], "epochs_run": hist["epochs_run"]})
        if better(value, best["value"]):
            best.update(value=value, model=model, hist=hist, cfg=trial_cfg, number=number)
        return value, curve

    study = optuna.create_study(direction="maximize" if higher_better else "minimize",
                                sampler=optuna.samplers.TPESampler(seed=cfg.seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0))
    given = {n: float(getattr(cfg, n)) for n in space}
    value, curve = run(0, given)  # trial 0: the configuration as given
    dists = {n: optuna.distributions.FloatDistribution(lo, hi, log=True) for n, (lo, hi) in space.items()}
    study.add_trial(optuna.trial.create_trial(
        params={n: min(max(v, space[n][0]), space[n][1]) for n, v in given.items()}, distributions=dists,
        value=value, intermediate_values={e + 1: v for e, v in enumerate(curve)}))

    def objective(trial) -> float:
        params = {n: trial.suggest_float(n, lo, hi, log=True) for n, (lo, hi) in space.items()}
        return run(trial.number, params, trial)[0]

    study.optimize(objective, n_trials=trials - 1)
    if best["value"] is None:  # pragma: no cover - the first trial is never pruned
        raise ValueError("tuning finished no trial")
    record = {"trials": trials, "epochs": cfg.epochs, "metric": key, "higher_better": higher_better,
              "space": {n: list(b) for n, b in space.items()}, "best_trial": best["number"],
              "best_value": best["value"], "best_params": {n: getattr(best["cfg"], n) for n in space},
              "history": sorted(records, key=lambda r: r["number"])}
    return best["model"], best["hist"], best["cfg"], record
