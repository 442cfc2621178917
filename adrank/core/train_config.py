"""``TrainConfig``: every training option, its default and its help, defined once.

``adrank train`` builds its command line from these fields (``add_arguments``), so a default
lives in exactly one place.  A field's ``metadata`` says how it appears on the command line:
``help`` (required to appear at all), ``flag`` (when the flag is not ``--field-name``),
``choices``, ``metavar``, ``group`` (an argparse group title) and ``negate`` (a boolean shown as
``--no-...``/``--quiet``-style switch that stores False).  Fields without ``help`` are set by
code only (``embedding_opts`` is filled from the codebook flags).

It lives in the core (stdlib and the core's own tables only) because the CLI builds every
command's flags in every process, ``adrank serve`` included, which must not import torch or
``training``; the trainer (training/train.py) imports it from here.

The regularisation follows the DPLR-FwFM paper's code: an L2 penalty on the embedding vectors
and linear weights *looked up by the batch*, with separate coefficients (``emb_reg``,
``lin_reg``), added to the batch loss -- not a weight decay on whole tables, which also shrinks
every row the batch never saw -- plus ``interaction_reg`` on the effective R.  How a looked-up row
counts is ``l2_scale``: "occurrence" (each occurrence alike, as the paper's code) shrinks every
feature by the same fraction of its data, however often it was seen, so it cannot stop the
second pass over rare features from memorising them; "feature" divides each occurrence by the
feature's training count, so every feature carries the same penalty per epoch -- a Gaussian
prior per weight, which holds rare features near zero and leaves frequent ones to their data.
The field-interaction parameters (FwFM's R, DPLR's U and e) have their own learning rate.

The defaults are the pick of benchmarks/trainer_defaults.py (docs/results/trainer-defaults.md:
settings judged on validation loss over generated data and the Criteo and Avazu samples, ranked
by their worst data set): the per-feature L2 at strength 100 from an FM start.  Three findings
shaped it: with per-occurrence or no L2 every data set overfits from the second epoch on; a
near-zero start (the paper's code) under any L2 falls into the saddle at V = 0, R = 0 (the
interaction term is of higher order than the penalty there) and every interaction dies; and the
FM start alone stays near the FM on small data (trained R = 1.02 +- 0.03 on the Criteo sample)
unless the interactions get the data (and learning rate) to move.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

from adrank.core import kinds
from adrank.core.datasets import DATASETS

MODEL_KINDS = kinds.NAMES
EMBEDDING_KINDS = ("dense", "lightfm", "xlightfm")
SPLITS = ("random", "ordered")


def opt(default, help: str, **meta):
    """A dataclass field that appears on ``adrank train``'s command line."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class TrainConfig:
    dataset: str = opt("synthetic", "data set format", choices=DATASETS)
    model: str = opt("dplr", "model kind (lr = logistic regression, the floor)", choices=MODEL_KINDS)
    rank: int | None = opt(None, "rho: DPLR rank / pruned keeps rho(m+1) pairs")
    embed_dim: int = opt(8, "embedding dimension k")
    epochs: int = opt(10, "most epochs (early stopping on the validation split)")
    lr: float = opt(3e-3, "Adam learning rate of the embeddings, linear weights and bias")
    interaction_lr: float = opt(3e-3, "Adam learning rate of the field interactions (R, U, e)")
    lr_decay: float = opt(1.0, "both learning rates are multiplied by this after every epoch")
    batch_size: int = opt(512, "global batch (split across processes)")
    emb_reg: float = opt(100.0, "L2 on the embedding vectors looked up by each batch")
    lin_reg: float = opt(100.0, "L2 on the linear weights looked up by each batch")
    l2_scale: str = opt("feature", "how emb_reg / lin_reg weigh a looked-up row: occurrence (every occurrence "
                        "alike, as the paper's code) or feature (1 / the feature's training count: every feature "
                        "the same penalty per epoch, a Gaussian prior per feature, so rare features shrink most)",
                        choices=("occurrence", "feature"))
    interaction_init: str = opt("fm", "start of the field interactions: fm (R = 11^T - I, an FM) or small "
                                "(near zero, as the paper's code)", choices=("fm", "small"))
    interaction_reg: float = opt(0.0, "L2 (squared Frobenius norm) on the effective interaction matrix R, per batch")
    patience: int = opt(2, "early-stopping patience in epochs")
    seed: int = opt(0, "training seed (initialisation and batch order)")
    split: str | None = opt(None, "how rows are split 80/10/10: random (seeded hash) or ordered (first 80%% "
                            "train, next 10%% valid, last 10%% test: for chronological files); default "
                            "ordered for criteo/avazu, random otherwise", choices=SPLITS)
    split_seed: int = opt(0, "seed of the random split (kept apart from --seed so seeds share one split)")
    max_rows: int | None = opt(None, "read only the first N raw rows")
    min_count: int = opt(10, "values seen fewer times in the training split map to the rare id")
    tune: int = opt(0, "Optuna trials over lr, interaction lr and the L2 coefficients on the validation "
                    "split, each trial a full training run (0 = use the given values)", metavar="N")
    prune_from: str | None = opt(None, "prune this trained FwFM run (model pruned only)", metavar="RUN_DIR")
    finetune: bool = opt(True, "pruned: keep the pruned FwFM as is (the paper's code prunes at evaluation)",
                         flag="--no-finetune", negate=True)
    threads: int = opt(1, "torch threads per process")
    progress: bool = opt(True, "no progress bars", flag="--quiet", negate=True)
    # --- codebook embeddings (xLightFM) ---
    embedding: str = opt("dense", "embedding table", choices=EMBEDDING_KINDS, group="codebook embeddings")
    embedding_opts: dict = field(default_factory=dict)  # codebooks/codewords/candidates; id_offsets filled in
    reg_lambda: float | None = opt(None, "lambda of the codebook distance regulariser, Eq. 5 (default 1.0 "
                                   "for codebook embeddings)", group="codebook embeddings")
    init_from: str | None = opt(None, "PQ-initialise the codebooks from this trained dense run (same data set)",
                                metavar="RUN_DIR", group="codebook embeddings")
    memory_budget_mb: float | None = opt(None, "xlightfm: embedding memory budget of the search, paper-style MB",
                                         metavar="X", group="codebook embeddings")
    search_steps: int = opt(300, "xlightfm: search steps (Algorithm 1)", group="codebook embeddings")

    @property
    def codebook_lambda(self) -> float:
        """reg_lambda, defaulting to 1.0 for codebook embeddings (0 for dense)."""
        if self.reg_lambda is not None:
            return self.reg_lambda
        return 0.0 if self.embedding == "dense" else 1.0

    def split_kind(self) -> str:
        return self.split or default_split(self.dataset)

    def validate(self) -> None:
        if self.model not in MODEL_KINDS:
            raise ValueError(f"model must be one of {MODEL_KINDS}, got {self.model!r}")
        if kinds.get(self.model).ranked and (self.rank is None or self.rank < 1):
            raise ValueError(f"model {self.model!r} needs --rank >= 1")
        if not kinds.get(self.model).ranked and self.rank is not None:
            raise ValueError(f"model {self.model!r} takes no rank")
        if self.prune_from and self.model != "pruned":
            raise ValueError("--prune-from only applies to --model pruned")
        if not kinds.get(self.model).embedded and self.embedding != "dense":
            raise ValueError("--model lr has no embeddings: --embedding does not apply")
        for name in ("embed_dim", "epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "interaction_lr", "lr_decay"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("emb_reg", "lin_reg", "interaction_reg", "tune"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        _validate_embedding(self)


def default(name: str):
    """The default of TrainConfig field ``name`` (for other commands that share an option)."""
    return TrainConfig.__dataclass_fields__[name].default


def default_split(dataset: str) -> str:
    """Criteo and Avazu files are in time order: their last rows are the honest test set."""
    return "ordered" if dataset in ("criteo", "avazu") else "random"


def _validate_embedding(cfg: TrainConfig) -> None:
    """Clear errors for option combinations that make no sense for ``cfg.embedding``."""
    kind, opts = cfg.embedding, cfg.embedding_opts
    if kind not in EMBEDDING_KINDS:
        raise ValueError(f"embedding must be one of {EMBEDDING_KINDS}, got {kind!r}")
    if kind == "dense":
        bad = [f"--{o}" for o in ("codebooks", "codewords", "candidates") if o in opts]
        bad += [flag for flag, v in (("--memory-budget-mb", cfg.memory_budget_mb), ("--init-from", cfg.init_from),
                                     ("--reg-lambda", cfg.reg_lambda or None)) if v is not None]
        if bad:
            raise ValueError(f"{', '.join(bad)} only apply to --embedding lightfm/xlightfm, not dense")
        return
    if cfg.codebook_lambda < 0:
        raise ValueError(f"reg_lambda must be >= 0, got {cfg.reg_lambda}")
    if kind == "lightfm" and (cfg.memory_budget_mb is not None or "candidates" in opts):
        raise ValueError("--memory-budget-mb / --candidates only apply to --embedding xlightfm "
                         "(lightfm uses one --codewords K in every field)")
    if kind == "xlightfm":
        if "codewords" in opts:
            raise ValueError("--codewords does not apply to xlightfm: the search picks each field's K "
                             "from --candidates")
        if "sizes" not in opts and (cfg.memory_budget_mb is None or not cfg.memory_budget_mb > 0):
            raise ValueError("--embedding xlightfm needs --memory-budget-mb X > 0 (the search's budget)")
        if cfg.search_steps < 1:
            raise ValueError(f"search_steps must be >= 1, got {cfg.search_steps}")
    if cfg.model == "pruned" and (kind == "xlightfm" or cfg.init_from):
        raise ValueError("--model pruned supports --embedding dense or lightfm (without --init-from) only")


# --- the command line, generated from the fields ----------------------------------------------
def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _type_of(f: dataclasses.Field):
    t = str(f.type)
    return int if t.startswith("int") else float if t.startswith("float") else str


def add_arguments(parser: argparse.ArgumentParser, required: tuple[str, ...] = (),
                  skip: tuple[str, ...] = ()) -> None:
    """One argparse option per documented TrainConfig field (``required`` ones without default)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(TrainConfig):
        if "help" not in f.metadata or f.name in skip:
            continue
        where: argparse._ActionsContainer = parser
        if f.metadata.get("group"):
            where = groups.setdefault(f.metadata["group"], parser.add_argument_group(f.metadata["group"]))
        kw: dict = {"dest": f.name, "help": f.metadata["help"]}
        if f.metadata.get("negate"):
            where.add_argument(_flag(f), action="store_false", default=f.default, **kw)
            continue
        if f.name in required:
            kw["required"] = True
        else:
            kw["default"] = f.default
            if f.default is not None and "default" not in kw["help"]:
                kw["help"] += " (default %(default)s)"
        for k in ("choices", "metavar"):
            if k in f.metadata:
                kw[k] = f.metadata[k]
        where.add_argument(_flag(f), type=_type_of(f), **kw)


def from_args(args: argparse.Namespace, **extra) -> TrainConfig:
    """A TrainConfig from a namespace made by ``add_arguments`` (plus ``extra`` fields)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    kw = {n: getattr(args, n) for n in names if hasattr(args, n)}
    kw.update(extra)
    return TrainConfig(**kw)
