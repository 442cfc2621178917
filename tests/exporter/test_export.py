"""exporter/: folding is exact, every kind, with multi-valued fields; the CLI end to end.

Scores are recomputed from the *artifact's* arrays by ``artifact_score`` below, a literal
evaluator written from the artifact semantics (docs/artifact-format.md "Scoring semantics"),
and compared with tests/naive.py on the unfolded parameters.
"""

from __future__ import annotations

import json
import sys
import time
import types

import numpy as np
import pytest

from adrank.cli import main
from adrank.core.artifact import read_artifact
from adrank.core.preprocess import PAD, Preprocessor, Vocab
from adrank.core.schema import Field, Schema
from exporter.export import ExportError, export_params
from exporter.fold import kept_pairs
from tests import naive

SCHEMA = Schema("toy", (
    Field("user"), Field("age", "numeric"), Field("tags", "multi", "context", max_values=3),
    Field("ad", role="item"), Field("cats", "multi", "item", max_values=2), Field("slot", role="item"),
))


def toy_preprocessor(seed=0) -> Preprocessor:
    rng = np.random.default_rng(seed)
    kept = [rng.integers(0, 2**63, size=s, dtype=np.uint64) for s in (6, 3, 5, 0, 4, 2)]
    return Preprocessor(SCHEMA, Vocab.from_kept(kept))


def toy_params(kind, n, m, k=4, rho=2, seed=0) -> dict:
    """Random parameters in the export_arrays() contract (float32)."""
    rng = np.random.default_rng(seed)
    p = {"bias": rng.normal(size=1).astype(np.float32),
         "linear": rng.normal(size=n).astype(np.float32),
         "emb": rng.normal(scale=0.7, size=(n, k)).astype(np.float32)}
    if kind == "lr":  # no embeddings: bias and linear weights only
        del p["emb"]
        return p
    R = rng.normal(size=(m, m))
    R = ((R + R.T) / 2 * (1 - np.eye(m))).astype(np.float32)
    if kind == "fwfm":
        p["R"] = R
    elif kind == "pruned":
        mask = naive.prune_mask(R, rho)
        p.update(R=np.where(mask, R, 0).astype(np.float32), mask=mask)
    elif kind == "dplr":
        p.update(U=rng.normal(size=(rho, m)).astype(np.float32), e=rng.normal(size=rho).astype(np.float32))
    return p


def random_rows(pre: Preprocessor, n_rows=40, seed=0) -> np.ndarray:
    """Encoded rows: any id of each field (missing and rare included), multi fields 1..max values."""
    rng = np.random.default_rng(seed)
    offs, ids = SCHEMA.slot_offsets, pre.vocab.id_offsets
    X = np.full((n_rows, SCHEMA.n_slots), PAD, dtype=np.int32)
    for r in range(n_rows):
        for f, fld in enumerate(SCHEMA.fields):
            lo, hi = int(ids[f]), int(ids[f + 1])
            cnt = rng.integers(1, min(fld.max_values, hi - lo) + 1)
            X[r, offs[f] : offs[f] + cnt] = rng.choice(np.arange(lo, hi), size=cnt, replace=False)
    return X


def artifact_score(art, x) -> float:
    """One row's raw score from the artifact alone, by the format's scoring semantics:
    b + sum_f mean(linear) + pairwise, where pairwise is
      fm:     1/2 (||sum_f v_f||^2 + sum_f d_f ||v_f||^2)
      dplr:   1/2 (sum_f d_f ||v_f||^2 + sum_r e_r ||sum_f U_rf v_f||^2)
      pruned: sum_p pair_r[p] <v_{pair_i[p]}, v_{pair_j[p]}>
      fwfm:   sum_{i<j} R_ij <v_i, v_j>
      lr:     none (no embedding table)
    with v_f the mean embedding of field f's non-PAD ids."""
    a, mf = art.arrays, art.manifest
    offs = art.schema.slot_offsets
    m = len(offs) - 1
    V = np.zeros((m, mf["embed_dim"]))
    s = float(a["bias"][0])
    for f in range(m):
        ids = [int(t) for t in x[offs[f] : offs[f + 1]] if t != PAD]
        if mf["kind"] != "lr":
            V[f] = np.mean([a["emb"][t].astype(np.float64) for t in ids], axis=0)
        s += np.mean([float(a["linear"][t]) for t in ids])
    if mf["kind"] == "lr":
        assert "emb" not in a and mf["embed_dim"] == 0
        return s
    sq = [float(v @ v) for v in V]
    if mf["kind"] == "fm":
        return s + 0.5 * (float(V.sum(0) @ V.sum(0)) + sum(float(a["d"][f]) * sq[f] for f in range(m)))
    if mf["kind"] == "dplr":
        P = a["U"].astype(np.float64) @ V
        return s + 0.5 * (sum(float(a["d"][f]) * sq[f] for f in range(m))
                          + sum(float(a["e"][r]) * float(P[r] @ P[r]) for r in range(len(a["e"]))))
    if mf["kind"] == "pruned":
        return s + sum(float(r) * float(V[i] @ V[j]) for i, j, r in zip(a["pair_i"], a["pair_j"], a["pair_r"],
                                                                         strict=True))
    return s + sum(float(a["R"][i, j]) * float(V[i] @ V[j]) for i in range(m) for j in range(i + 1, m))


def export(tmp_path, kind, params, pre, name="m.adrk", **config):
    info = export_params(params, {"kind": kind, **config}, pre, tmp_path / name)
    return read_artifact(info.path)


@pytest.mark.parametrize("kind", ["lr", "fm", "fwfm", "pruned", "dplr"])
def test_folded_artifact_scores_equal_the_oracle(tmp_path, kind):
    pre = toy_preprocessor()
    params = toy_params(kind, pre.vocab.n_features, SCHEMA.m)
    art = export(tmp_path, kind, params, pre, rank=2)
    X = random_rows(pre)
    got = np.array([artifact_score(art, x) for x in X])
    want = naive.scores(kind, X, SCHEMA.slot_offsets, params)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.ptp(want) > 1.0  # the rows really differ: a constant would not pass by luck


@pytest.mark.parametrize("kind", ["fm", "dplr"])
def test_diagonal_folded_only_for_single_valued_fields(tmp_path, kind):
    pre = toy_preprocessor()
    params = toy_params(kind, pre.vocab.n_features, SCHEMA.m)
    art = export(tmp_path, kind, params, pre)
    multi = np.array([f.type == "multi" for f in SCHEMA.fields])
    d = art.arrays["d"]
    assert np.all(d[~multi] == 0) and np.all(d[multi] != 0)
    if kind == "fm":
        assert np.all(d[multi] == -1)
    ids = pre.vocab.id_offsets
    for f in np.flatnonzero(multi):  # multi-valued fields keep their linear weights unfolded
        lo, hi = ids[f], ids[f + 1]
        assert np.array_equal(art.arrays["linear"][lo:hi], params["linear"][lo:hi])
    assert art.manifest["rank"] == (2 if kind == "dplr" else None)


def test_pruned_pairs_are_block_ordered_and_all_pairs_equal_fwfm(tmp_path):
    pre = toy_preprocessor()
    n, m, mc = pre.vocab.n_features, SCHEMA.m, SCHEMA.m_context
    params = toy_params("pruned", n, m)
    art = export(tmp_path, "pruned", params, pre, rank=2)
    i, j = art.arrays["pair_i"], art.arrays["pair_j"]
    block = (i >= mc).astype(int) + (j >= mc)
    assert np.all(np.diff(block) >= 0) and np.all(i < j)
    assert art.manifest["n_pairs"] == len(i) == min(2 * (m + 1), m * (m - 1) // 2)
    assert art.manifest["pair_blocks"] == [int(np.sum(block == b)) for b in range(3)]
    # every pair kept: the pruned artifact scores exactly like the full FwFM artifact
    full = toy_params("fwfm", n, m)
    pr = {**full, "mask": np.ones((m, m), bool)}
    a_full = export(tmp_path, "fwfm", full, pre, name="f.adrk")
    a_pr = export(tmp_path, "pruned", pr, pre, name="p.adrk")
    X = random_rows(pre, 15, seed=3)
    np.testing.assert_allclose([artifact_score(a_pr, x) for x in X], [artifact_score(a_full, x) for x in X],
                               rtol=1e-6, atol=1e-6)


def test_kept_pairs_uses_the_upper_triangle_of_the_mask():
    R = np.arange(16, dtype=np.float32).reshape(4, 4)
    mask = np.zeros((4, 4), bool)
    mask[3, 0] = mask[0, 3] = mask[2, 3] = mask[3, 2] = mask[0, 1] = mask[1, 0] = True
    i, j, r, blocks = kept_pairs(R, mask, m_context=2)
    assert list(zip(i, j, r, strict=True)) == [(0, 1, R[0, 1]), (0, 3, R[0, 3]), (2, 3, R[2, 3])]
    assert blocks == [1, 1, 1]


@pytest.mark.parametrize("problem", ["missing", "emb_rows", "nan", "kind", "codebook", "U"])
def test_bad_parameters_are_named(tmp_path, problem):
    pre = toy_preprocessor()
    params = toy_params("dplr", pre.vocab.n_features, SCHEMA.m)
    config = {"kind": "dplr"}
    match = {"missing": "'e'", "emb_rows": "emb", "nan": "NaN", "kind": "deepfm",
             "codebook": "codebook", "U": "U"}[problem]
    if problem == "missing":
        del params["e"]
    elif problem == "emb_rows":
        params["emb"] = params["emb"][:-1]
    elif problem == "nan":
        params["linear"][3] = np.nan
    elif problem == "kind":
        config["kind"] = "deepfm"
    elif problem == "codebook":
        config["embedding"] = {"type": "codebook"}
    else:
        params["U"] = params["U"][:, :-1]
    with pytest.raises(ExportError, match=match):
        export_params(params, config, pre, tmp_path / "x.adrk")
    assert list(tmp_path.iterdir()) == []


def _fake_checkpoint(monkeypatch, params, config, pre):
    """Stand-in for training.checkpoint.load (the contract in docs/internals.md)."""

    class Model:
        def export_arrays(self):
            return params

    mod = types.ModuleType("training.checkpoint")
    mod.load = lambda run_dir: (Model(), config, pre)
    monkeypatch.setitem(sys.modules, "training.checkpoint", mod)


def test_cli_export_prints_contents_and_records_the_run(tmp_path, monkeypatch, capsys):
    pre = toy_preprocessor()
    params = toy_params("dplr", pre.vocab.n_features, SCHEMA.m)
    config = {"model": "dplr", "rank": 2, "embed_dim": 4, "lr": 0.01}
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"model": "dplr", "valid": {"auc": 0.71}}))
    _fake_checkpoint(monkeypatch, params, config, pre)
    out = tmp_path / "model.adrk"
    assert main(["export", str(run), "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    art = read_artifact(out)
    for piece in ("kind=dplr", "rank=2", "k=4", "user, age, tags[3]", "ad, cats[2], slot",
                  f"n_features={pre.vocab.n_features}", art.version, "emb", str(art.nbytes)):
        assert piece in text, piece
    src = art.manifest["source"]
    assert src["config"] == config and src["metrics"]["valid"]["auc"] == 0.71
    assert src["run_dir"] == str(run.resolve())
    assert art.manifest["schema"] == SCHEMA.to_dict() and art.manifest["target"] == "binary"


def test_two_exports_of_one_run_are_the_same_bytes_and_version(tmp_path, monkeypatch, capsys):
    """The version names the model's content: exports a wall-clock second apart are identical,
    and a change of one weight changes the version."""
    pre = toy_preprocessor()
    params = toy_params("pruned", pre.vocab.n_features, SCHEMA.m)
    config = {"model": "pruned", "rank": 2, "embed_dim": 4}
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"model": "pruned", "test": {"auc": 0.7}}))
    _fake_checkpoint(monkeypatch, params, config, pre)
    first, second = tmp_path / "a.adrk", tmp_path / "b.adrk"
    assert main(["export", str(run), "--out", str(first), "--quiet"]) == 0
    time.sleep(1.02 - time.time() % 1)  # into the next second of the clock
    assert main(["export", str(run), "--out", str(second), "--quiet"]) == 0
    capsys.readouterr()
    assert first.read_bytes() == second.read_bytes()
    assert read_artifact(first).version == read_artifact(second).version
    params["linear"][0] += 1.0
    changed = export_params(params, config, pre, tmp_path / "c.adrk").version
    assert changed != read_artifact(first).version


def test_cli_export_errors_are_user_errors(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "x.adrk")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_codebook_model_exports_decoded_table_only_when_asked(tmp_path):
    pre = toy_preprocessor()
    params = toy_params("fm", pre.vocab.n_features, SCHEMA.m)
    config = {"kind": "fm", "embedding": "lightfm"}
    with pytest.raises(ExportError, match="--dense-embeddings"):
        export_params(params, config, pre, tmp_path / "x.adrk")
    art = read_artifact(export_params(params, config, pre, tmp_path / "x.adrk", dense_embeddings=True).path)
    assert art.manifest["embedding"] == {"type": "dense", "decoded_from": "lightfm"}
    assert np.array_equal(art.arrays["emb"], params["emb"])


@pytest.mark.parametrize("kind", ["lr", "fm", "fwfm", "pruned", "dplr"])
def test_real_checkpoint_exports_to_an_artifact_scoring_like_the_torch_model(tmp_path, kind, capsys):
    torch = pytest.importorskip("torch")
    from training.checkpoint import save
    from training.models import PrunedFwFM, build

    pre = toy_preprocessor(seed=5)
    n = pre.vocab.n_features
    torch.manual_seed(0)
    model = build("fwfm" if kind == "pruned" else kind, SCHEMA, n, 4, rank=2 if kind == "dplr" else None)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    if kind == "pruned":
        model = PrunedFwFM.from_fwfm(model, rho=2)
    run = save(tmp_path / "run", model.eval(), {"lr": 0.01, "seed": 0}, pre, {"model": kind, "test": {}})
    out = tmp_path / f"{kind}.adrk"
    assert main(["export", str(run), "--out", str(out), "--quiet"]) == 0
    assert f"kind={kind}" in capsys.readouterr().out
    art = read_artifact(out)
    X = random_rows(pre, 25, seed=7)
    with torch.no_grad():
        want = model(torch.from_numpy(X)).double().numpy()
    got = np.array([artifact_score(art, x) for x in X])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert art.manifest["rank"] == (2 if kind in ("pruned", "dplr") else None)
