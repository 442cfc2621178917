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
    init_from: str | None = None  # a dense run directory: PQ-initialise the codebook embedding from it
    memory_budget_mb: float | None = None  # xlightfm: the search's embedding budget (Eq. 14)
    search_steps: int = 300  # xlightfm: Algorithm 1 steps
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
        _validate_embedding(self)


# --- distributed helpers -------------------------------------------------------------------
def init_distributed() -> tuple[int, int]:
    """(rank, world size); joins the torchrun process group (gloo) when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
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
    # fused: one kernel per parameter instead of ~10 passes over it; the same Adam, and on a
    # 1M-feature table 15x cheaper per step (0.03 s instead of 0.4 s at k = 32, one thread)
    return torch.optim.Adam([{"params": tables, "weight_decay": cfg.weight_decay},
                             {"params": others, "weight_decay": 0.0}], lr=cfg.lr, fused=True)


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
                   disable=None if cfg.progress and rank == 0 else True, unit="batch")
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


# --- codebook embeddings (LightFM / xLightFM, issue 4) ---------------------------------------
EMBEDDING_KINDS = ("dense", "lightfm", "xlightfm")


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
    if cfg.reg_lambda < 0:
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


def search_sizes(cfg: TrainConfig, data, opts: dict):
    """xLightFM Algorithm 1 on train/valid under ``cfg.memory_budget_mb``; returns (cfg with the
    selected per-field ``sizes``, a summary for metrics.json, the ``SearchResult`` warm start)."""
    from training.quantize import feature_counts
    from training.xlightfm import CANDIDATES, search_xlightfm

    schema, n = data.preprocessor.schema, data.preprocessor.vocab.n_features
    X, y = data.split("train")

    def factory():
        model = build(cfg.model, schema, n, cfg.embed_dim, cfg.rank)  # the search swaps in its embedding
        init_bias(model, data)
        return model

    res = search_xlightfm(factory, {"train": (X, y), "valid": data.split("valid")}, cfg.memory_budget_mb,
                          id_offsets=opts["id_offsets"], codebooks=opts.get("codebooks", 4),
                          candidates=tuple(opts.get("candidates", CANDIDATES)), steps=cfg.search_steps,
                          batch_size=cfg.batch_size, lr=cfg.lr, lam=cfg.reg_lambda,
                          tau_decay=1.0 / cfg.search_steps, counts=feature_counts(X, n), target=data.target,
                          seed=cfg.seed, progress=cfg.progress)
    kept = {k: v for k, v in cfg.embedding_opts.items() if k != "candidates"}
    cfg = dataclasses.replace(cfg, embedding_opts={**kept, "sizes": res.sizes})
    summary = {"budget_mb": cfg.memory_budget_mb, "steps": cfg.search_steps, "sizes": res.sizes,
               "embedding_mb": res.memory["embedding_mb"], "peak_mb": res.peak_mb,
               "constrained_steps": res.constrained_steps}
    return cfg, summary, res


def _same_encoding(a, b) -> bool:
    (da, xa), (db, xb) = a.to_state(), b.to_state()
    return da == db and xa.keys() == xb.keys() and all(np.array_equal(xa[k], xb[k]) for k in xa)


def prepare_embedding(model, cfg: TrainConfig, data, warm=None) -> dict:
    """Before training a codebook model: popularity f_i from the train split (Eq. 5), then the
    warm start -- the xLightFM search's weights, or PQ (k-means per subspace, Eq. 2) of the
    dense run ``cfg.init_from``.  Returns what metrics.json records about it."""
    if cfg.embedding == "dense":
        return {}
    from training.quantize import feature_counts

    emb, n = model.embedding, model.n_features
    emb.set_popularity(feature_counts(data.split("train")[0], n))
    init = "random"
    if warm is not None:  # re-train from the search (xLightFM Sec. 3.4.3)
        rest = {k: v for k, v in warm.model.state_dict().items() if not k.startswith("embedding.")}
        model.load_state_dict(rest, strict=False)
        emb.load_state_dict(warm.embedding.state_dict())
        init = "xlightfm-search"
    if cfg.init_from:
        dense, dcfg, pre = checkpoint.load(cfg.init_from)
        if dcfg.get("embedding", "dense") != "dense":
            raise ValueError(f"--init-from {cfg.init_from}: not a dense run (embedding {dcfg.get('embedding')!r})")
        if dense.embed_dim != model.embed_dim or not _same_encoding(pre, data.preprocessor):
            raise ValueError(f"--init-from {cfg.init_from}: trained with another encoding or embed_dim "
                             f"({dense.embed_dim} vs {model.embed_dim}); retrain it on this data set")
        own = model.state_dict()  # bias, linear and interaction weights too when they fit
        rest = {k: v for k, v in dense.state_dict().items()
                if not k.startswith("embedding.") and k in own and own[k].shape == v.shape}
        model.load_state_dict(rest, strict=False)
        emb.init_from_dense(dense.embedding.table().detach(), seed=cfg.seed, progress=cfg.progress)
        init = "pq"
    return {"embedding_init": init, "init_from": cfg.init_from}


def memory_metrics(model, data) -> dict:
    """Paper-style embedding memory (xLightFM Sec. 4.3) of ``model`` and of a dense table."""
    from training.quantize import embedding_memory

    off, k, emb = data.preprocessor.vocab.id_offsets, model.embed_dim, model.embedding
    dense = embedding_memory(off, k)
    mem = embedding_memory(off, k, emb.sizes, emb.D) if hasattr(emb, "sizes") else dense
    return {"embedding": model.embedding_kind, "embedding_mb": mem["embedding_mb"],
            "dense_embedding_mb": dense["embedding_mb"], "embedding_memory": mem,
            "compression": dense["embedding_mb"] / mem["embedding_mb"]}


def fit(cfg: TrainConfig, data, out_dir) -> dict:
    """Train ``cfg.model`` on ``data``, write the run directory ``out_dir``; returns metrics.json."""
    cfg.validate()
    torch.set_num_threads(cfg.threads)
    rank, _ = init_distributed()
    started = time.perf_counter()
    schema, n = data.preprocessor.schema, data.preprocessor.vocab.n_features
    extra = {}
    if cfg.embedding == "xlightfm" and "sizes" not in cfg.embedding_opts:  # search first: sizes fixed after
        cfg, extra["xlightfm_search"], warm = search_sizes(cfg, data, _embedding_opts(cfg, data))
    else:
        warm = None
    if cfg.lr_search:
        cfg = dataclasses.replace(cfg, lr=search_lr(cfg, data, cfg.lr_search))
    torch.manual_seed(cfg.seed)
    if cfg.model == "pruned":
        if cfg.prune_from:  # a trained FwFM from another run
            base, base_cfg, _ = checkpoint.load(cfg.prune_from)
            if base.kind != "fwfm" or base.n_features != n or base.schema != schema:
                raise ValueError(f"{cfg.prune_from}: not an FwFM trained on this data set's encoding")
        else:  # train the FwFM first
            base = build("fwfm", schema, n, cfg.embed_dim, None, cfg.embedding, _embedding_opts(cfg, data))
            init_bias(base, data)
            prepare_embedding(base, cfg, data, None)
            base, base_hist = train_model(base, cfg, data, desc="fwfm")
            extra["base_fwfm"] = {"valid": evaluate_split(base, data, "valid"), **base_hist}
        model = PrunedFwFM.from_fwfm(base, cfg.rank)
        desc = f"pruned rho={cfg.rank} fine-tune"
    else:
        model = build(cfg.model, schema, n, cfg.embed_dim, cfg.rank, cfg.embedding, _embedding_opts(cfg, data))
        init_bias(model, data)
        extra.update(prepare_embedding(model, cfg, data, warm))
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
        **memory_metrics(model, data),
    }
    if rank == 0:
        checkpoint.save(out_dir, model, cfg, data.preprocessor, metrics)
    barrier()
    return metrics
