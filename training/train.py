"""The trainer: Adam over memory-mapped mini-batches, early stopping on the validation split.

Read top to bottom:
    fit(cfg, data, out_dir)        the entry point: optional lr search, pruning, test metrics, checkpoint
    train_model(model, cfg, data)  the loop: epochs -> shuffled batches -> validation -> patience
    predict(model, X, target)      probabilities (binary) or predictions (regression), in chunks

``data`` is a ``training.data.EncodedData`` (or anything with ``preprocessor``, ``target`` and
``split(name) -> (X int32[N, S], y float32[N])``).  Protocol of the DPLR-FwFM paper, Sec. 5.1:
80/10/10 splits, lr tuned with Optuna on the validation split, LogLoss/AUC (MSE for ratings).

Distributed: launched by ``torchrun`` (WORLD_SIZE > 1), each process trains on its shard
``perm[rank::world]`` of the same shuffled index with batch ``batch_size // world`` under
DistributedDataParallel (gloo), so the global batch and step count match one process.  Every
process evaluates the full validation split with identical weights, so early stopping agrees
without extra communication; only rank 0 writes the run directory.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from training import checkpoint
from training.metrics import primary, report
from training.models import KINDS, PrunedFwFM, build


@dataclass
class TrainConfig:
    dataset: str = "synthetic"
    model: str = "dplr"  # fm | fwfm | pruned | dplr
    rank: int | None = None  # rho for dplr / pruned
    embed_dim: int = 8  # k
    embedding: str = "dense"  # or a codebook kind registered by training.quantize
    embedding_opts: dict = dataclasses.field(default_factory=dict)  # id_offsets is filled in
    reg_lambda: float = 0.0  # weight of embedding.regularizer() (xLightFM Eq. 5), if it has one
    epochs: int = 10
    lr: float = 3e-3
    batch_size: int = 512
    weight_decay: float = 1e-6  # L2 on the embedding and linear tables only
    patience: int = 2  # epochs without validation improvement before stopping
    seed: int = 0
    max_rows: int | None = None
    min_count: int = 10
    lr_search: int = 0  # Optuna trials on the validation split (0 = use lr)
    lr_search_epochs: int = 3
    prune_from: str | None = None  # a trained FwFM run directory (model "pruned" only)
    finetune: bool = True  # pruned: fine-tune with the mask after pruning
    threads: int = 1  # torch intra-op threads per process
    progress: bool = True

    def validate(self) -> None:
        if self.model not in KINDS:
            raise ValueError(f"model must be one of {KINDS}, got {self.model!r}")
        if self.model in ("dplr", "pruned") and (self.rank is None or self.rank < 1):
            raise ValueError(f"model {self.model!r} needs --rank >= 1")
        if self.model in ("fm", "fwfm") and self.rank is not None:
            raise ValueError(f"model {self.model!r} takes no rank")
        if self.prune_from and self.model != "pruned":
            raise ValueError("--prune-from only applies to --model pruned")
        for name in ("embed_dim", "epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


# --- distributed helpers -------------------------------------------------------------------
def init_distributed() -> tuple[int, int]:
    """(rank, world size); joins the torchrun process group (gloo) when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# --- prediction ----------------------------------------------------------------------------
@torch.no_grad()
def predict(model, X, target: str, batch_size: int = 16384) -> np.ndarray:
    """float64 [N]: sigmoid(score) for a binary target, the raw score for regression."""
    model.eval()
    out = np.empty(len(X), dtype=np.float64)
    for s in range(0, len(X), batch_size):
        z = model(torch.from_numpy(np.asarray(X[s:s + batch_size], dtype=np.int64)))
        out[s:s + batch_size] = (torch.sigmoid(z) if target == "binary" else z).double().numpy()
    return out


def evaluate_split(model, data, name: str) -> dict[str, float]:
    X, y = data.split(name)
    return report(data.target, np.asarray(y), predict(model, X, data.target))


# --- the loop ------------------------------------------------------------------------------
def _optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    tables = [p for n, p in model.named_parameters() if n.startswith(("embedding.", "linear."))]
    others = [p for n, p in model.named_parameters() if not n.startswith(("embedding.", "linear."))]
    return torch.optim.Adam([{"params": tables, "weight_decay": cfg.weight_decay},
                             {"params": others, "weight_decay": 0.0}], lr=cfg.lr)


def train_model(model, cfg: TrainConfig, data, desc: str = "train") -> tuple[torch.nn.Module, dict]:
    """Train ``model`` in place; returns (model with the best validation weights, history)."""
    rank, world = init_distributed()
    X, y = data.split("train")
    if len(y) < world:
        raise ValueError(f"the training split has {len(y)} rows: too few to train on")
    loss_fn = torch.nn.BCEWithLogitsLoss() if data.target == "binary" else torch.nn.MSELoss()
    key, higher_better = primary(data.target)
    net = torch.nn.parallel.DistributedDataParallel(model, forward_sync_buffers=False) if world > 1 else model
    opt = _optimizer(model, cfg)
    bs = max(1, cfg.batch_size // world)
    best, best_state, best_epoch, bad, history = None, None, 0, 0, []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        perm = np.random.default_rng([cfg.seed, epoch]).permutation(len(y))
        mine = perm[: len(perm) - len(perm) % world][rank::world]  # this process's shard
        bar = tqdm(range(0, len(mine), bs), desc=f"{desc} epoch {epoch}/{cfg.epochs}", leave=False,
                   disable=not cfg.progress or rank != 0, unit="batch")
        total, seen = 0.0, 0
        for s in bar:
            idx = np.sort(mine[s:s + bs])  # sorted: sequential reads from the memmap
            xb = torch.from_numpy(np.asarray(X[idx], dtype=np.int64))
            yb = torch.from_numpy(np.asarray(y[idx], dtype=np.float32))
            loss = loss_fn(net(xb), yb)
            if cfg.reg_lambda and hasattr(model.embedding, "regularizer"):
                loss = loss + cfg.reg_lambda * model.embedding.regularizer()
            if not torch.isfinite(loss):
                raise ValueError(f"{desc}: training diverged (loss {loss.item()}) in epoch {epoch}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, seen = total + loss.item() * len(idx), seen + len(idx)
            bar.set_postfix(loss=f"{total / seen:.4f}")
        valid = evaluate_split(model, data, "valid")
        history.append({"epoch": epoch, "train_loss": total / max(seen, 1), **valid})
        if rank == 0 and cfg.progress:
            tqdm.write(f"{desc} epoch {epoch}: train loss {total / max(seen, 1):.4f} "
                       + " ".join(f"valid {k} {v:.4f}" for k, v in valid.items()))
        if best is None or (valid[key] > best if higher_better else valid[key] < best):
            best, best_epoch, bad = valid[key], epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    model.load_state_dict(best_state)
    return model, {"best_epoch": best_epoch, "epochs_run": len(history), "history": history}


def _embedding_opts(cfg: TrainConfig, data) -> dict:
    """cfg.embedding_opts, with the field layout (``id_offsets``) codebook embeddings need."""
    opts = dict(cfg.embedding_opts)
    if cfg.embedding != "dense":
        opts.setdefault("id_offsets", [int(o) for o in data.preprocessor.vocab.id_offsets])
    return opts


def init_bias(model, data) -> None:
    """b0 <- the training mean (regression) or its log-odds (clicks): start at the base rate."""
    y = np.asarray(data.split("train")[1], dtype=np.float64)
    if data.target == "binary":
        p = float(np.clip(y.mean(), 1e-4, 1 - 1e-4))
        b0 = float(np.log(p / (1 - p)))
    else:
        b0 = float(y.mean())
    with torch.no_grad():
        model.bias.fill_(b0)


def search_lr(cfg: TrainConfig, data, trials: int) -> float:
    """The learning rate with the best validation metric over ``trials`` Optuna (TPE) trials."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    key, higher_better = primary(data.target)
    kind = "fwfm" if cfg.model == "pruned" else cfg.model  # pruned: tune the FwFM it starts from

    def objective(trial) -> float:
        trial_cfg = dataclasses.replace(cfg, lr=trial.suggest_float("lr", 1e-4, 3e-2, log=True),
                                        epochs=min(cfg.epochs, cfg.lr_search_epochs), progress=False)
        torch.manual_seed(cfg.seed)
        model = build(kind, data.preprocessor.schema, data.preprocessor.vocab.n_features, cfg.embed_dim,
                      None if kind in ("fm", "fwfm") else cfg.rank, cfg.embedding, _embedding_opts(cfg, data))
        init_bias(model, data)
        _, hist = train_model(model, trial_cfg, data, desc=f"lr trial {trial.number}")
        scores = [h[key] for h in hist["history"]]
        return max(scores) if higher_better else min(scores)

    study = optuna.create_study(direction="maximize" if higher_better else "minimize",
                                sampler=optuna.samplers.TPESampler(seed=cfg.seed))
    study.optimize(objective, n_trials=trials)
    return float(study.best_params["lr"])


def fit(cfg: TrainConfig, data, out_dir) -> dict:
    """Train ``cfg.model`` on ``data``, write the run directory ``out_dir``; returns metrics.json."""
    cfg.validate()
    torch.set_num_threads(cfg.threads)
    rank, _ = init_distributed()
    started = time.perf_counter()
    if cfg.lr_search:
        cfg = dataclasses.replace(cfg, lr=search_lr(cfg, data, cfg.lr_search))
    torch.manual_seed(cfg.seed)
    schema, n = data.preprocessor.schema, data.preprocessor.vocab.n_features
    extra = {}
    if cfg.model == "pruned":
        if cfg.prune_from:  # a trained FwFM from another run
            base, base_cfg, _ = checkpoint.load(cfg.prune_from)
            if base.kind != "fwfm" or base.n_features != n or base.schema != schema:
                raise ValueError(f"{cfg.prune_from}: not an FwFM trained on this data set's encoding")
        else:  # train the FwFM first
            base = build("fwfm", schema, n, cfg.embed_dim, None, cfg.embedding, _embedding_opts(cfg, data))
            init_bias(base, data)
            base, base_hist = train_model(base, cfg, data, desc="fwfm")
            extra["base_fwfm"] = {"valid": evaluate_split(base, data, "valid"), **base_hist}
        model = PrunedFwFM.from_fwfm(base, cfg.rank)
        desc = f"pruned rho={cfg.rank} fine-tune"
    else:
        model = build(cfg.model, schema, n, cfg.embed_dim, cfg.rank, cfg.embedding, _embedding_opts(cfg, data))
        init_bias(model, data)
        desc = cfg.model if cfg.rank is None else f"{cfg.model} rho={cfg.rank}"
    if cfg.model == "pruned" and not cfg.finetune:
        hist = {"best_epoch": 0, "epochs_run": 0, "history": []}
    else:
        model, hist = train_model(model, cfg, data, desc=desc)
    metrics = {
        "model": cfg.model, "rank": cfg.rank, "embed_dim": cfg.embed_dim, "dataset": cfg.dataset,
        "lr": cfg.lr, "target": data.target,
        "valid": evaluate_split(model, data, "valid"), "test": evaluate_split(model, data, "test"),
        "n_params": int(sum(p.numel() for p in model.parameters())),
        "train_seconds": round(time.perf_counter() - started, 3), **hist, **extra,
    }
    if rank == 0:
        checkpoint.save(out_dir, model, cfg, data.preprocessor, metrics)
    _barrier()
    return metrics
