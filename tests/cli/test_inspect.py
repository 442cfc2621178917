"""training/interactions.py and `adrank inspect`: the effective R of every kind against the oracle's
matrices (tests/naive.py), importance invariant to DPLR's free scale, and the command on a run
directory and on its artifact (same R, same report)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adrank.cli import main
from tests import naive
from training.interactions import effective_R, importance, offdiag_pearson


def _params(kind, m, rng, rho=2):
    p = {}
    if kind in ("fwfm", "pruned"):
        A = rng.normal(size=(m, m))
        p["R"] = (np.triu(A, 1) + np.triu(A, 1).T).astype(np.float32)
        if kind == "pruned":
            p["mask"] = naive.prune_mask(p["R"], 1)
    if kind == "dplr":
        p["U"] = rng.normal(size=(rho, m)).astype(np.float32)
        p["e"] = rng.normal(size=rho).astype(np.float32)
    return p


@pytest.mark.parametrize("kind", ["lr", "fm", "fwfm", "pruned", "dplr"])
def test_effective_R_equals_the_oracle_matrix(kind):
    m = 7
    p = _params(kind, m, np.random.default_rng(1))
    want = {"lr": np.zeros((m, m)), "fm": np.ones((m, m)) - np.eye(m), "fwfm": p.get("R"),
            "pruned": np.where(p.get("mask", False), p.get("R", 0), 0.0),
            "dplr": naive.dplr_matrix(p["U"], p["e"]) if kind == "dplr" else None}[kind]
    np.testing.assert_allclose(effective_R(kind, p, m), want, rtol=1e-6, atol=1e-6)
    if kind == "pruned":  # an artifact's pair lists give the same matrix
        i, j = np.nonzero(np.triu(p["mask"], 1))
        pairs = {"pair_i": i, "pair_j": j, "pair_r": p["R"][i, j]}
        np.testing.assert_allclose(effective_R(kind, pairs, m), want, rtol=1e-6, atol=1e-6)


def test_dplr_importance_ignores_the_free_scale_and_finds_a_dead_field():
    rng = np.random.default_rng(2)
    U, e = rng.normal(size=(3, 6)), rng.normal(size=3)
    U[:, 4] = 0.0  # field 4 takes part in no interaction
    a = importance("dplr", {"U": U, "e": e}, 6)
    b = importance("dplr", {"U": 3.0 * U, "e": e / 9.0}, 6)  # the same R
    np.testing.assert_allclose(a, b, rtol=1e-12)
    assert a[4] == 0 and a.max() == 1.0
    np.testing.assert_allclose(effective_R("dplr", {"U": U, "e": e}, 6), effective_R("dplr", {"U": 3 * U, "e": e / 9}, 6))


def test_offdiag_pearson():
    rng = np.random.default_rng(3)
    A = rng.normal(size=(5, 5))
    np.fill_diagonal(A, 0)
    B = 2 * A + 1 + np.diag(rng.normal(size=5) * 100)  # the diagonal is ignored
    assert offdiag_pearson(A, B) == pytest.approx(1.0)
    assert offdiag_pearson(A, -A) == pytest.approx(-1.0)
    C = rng.normal(size=(5, 5))
    off = ~np.eye(5, dtype=bool)
    assert offdiag_pearson(A, C) == pytest.approx(np.corrcoef(A[off], C[off])[0, 1], rel=1e-12)
    with pytest.raises(ValueError, match="square"):
        offdiag_pearson(A, C[:4])


@pytest.mark.parametrize("kind,rank", [("dplr", 2), ("pruned", 1), ("lr", None)])
def test_cli_on_a_run_and_its_artifact(tmp_path, kind, rank, capsys):
    from exporter.export import export_run
    from training.data import prepare
    from training.generate import generate
    from training.train import TrainConfig, fit

    gen = tmp_path / "gen"
    generate(gen, rows=2000, vocab=120, fields=5, context_fields=2, seed=4, progress=False,
             interactions="block", groups=2)
    data = prepare("synthetic", gen, min_count=2, cache_dir=tmp_path / "cache", progress=False)
    fit(TrainConfig(dataset="synthetic", model=kind, rank=rank, epochs=1, progress=False), data, tmp_path / "run")
    export_run(tmp_path / "run", tmp_path / "m.adrk", progress=False)
    reports = {}
    for target in ("run", "m.adrk"):
        out = tmp_path / f"{target}.json"
        assert main(["inspect", str(tmp_path / target), "--json", str(out), "--plot"]) == 0
        text = capsys.readouterr().out
        assert f"kind       {kind}" in text and "f0" in text
        reports[target] = json.loads(out.read_text())
    run, art = reports["run"], reports["m.adrk"]
    assert [f["name"] for f in run["fields"]] == [f"f{i}" for i in range(5)]
    assert [f["role"] for f in run["fields"]] == ["context"] * 2 + ["item"] * 3
    np.testing.assert_allclose(run["R"], art["R"], rtol=1e-5, atol=1e-6)  # the artifact holds the same R
    planted = json.loads((gen / "truth.json").read_text())["R"]
    assert run["planted_R"] == planted  # found through the run's data source
    assert run["pearson_vs_planted_raw"] == pytest.approx(offdiag_pearson(np.array(run["R"]), np.array(planted)),
                                                          nan_ok=True)
    if kind != "lr":  # and in the planted gauge, from the run and from the artifact alike
        assert run["pearson_vs_planted"] == pytest.approx(
            offdiag_pearson(np.array(run["R_planted_gauge"]), np.array(planted)))
        assert art["pearson_vs_planted"] == pytest.approx(run["pearson_vs_planted"], abs=1e-4)
    assert run["metrics"]["test"] == json.loads((tmp_path / "run" / "metrics.json").read_text())["test"]
    assert (tmp_path / "run" / "interactions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "m-interactions.png").is_file()
    bad = tmp_path / "notes.txt.gz"
    bad.write_bytes(b"\x1f\x8b\x08 not json")
    assert main(["inspect", str(tmp_path / "run"), "--truth", str(bad)]) == 2
    assert "not a truth.json" in capsys.readouterr().err


def test_planted_gauge_undoes_per_field_scales_and_signs(tmp_path):
    """A model with the planted embeddings, each field's scaled by c_f (negative for some), and
    R_ij / (c_i c_j) is the planted model itself: the gauge finds g_ij = c_i c_j and the gauged R
    is the planted R (Pearson 1), while the raw R correlates much less."""
    from training.data import prepare
    from training.generate import generate
    from training.interactions import planted_gauge

    gen = tmp_path / "gen"
    generate(gen, rows=3000, vocab=60, fields=5, context_fields=2, multi_max=3, seed=6, progress=False,
             interactions="block", groups=2)
    pre = prepare("synthetic", gen, min_count=1, cache_dir=tmp_path / "cache", progress=False).preprocessor
    planted = dict(np.load(gen / "planted.npz"))
    c = np.array([2.0, -0.5, 1.5, -3.0, 0.7])
    emb = np.zeros((pre.vocab.n_features, planted["emb"].shape[1]))
    fo, m = planted["field_offsets"], 5
    for f, fld in enumerate(pre.schema.fields):
        for p in range(fo[f + 1] - fo[f]):
            ids = pre.encode_rows([{fld.name: [f"f{f}_{p}"] if fld.type == "multi" else f"f{f}_{p}"}])[0]
            emb[ids[pre.schema.slot_offsets[f]]] = c[f] * planted["emb"][fo[f] + p]
    g = planted_gauge({"emb": emb}, pre, gen, rows=2000)
    off = ~np.eye(m, dtype=bool)
    np.testing.assert_allclose(g[off], np.outer(c, c)[off], rtol=1e-6)
    R = planted["R"] / np.outer(c, c)
    assert offdiag_pearson(R * g, planted["R"]) == pytest.approx(1.0, abs=1e-9)
    assert offdiag_pearson(R, planted["R"]) < 0.9


def test_cli_errors_are_named(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope")]) == 2
    assert "no such run directory or artifact" in capsys.readouterr().err
    (tmp_path / "t.json").write_text("{}")
    (tmp_path / "bad.adrk").write_bytes(b"not an artifact")
    assert main(["inspect", str(tmp_path / "bad.adrk")]) == 2
