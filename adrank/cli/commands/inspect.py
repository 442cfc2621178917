"""`adrank inspect MODEL`: what a run directory or an artifact learned about field interactions.

Prints the kind, the fields with their roles and per-field importance, the effective m x m
interaction matrix (training/interactions.py) and the training metrics; ``--json OUT`` writes
all of it, ``--plot [PNG]`` a heatmap of R.  When the model was trained on generated data whose
``truth.json`` is found (the run's data directory) or given with ``--truth``, the learned R is
also put in the planted model's gauge (R_ij scaled by the data's slope of learned on planted
<v_i, v_j>: an FwFM's R is only defined up to a per-field scale and sign) and compared with the
planted R: their Pearson correlation, and the heatmap beside it.  Artifacts are read without torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HELP = "Show a model's effective field-interaction matrix, per-field importance and metrics."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="run directory (adrank train) or artifact file (adrank export)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the full report (R included) as JSON")
    p.add_argument("--plot", nargs="?", const="", default=None, metavar="PNG",
                   help="write a heatmap of R (default RUN/interactions.png, or ARTIFACT-interactions.png)")
    p.add_argument("--truth", default=None, metavar="TRUTH_JSON",
                   help="a generated data set's truth.json (or its directory): compare with the planted R "
                        "(default: the run's own data directory, when it has one)")


def load_model_arrays(target: Path):
    """(kind, rank, arrays, schema, id_offsets, metrics, data source or None) of a run or artifact."""
    if target.is_dir():
        from training import checkpoint

        model, cfg, pre = checkpoint.load(target)
        metrics_p = target / "metrics.json"
        metrics = json.loads(metrics_p.read_text()) if metrics_p.exists() else {}
        return (model.kind, model.rank, model.export_arrays(), pre.schema, pre.vocab.id_offsets, metrics,
                (metrics.get("data") or {}).get("source"))
    from adrank.core.artifact import read_artifact

    art = read_artifact(target)
    mf = art.manifest
    metrics = (mf.get("source") or {}).get("metrics") or {}
    source = (metrics.get("data") or {}).get("source")
    return mf["kind"], mf.get("rank"), art.arrays, art.schema, art.arrays["vocab_id_offsets"], metrics, source


def find_truth(explicit, source):
    """(truth.json path, planted R) from an explicit path (the file or its directory), else from
    the run's data source when that is a generated data set's directory; (None, None) otherwise."""
    if explicit:
        p = Path(explicit)
        p = p / "truth.json" if p.is_dir() else p
        if not p.is_file():
            raise ValueError(f"{p}: no such truth.json")
    elif source and Path(source).is_dir() and (Path(source) / "truth.json").is_file():
        p = Path(source) / "truth.json"
    else:
        return None, None
    try:
        t = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{p}: not a truth.json ({exc})") from None
    if "R" not in t:
        if explicit:
            raise ValueError(f"{p}: no planted \"R\" (made by an older `adrank generate`; generate it again)")
        return None, None
    return p, t["R"]


def _vocab_arrays(target: Path, arrays: dict) -> dict:
    """The vocabulary arrays of a run directory (vocab.npz) or an artifact (its own arrays)."""
    if target.is_dir():
        with np.load(target / "vocab.npz") as z:
            return {k: z[k] for k in z.files}
    return {k: arrays[k] for k in ("vocab_keys", "vocab_key_offsets", "vocab_id_offsets")}


def text_report(rep: dict, metrics: dict) -> str:
    lines = [f"kind       {rep['kind']}" + (f" rank={rep['rank']}" if rep.get("rank") else ""),
             f"fields     m={rep['m']} (importance: interaction weight, max 1; usage: x embedding norm)"]
    for f in rep["fields"]:
        lines.append(f"  {f['name']:<14} {f['role']:<8} importance {f['importance']:.3f}  "
                     f"usage {f['usage']:.3f}")
    if "pearson_vs_planted_raw" in rep:
        gauged = f"{rep['pearson_vs_planted']:.3f} in the planted gauge, " if "pearson_vs_planted" in rep else ""
        lines.append(f"planted    Pearson(R, planted R) over off-diagonal entries = {gauged}"
                     f"{rep['pearson_vs_planted_raw']:.3f} raw  ({rep['truth']})")
    R = rep["R"]
    if rep["m"] <= 40:
        lines.append("R (effective, rounded)")
        for name, row in zip((f["name"] for f in rep["fields"]), R, strict=True):
            lines.append(f"  {name[:10]:<10} " + " ".join(f"{v:+.2f}" for v in row))
    for split in ("valid", "test"):
        if split in metrics:
            lines.append(f"{split:<10} " + " ".join(f"{k} {v:.4f}" for k, v in metrics[split].items()))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from adrank.core.errors import UserError
    from adrank.core.files import write_json
    from training.interactions import planted_gauge, plot, summary

    target = Path(args.model)
    if not target.exists():
        raise UserError(f"{target}: no such run directory or artifact")
    try:
        kind, rank, arrays, schema, id_offsets, metrics, source = load_model_arrays(target)
        truth_p, truth_R = find_truth(args.truth, source)
        gauge = None
        if truth_R is not None and kind != "lr":
            from adrank.core.preprocess import Preprocessor

            pre = Preprocessor.from_state({"schema": schema.to_dict()}, _vocab_arrays(target, arrays))
            gauge = planted_gauge(arrays, pre, truth_p.parent)
        rep = summary(kind, arrays, schema, id_offsets, truth_R, gauge)
    except (ValueError, OSError) as exc:  # CheckpointError, ArtifactError are ValueErrors
        raise UserError(str(exc)) from exc
    rep.update(rank=rank, model=str(target), truth=str(truth_p) if truth_p else None,
               metrics={k: metrics[k] for k in ("valid", "test", "best_epoch", "epochs_run", "lr",
                                                "interaction_lr", "emb_reg", "lin_reg") if k in metrics})
    print(text_report(rep, metrics))
    if args.json:
        write_json(args.json, {**rep, "planted_R": truth_R})
    if args.plot is not None:
        out = Path(args.plot) if args.plot else (target / "interactions.png" if target.is_dir()
                                                 else target.with_name(f"{target.stem}-interactions.png"))
        import numpy as np

        gauged = "R_planted_gauge" in rep
        plot(np.array(rep["R_planted_gauge"] if gauged else rep["R"]), [f["name"] for f in rep["fields"]], out,
             None if truth_R is None else np.array(truth_R),
             title=f"learned R ({kind}" + (", planted gauge)" if gauged else ")"))
        print(f"wrote {out}")
    return 0
