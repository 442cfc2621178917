"""The trainer: Adam over memory-mapped mini-batches, early stopping on the validation split.

Read top to bottom:
    fit(cfg, data, out_dir)        the entry point: optional tuning, pruning, test metrics, checkpoint
    train_model(model, cfg, data)  the loop: epochs -> shuffled batches -> validation -> patience
    predict(model, X, target)      probabilities (binary) or predictions (regression), in chunks

``data`` is a ``training.data.EncodedData`` (or anything with ``preprocessor``, ``target`` and
``split(name) -> (X int32[N, S], y float32[N])``).  Protocol of the DPLR-FwFM paper, Sec. 5.1:
80/10/10 splits, hyper-parameters tuned with Optuna on the validation split (training/tune.py),
LogLoss/AUC (MSE for ratings).  The batch loss adds the L2 penalties of adrank/core/train_config.py:
``emb_reg`` and ``lin_reg`` on what the batch looked up, ``interaction_reg`` on R (or U, e);
the field-interaction parameters train at ``interaction_lr``.

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

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from adrank.core.train_config import EMBEDDING_KINDS, TrainConfig  # noqa: F401 (re-exported: the trainer's API)
from training import checkpoint
from training.metrics import primary, report
from training.models import PrunedFwFM, build


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
    """Adam: the field-interaction parameters at ``cfg.interaction_lr``, the rest at ``cfg.lr``."""
    names = set(getattr(model, "interaction_params", ()))
    inter = [p for n, p in model.named_parameters() if n in names]
    rest = [p for n, p in model.named_parameters() if n not in names]
    groups = [{"params": rest, "lr": cfg.lr}]
    if inter:
        groups.append({"params": inter, "lr": cfg.interaction_lr})
    # fused: one kernel per parameter instead of ~10 passes over it; the same Adam, and on a
    # 1M-feature table 15x cheaper per step (0.03 s instead of 0.4 s at k = 32, one thread)
    return torch.optim.Adam(groups, lr=cfg.lr, fused=True)


def _feature_weights(X, n: int) -> np.ndarray:
    """1 / training count of every feature id (1 for ids the training split never holds)."""
    from training.quantize import feature_counts

    return 1.0 / np.maximum(feature_counts(X, n), 1).astype(np.float64)


def train_model(model, cfg: TrainConfig, data, desc: str = "train", on_epoch=None,
                penalty_scale=None) -> tuple[torch.nn.Module, dict]:
    """Train ``model`` in place; returns (model with the best validation weights, history).

    ``on_epoch(epoch, valid_metrics)``, when given, is called after each validation (the tuner's
    pruning hook: it may raise to abandon the run).  ``penalty_scale`` (float [n_features]), when
    given, multiplies every feature's looked-up L2 weight from ``cfg.l2_scale`` (a prior known
    from elsewhere, e.g. benchmarks/recovery_floor.py's planted one: each feature's relative
    prior precision)."""
    rank, world = init_distributed()
    X, y = data.split("train")
    if len(y) < world:
        raise ValueError(f"the training split has {len(y)} rows: too few to train on")
    loss_fn = torch.nn.BCEWithLogitsLoss() if data.target == "binary" else torch.nn.MSELoss()
    key, higher_better = primary(data.target)
    net = torch.nn.parallel.DistributedDataParallel(model, forward_sync_buffers=False) if world > 1 else model
    opt = _optimizer(model, cfg)
    if hasattr(model, "set_penalty_weights"):
        w = _feature_weights(X, model.n_features) if cfg.l2_scale == "feature" else None
        if penalty_scale is not None:
            w = np.asarray(penalty_scale, dtype=np.float64) * (1.0 if w is None else w)
        model.set_penalty_weights(w)
    bs = max(1, cfg.batch_size // world)
    best, best_state, best_epoch, bad, history = None, None, 0, 0, []
    base_lrs = [g["lr"] for g in opt.param_groups]
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        for g, lr0 in zip(opt.param_groups, base_lrs, strict=True):
            g["lr"] = lr0 * cfg.lr_decay ** (epoch - 1)
        perm = np.random.default_rng([cfg.seed, epoch]).permutation(len(y))
        mine = perm[: len(perm) - len(perm) % world][rank::world]  # this process's shard
        bar = tqdm(range(0, len(mine), bs), desc=f"{desc} epoch {epoch}/{cfg.epochs}", leave=False,
                   disable=None if cfg.progress and rank == 0 else True, unit="batch")
        total, seen = 0.0, 0
        for s in bar:
            idx = np.sort(mine[s:s + bs])  # sorted: sequential reads from the memmap
            xb = torch.from_numpy(np.asarray(X[idx], dtype=np.int64))
            yb = torch.from_numpy(np.asarray(y[idx], dtype=np.float32))
            out, emb_sq, lin_sq, inter_sq = net(xb, penalty=True)
            fit_loss = loss_fn(out, yb)
            loss = fit_loss + cfg.emb_reg * emb_sq + cfg.lin_reg * lin_sq + cfg.interaction_reg * inter_sq
            if cfg.codebook_lambda and hasattr(model.embedding, "regularizer"):
                loss = loss + cfg.codebook_lambda * model.embedding.regularizer()
            if not torch.isfinite(loss):
                raise ValueError(f"{desc}: training diverged (loss {loss.item()}) in epoch {epoch}; lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, seen = total + fit_loss.item() * len(idx), seen + len(idx)
            bar.set_postfix(loss=f"{total / seen:.4f}")
        valid = evaluate_split(model, data, "valid")
        history.append({"epoch": epoch, "train_loss": total / max(seen, 1), **valid})
        if rank == 0 and cfg.progress:
            tqdm.write(f"{desc} epoch {epoch}: train loss {total / max(seen, 1):.4f} "
                       + " ".join(f"valid {k} {v:.4f}" for k, v in valid.items()))
        if on_epoch is not None:
            on_epoch(epoch, valid)
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


def new_model(cfg: TrainConfig, data, kind: str | None = None, warm=None) -> tuple[torch.nn.Module, dict]:
    """A freshly initialised model of ``kind`` (default ``cfg.model``; "pruned" builds its FwFM)
    seeded by ``cfg.seed``, the bias at the base rate; returns (model, embedding-init facts)."""
    kind = kind or ("fwfm" if cfg.model == "pruned" else cfg.model)
    torch.manual_seed(cfg.seed)
    model = build(kind, data.preprocessor.schema, data.preprocessor.vocab.n_features, cfg.embed_dim,
                  cfg.rank if kind in ("dplr", "pruned") else None, cfg.embedding, _embedding_opts(cfg, data),
                  init=cfg.interaction_init)
    init_bias(model, data)
    return model, prepare_embedding(model, cfg, data, warm)


# --- codebook embeddings (LightFM / xLightFM, issue 4) ---------------------------------------
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
                          batch_size=cfg.batch_size, lr=cfg.lr, lam=cfg.codebook_lambda,
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
    if emb is None:  # logistic regression: no embedding table at all
        return {"embedding": "none", "embedding_mb": 0.0, "dense_embedding_mb": 0.0, "compression": None}
    dense = embedding_memory(off, k)
    mem = embedding_memory(off, k, emb.sizes, emb.D) if hasattr(emb, "sizes") else dense
    return {"embedding": model.embedding_kind, "embedding_mb": mem["embedding_mb"],
            "dense_embedding_mb": dense["embedding_mb"], "embedding_memory": mem,
            "compression": dense["embedding_mb"] / mem["embedding_mb"]}


def fit(cfg: TrainConfig, data, out_dir) -> dict:
    """Train ``cfg.model`` on ``data``, write the run directory ``out_dir``; returns metrics.json.

    With ``cfg.tune`` the hyper-parameters come from Optuna trials on the validation split
    (training/tune.py; every trial is a full training run, the best trial's model is kept, the
    trials are written to ``out_dir/tuning.json``).  "pruned" trains (and tunes) an FwFM first,
    or takes ``cfg.prune_from``, keeps its rho(m+1) largest |R_ij| and, unless ``finetune`` is
    off, trains again with the mask at the FwFM's hyper-parameters.
    """
    cfg.validate()
    torch.set_num_threads(cfg.threads)
    rank, _ = init_distributed()
    started = time.perf_counter()
    schema, n = data.preprocessor.schema, data.preprocessor.vocab.n_features
    extra, tuning = {}, None
    if cfg.embedding == "xlightfm" and "sizes" not in cfg.embedding_opts:  # search first: sizes fixed after
        cfg, extra["xlightfm_search"], warm = search_sizes(cfg, data, _embedding_opts(cfg, data))
    else:
        warm = None
    if cfg.model == "pruned" and cfg.prune_from:  # a trained FwFM from another run
        base, base_cfg, _ = checkpoint.load(cfg.prune_from)
        if base.kind != "fwfm" or base.n_features != n or base.schema != schema:
            raise ValueError(f"{cfg.prune_from}: not an FwFM trained on this data set's encoding")
        for name in ("lr", "interaction_lr", "emb_reg", "lin_reg", "interaction_reg"):
            if name in base_cfg:  # fine-tune at the hyper-parameters the FwFM was trained with
                cfg = dataclasses.replace(cfg, **{name: base_cfg[name]})
    else:
        if cfg.tune:
            from training.tune import tune

            model, hist, cfg, tuning = tune(cfg, data, cfg.tune, new_model, train_model, warm=warm)
        else:
            model, init = new_model(cfg, data, warm=warm)
            extra.update(init)
            desc = cfg.model if cfg.rank is None else f"{cfg.model} rho={cfg.rank}"
            model, hist = train_model(model, cfg, data, desc="fwfm" if cfg.model == "pruned" else desc)
        if cfg.model == "pruned":
            base = model
            extra["base_fwfm"] = {"valid": evaluate_split(base, data, "valid"), **hist}
    if cfg.model == "pruned":
        model = PrunedFwFM.from_fwfm(base, cfg.rank)
        if cfg.finetune:
            model, hist = train_model(model, cfg, data, desc=f"pruned rho={cfg.rank} fine-tune")
        else:
            hist = {"best_epoch": 0, "epochs_run": 0, "history": []}
    metrics = {
        "model": cfg.model, "rank": cfg.rank, "embed_dim": model.embed_dim, "dataset": cfg.dataset,
        "lr": cfg.lr, "interaction_lr": cfg.interaction_lr, "emb_reg": cfg.emb_reg, "lin_reg": cfg.lin_reg,
        "interaction_reg": cfg.interaction_reg, "target": data.target,
        "valid": evaluate_split(model, data, "valid"), "test": evaluate_split(model, data, "test"),
        "n_params": int(sum(p.numel() for p in model.parameters())),
        "train_seconds": round(time.perf_counter() - started, 3), **hist, **extra,
        **memory_metrics(model, data),
    }
    if getattr(data, "info", None):
        metrics["data"] = data.info  # where the rows came from and how they were split
    if tuning is not None:
        metrics["tuning"] = {k: tuning[k] for k in ("trials", "best_trial", "best_params", "space")}
    if rank == 0:
        checkpoint.save(out_dir, model, cfg, data.preprocessor, metrics)
        if tuning is not None:
            from adrank.core.files import write_json

            write_json(os.path.join(out_dir, "tuning.json"), tuning)
    barrier()
    return metrics
