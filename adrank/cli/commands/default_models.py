"""`adrank default-models --out DIR`: rebuild the embedded default models (adrank/cli/default_model.py)."""

from __future__ import annotations

HELP = "Rebuild the embedded default DPLR and pruned models (generate -> train -> export; needs torch)."


def add_arguments(p) -> None:
    p.add_argument("--out", required=True,
                   help="directory for dplr.adrk, pruned.adrk and default.json (the shipped ones: adrank/cli/defaults)")
    p.add_argument("--work", help="keep the generated data set and the training runs here (default: a temp dir)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from adrank.core.errors import UserError

    try:
        import torch  # noqa: F401 - the trainer's dependency, checked before minutes of work
    except ImportError:
        raise UserError("rebuilding the default models trains them and needs torch: "
                        "pip install -c constraints.txt -e '.[train]'") from None
    from adrank.cli.default_model import build

    info = build(args.out, work=args.work, progress=not args.quiet)
    for name, m in info["models"].items():
        print(f"{name}\t{m['version']}\ttest AUC {m['test']['auc']:.4f}")
    return 0
