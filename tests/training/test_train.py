"""The trainer and checkpoints on a tiny planted data set (memmapped .npy splits); the metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from adrank.core.preprocess import PAD, Preprocessor, Vocab
from adrank.core.schema import Field, Schema
from training import checkpoint
from training.metrics import auc, logloss
from training.train import TrainConfig, fit, predict, train_model

PER_FIELD_VALUES = 12


class PlantedData:
    """An EncodedData look-alike: splits on disk, opened with np.load(mmap_mode="r")."""

    def __init__(self, path: Path, preprocessor: Preprocessor, target: str):
        self.path, self.preprocessor, self.target = path, preprocessor, target

    def split(self, name):
        return (np.load(self.path / f"{name}_X.npy", mmap_mode="r"),
                np.load(self.path / f"{name}_y.npy", mmap_mode="r"))


def make_planted(path: Path, n_rows: int = 5000, target: str = "binary", seed: int = 0) -> PlantedData:
    """Rows from a random FwFM teacher (a multi-valued field included); labels sampled from it."""
    rng = np.random.default_rng(seed)
    fields = (Field("user", role="context"), Field("site", role="context"),
              Field("tags", "multi", role="context", max_values=3),
              Field("ad", role="item"), Field("brand", role="item"), Field("size", role="item"))
    schema = Schema("planted", fields, target=target)
    kept = [rng.integers(0, 2**63, PER_FIELD_VALUES, dtype=np.uint64) for _ in fields]
    pre = Preprocessor(schema, Vocab.from_kept(kept))
    n, m, k = pre.vocab.n_features, schema.m, 4
    ids = pre.vocab.id_offsets
    X = np.full((n_rows, schema.n_slots), PAD, dtype=np.int32)
    offs = schema.slot_offsets
    for f, fld in enumerate(fields):
        for r in range(n_rows):
            used = rng.integers(1, fld.width + 1)
            X[r, offs[f]:offs[f] + used] = rng.integers(ids[f], ids[f + 1], size=used)
    emb, lin = rng.normal(0, 0.7, (n, k)), rng.normal(0, 0.5, n)
    R = rng.normal(0, 1.0, (m, m))
    R = np.triu(R, 1) + np.triu(R, 1).T
    V = np.zeros((n_rows, m, k))
    first = np.zeros(n_rows)
    for f in range(m):
        sl = X[:, offs[f]:offs[f + 1]]
        present = sl >= 0
        cnt = present.sum(1, keepdims=True)
        V[:, f] = (emb[np.maximum(sl, 0)] * present[..., None]).sum(1) / cnt
        first += (lin[np.maximum(sl, 0)] * present).sum(1) / cnt[:, 0]
    score = first + 0.5 * np.einsum("bik,bjk,ij->b", V, V, R) - 0.5
    if target == "binary":
        y = (rng.random(n_rows) < 1 / (1 + np.exp(-score))).astype(np.float32)
    else:
        y = (score + rng.normal(0, 0.3, n_rows)).astype(np.float32)
    path.mkdir(parents=True, exist_ok=True)
    which = rng.choice(3, size=n_rows, p=[0.8, 0.1, 0.1])
    for i, name in enumerate(("train", "valid", "test")):
        np.save(path / f"{name}_X.npy", X[which == i])
        np.save(path / f"{name}_y.npy", y[which == i])
    return PlantedData(path, pre, target)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return make_planted(tmp_path_factory.mktemp("planted"))


def quick(**kw) -> TrainConfig:
    base = dict(dataset="planted", epochs=4, batch_size=256, lr=1e-2, progress=False)
    return TrainConfig(**{**base, **kw})


def test_fit_learns_planted_signal_and_writes_run(planted, tmp_path):
    metrics = fit(quick(model="fwfm"), planted, tmp_path / "run")
    Xv, yv = planted.split("valid")
    base = logloss(yv, np.full(len(yv), float(np.mean(planted.split("train")[1]))))
    assert metrics["valid"]["auc"] > 0.7
    assert metrics["valid"]["logloss"] < base - 0.03
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["model"] == "fwfm" and set(on_disk["test"]) == {"auc", "logloss"}
    for name in checkpoint.FILES:
        assert (tmp_path / "run" / name).exists(), name
    # the metrics are the checkpoint's: reload and recompute
    model, cfg, pre = checkpoint.load(tmp_path / "run")
    Xt, yt = planted.split("test")
    p = predict(model, Xt, "binary")
    assert auc(yt, p) == pytest.approx(metrics["test"]["auc"], abs=1e-9)
    assert cfg["kind"] == "fwfm" and cfg["lr"] == 1e-2 and cfg["target"] == "binary"
    assert pre.schema == planted.preprocessor.schema
    assert np.array_equal(pre.vocab.keys, planted.preprocessor.vocab.keys)


def test_same_seed_same_result(planted, tmp_path):
    a = fit(quick(model="fm", epochs=2), planted, tmp_path / "a")
    b = fit(quick(model="fm", epochs=2), planted, tmp_path / "b")
    assert a["valid"] == b["valid"] and a["test"] == b["test"]


@pytest.mark.parametrize("kind,rank", [("fm", None), ("dplr", 2)])
def test_checkpoint_round_trip_is_exact(planted, tmp_path, kind, rank):
    fit(quick(model=kind, rank=rank, epochs=1), planted, tmp_path / "run")
    model, _, _ = checkpoint.load(tmp_path / "run")
    again, _, _ = checkpoint.load(tmp_path / "run")
    X, _ = planted.split("valid")
    assert model.kind == kind and model.rank == rank
    arrays, arrays2 = model.export_arrays(), again.export_arrays()
    assert all(np.array_equal(arrays[k], arrays2[k]) for k in arrays)
    np.testing.assert_array_equal(predict(model, X, "binary"), predict(again, X, "binary"))


def test_pruned_trains_fwfm_then_fine_tunes_with_mask(planted, tmp_path):
    m = planted.preprocessor.schema.m
    metrics = fit(quick(model="pruned", rank=1, epochs=2), planted, tmp_path / "pr")
    assert "base_fwfm" in metrics and metrics["model"] == "pruned"
    model, cfg, _ = checkpoint.load(tmp_path / "pr")
    assert int(model.mask.sum()) == 2 * min(m + 1, m * (m - 1) // 2)
    R = model.export_arrays()["R"]
    assert not R[~model.mask.numpy()].any()  # fine-tuning never revived a pruned pair
    # --prune-from: prune a finished FwFM run instead of training one
    fit(quick(model="fwfm", epochs=2), planted, tmp_path / "fw")
    m2 = fit(quick(model="pruned", rank=1, epochs=1, prune_from=str(tmp_path / "fw")), planted, tmp_path / "pr2")
    assert "base_fwfm" not in m2 and m2["valid"]["auc"] > 0.6
    # without fine-tuning: exactly the FwFM with R masked
    fit(quick(model="pruned", rank=1, finetune=False, prune_from=str(tmp_path / "fw")), planted, tmp_path / "pr3")
    fw, _, _ = checkpoint.load(tmp_path / "fw")
    pr3, _, _ = checkpoint.load(tmp_path / "pr3")
    a, b = fw.export_arrays(), pr3.export_arrays()
    assert np.array_equal(a["emb"], b["emb"]) and np.array_equal(np.where(b["mask"], a["R"], 0), b["R"])


def test_early_stopping_keeps_the_best_epoch(planted):
    torch.manual_seed(0)
    from training.models import build

    pre = planted.preprocessor
    model = build("fwfm", pre.schema, pre.vocab.n_features, 8)
    model, hist = train_model(model, quick(model="fwfm", epochs=30, lr=0.05, patience=1), planted)
    losses = [h["logloss"] for h in hist["history"]]
    assert hist["epochs_run"] < 30  # overfits quickly at this lr, then stops
    assert hist["best_epoch"] == 1 + int(np.argmin(losses))
    X, y = planted.split("valid")
    assert logloss(y, predict(model, X, "binary")) == pytest.approx(min(losses), abs=1e-9)


def test_regression_target_reports_mse(tmp_path):
    data = make_planted(tmp_path / "reg", n_rows=3000, target="regression", seed=1)
    metrics = fit(quick(model="dplr", rank=1, epochs=3), data, tmp_path / "run")
    y = data.split("valid")[1]
    assert set(metrics["valid"]) == {"mse"}
    assert metrics["valid"]["mse"] < float(np.var(y))  # beats predicting the mean


@pytest.mark.parametrize("kind,rank", [("dplr", 2), ("lr", None)])
def test_tune_records_every_trial_and_keeps_the_best(planted, tmp_path, kind, rank):
    """--tune N: N trials, the first at the given values, each a full run; the model kept is the
    best trial's (its validation loss is that trial's value); the space fits the kind."""
    cfg = quick(model=kind, rank=rank, epochs=2, tune=5)
    metrics = fit(cfg, planted, tmp_path / "run")
    t = json.loads((tmp_path / "run" / "tuning.json").read_text())
    space = {"lr", "lin_reg"} | ({"emb_reg", "interaction_lr"} if kind == "dplr" else set())
    assert set(t["space"]) == space and t["trials"] == 5 and len(t["history"]) == 5
    assert t["history"][0]["params"] == {n: getattr(cfg, n) for n in space}  # trial 0: as given
    done = [h for h in t["history"] if h["state"] == "complete"]
    best = min(done, key=lambda h: h["value"])
    assert t["best_trial"] == best["number"] and t["best_value"] == best["value"]
    assert metrics["valid"]["logloss"] == pytest.approx(best["value"], abs=1e-12)
    assert {n: metrics[n] for n in space} == t["best_params"] == best["params"]
    assert all(len(h["curve"]) >= 1 for h in t["history"])
    assert metrics["tuning"]["best_trial"] == best["number"]


def test_regularisation_changes_the_fit(planted, tmp_path):
    """The L2 coefficients act: strong emb_reg shrinks the learned embeddings, strong lin_reg
    the linear weights, strong interaction_reg the interaction matrix."""
    base = fit(quick(model="dplr", rank=2, epochs=2, emb_reg=0.0, lin_reg=0.0), planted, tmp_path / "a")
    reg = fit(quick(model="dplr", rank=2, epochs=2, emb_reg=1e4, lin_reg=1e4, interaction_reg=1.0), planted,
              tmp_path / "b")
    a, _, _ = checkpoint.load(tmp_path / "a")
    b, _, _ = checkpoint.load(tmp_path / "b")
    pa, pb = a.export_arrays(), b.export_arrays()
    assert np.abs(pb["emb"]).mean() < 0.5 * np.abs(pa["emb"]).mean()
    assert np.abs(pb["linear"]).mean() < 0.5 * np.abs(pa["linear"]).mean()
    assert float((b.R.detach() ** 2).sum()) < 0.5 * float((a.R.detach() ** 2).sum())
    assert base["emb_reg"] != reg["emb_reg"] and reg["interaction_reg"] == 1.0


def test_interactions_have_their_own_learning_rate(planted, tmp_path):
    """interaction_lr moves U and e, and only them: at a tiny interaction_lr they barely leave their
    start while the embeddings train."""
    from training.models import build

    torch.manual_seed(0)
    pre = planted.preprocessor
    start = build("dplr", pre.schema, pre.vocab.n_features, 4, rank=2)
    torch.manual_seed(0)
    model = build("dplr", pre.schema, pre.vocab.n_features, 4, rank=2)
    model, _ = train_model(model, quick(model="dplr", rank=2, epochs=2, interaction_lr=1e-7, patience=5), planted)
    assert torch.allclose(model.U, start.U, atol=1e-4) and torch.allclose(model.e, start.e, atol=1e-4)
    assert not torch.allclose(model.embedding.weight, start.embedding.weight, atol=1e-3)


def test_bad_config_and_missing_checkpoint_are_named(planted, tmp_path):
    with pytest.raises(ValueError, match="rank"):
        fit(quick(model="dplr"), planted, tmp_path / "x")
    with pytest.raises(ValueError, match="takes no rank"):
        fit(quick(model="lr", rank=1), planted, tmp_path / "x")
    with pytest.raises(ValueError, match="diverged"):
        fit(quick(model="fwfm", lr=1e30, epochs=3), planted, tmp_path / "x")  # float32 overflows
    assert not (tmp_path / "x").exists()  # nothing half-written
    with pytest.raises(ValueError, match="prune-from"):
        fit(quick(model="fm", prune_from="somewhere"), planted, tmp_path / "x")
    with pytest.raises(checkpoint.CheckpointError, match="not a run directory"):
        checkpoint.load(tmp_path / "nothing")
    (tmp_path / "half").mkdir()
    with pytest.raises(checkpoint.CheckpointError, match="missing model.pt"):
        (tmp_path / "half" / "config.json").write_text("{}")
        checkpoint.load(tmp_path / "half")


def test_codebook_embedding_plugs_into_the_same_trainer(planted, tmp_path):
    """The embedding seam: a LightFM codebook table (training/quantize.py) trains and reloads."""
    pytest.importorskip("training.quantize")
    cfg = quick(model="dplr", rank=1, epochs=1, embedding="lightfm",
                embedding_opts={"codebooks": 2, "codewords": 4}, reg_lambda=0.1)
    metrics = fit(cfg, planted, tmp_path / "cb")
    model, saved, _ = checkpoint.load(tmp_path / "cb")
    assert saved["embedding"] == "lightfm" and type(model.embedding).__name__ != "DenseEmbedding"
    X, y = planted.split("test")
    assert auc(y, predict(model, X, "binary")) == pytest.approx(metrics["test"]["auc"], abs=1e-9)
    arrays = model.export_arrays()
    assert {"bias", "linear", "emb", "U", "e", "codebooks", "codes"} <= set(arrays)


def test_init_bias_starts_at_the_base_rate(planted, tmp_path):
    from training.models import build
    from training.train import init_bias

    pre = planted.preprocessor
    model = build("fm", pre.schema, pre.vocab.n_features, 4)
    init_bias(model, planted)
    rate = float(np.mean(planted.split("train")[1]))
    assert float(torch.sigmoid(model.bias.detach())) == pytest.approx(rate, rel=1e-5)
    reg = make_planted(tmp_path / "reg", n_rows=500, target="regression", seed=3)
    model = build("fm", reg.preprocessor.schema, reg.preprocessor.vocab.n_features, 4)
    init_bias(model, reg)
    assert float(model.bias.detach()) == pytest.approx(float(np.mean(reg.split("train")[1])), rel=1e-5)


def test_feature_scaled_l2_weighs_rows_by_inverse_training_count(planted):
    """l2_scale="feature": each looked-up row's penalty is divided by its feature's training count, so
    every feature carries the same penalty per epoch (a per-feature Gaussian prior)."""
    from training.models import build

    pre = planted.preprocessor
    model = build("dplr", pre.schema, pre.vocab.n_features, 4, rank=1, init="fm")
    model, _ = train_model(model, quick(model="dplr", rank=1, epochs=1, l2_scale="feature", emb_reg=1.0), planted)
    X = np.asarray(planted.split("train")[0])
    counts = np.bincount(X[X >= 0], minlength=pre.vocab.n_features)
    np.testing.assert_allclose(model.penalty_weight.numpy(), 1 / np.maximum(counts, 1), rtol=1e-6)
    model, _ = train_model(model, quick(model="dplr", rank=1, epochs=1, l2_scale="occurrence"), planted)
    assert model.penalty_weight is None  # per occurrence: no weights


def test_penalty_scale_multiplies_the_l2_scale_weights(planted):
    """train_model(penalty_scale=s): a known per-feature prior on top of l2_scale's weights."""
    from training.models import build

    pre = planted.preprocessor
    n = pre.vocab.n_features
    scale = np.linspace(0.5, 4.0, n)
    X = np.asarray(planted.split("train")[0])
    counts = np.bincount(X[X >= 0], minlength=n)
    model = build("dplr", pre.schema, n, 4, rank=1, init="fm")
    model, _ = train_model(model, quick(model="dplr", rank=1, epochs=1, l2_scale="feature"), planted, penalty_scale=scale)
    np.testing.assert_allclose(model.penalty_weight.numpy(), scale / np.maximum(counts, 1), rtol=1e-6)
    model, _ = train_model(model, quick(model="dplr", rank=1, epochs=1, l2_scale="occurrence"), planted,
                           penalty_scale=scale)
    np.testing.assert_allclose(model.penalty_weight.numpy(), scale, rtol=1e-6)
