"""`adrank evaluate`: a raw file scored with the model's own preprocessing (run dir or artifact)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adrank.cli import main
from training.data import prepare
from training.evaluate import evaluate_run
from training.generate import generate
from training.metrics import auc, logloss
from training.train import TrainConfig, fit, predict


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ev")
    generate(root / "gen", rows=3000, vocab=400, fields=6, context_fields=3, seed=1, progress=False)
    data = prepare("synthetic", root / "gen", min_count=3, cache_dir=root / "cache", progress=False)
    fit(TrainConfig(dataset="synthetic", model="dplr", rank=2, epochs=2, lr=1e-2, batch_size=256,
                    min_count=3, progress=False), data, root / "run")
    return root, data


def test_run_dir_metrics_equal_scoring_the_encoded_splits(trained):
    root, data = trained
    got = evaluate_run(root / "run", "synthetic", root / "gen")
    from training import checkpoint

    model, _, _ = checkpoint.load(root / "run")
    ys, ps = [], []
    for name in ("train", "valid", "test"):  # the same rows, encoded by prepare()
        X, y = data.split(name)
        ys.append(np.asarray(y))
        ps.append(predict(model, X, "binary"))
    y, p = np.concatenate(ys), np.concatenate(ps)
    assert got["rows"] == 3000 == len(y)
    assert got["auc"] == pytest.approx(auc(y, p), abs=1e-9)
    assert got["logloss"] == pytest.approx(logloss(y, p), abs=1e-9)


def test_cli_writes_json_and_names_bad_input(trained, tmp_path, capsys):
    root, _ = trained
    out = tmp_path / "m.json"
    assert main(["evaluate", str(root / "run"), "--dataset", "synthetic", "--data", str(root / "gen"),
                 "--json", str(out), "--max-rows", "500"]) == 0
    m = json.loads(out.read_text())
    assert m["rows"] == 500 and {"auc", "logloss"} <= set(m)
    assert main(["evaluate", str(tmp_path / "nope"), "--dataset", "synthetic", "--data", str(root / "gen")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    # a run trained on other fields: a clear mismatch error, not a crash
    assert main(["evaluate", str(root / "run"), "--dataset", "criteo", "--data", str(root / "gen")]) == 2


def test_artifact_path_uses_the_serving_ranker(trained, tmp_path):
    pytest.importorskip("service.ranker", reason="service/ranker.py not written yet")
    from exporter.export import export_run

    root, _ = trained
    export_run(root / "run", tmp_path / "model.adrk", progress=False)
    out = tmp_path / "a.json"
    assert main(["evaluate", str(tmp_path / "model.adrk"), "--dataset", "synthetic",
                 "--data", str(root / "gen"), "--json", str(out)]) == 0
    art = json.loads(out.read_text())
    ref = evaluate_run(root / "run", "synthetic", root / "gen")
    assert art["rows"] == ref["rows"]
    assert art["auc"] == pytest.approx(ref["auc"], abs=1e-5)
    assert art["logloss"] == pytest.approx(ref["logloss"], abs=1e-5)


def test_paper_table_experiment_writes_consistent_tables(tmp_path):
    """`adrank experiment paper-table`: every cell is the seed mean (and sd) of its runs' test metrics,
    the paired test is computed from the per-seed differences, the pruned variants are what they say."""
    import csv

    from training import checkpoint, stats

    gen = tmp_path / "gen"
    generate(gen, rows=2500, vocab=200, fields=6, context_fields=2, seed=2, progress=False)
    out, runs = tmp_path / "out", tmp_path / "runs"
    assert main(["experiment", "paper-table", "--dataset", "synthetic", "--data", str(gen), "--out", str(out),
                 "--runs-dir", str(runs), "--embed-dims", "4", "--ranks", "1", "2", "--seeds", "0", "1",
                 "--epochs", "1", "--min-count", "2", "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    md = (out / "paper-table-synthetic.md").read_text()
    assert "adrank experiment paper-table --dataset synthetic" in md.split("```")[1]
    assert "planted model itself scores" in md and "Learned R vs planted R" in md
    floor = md[md.index("Against the floor"):].splitlines()
    lr_auc = np.mean([json.loads((runs / f"k4-s{s}-lr" / "metrics.json").read_text())["test"]["auc"] for s in (0, 1)])
    assert f"vs LR {lr_auc:.4f}" in floor[2] and floor[2].startswith("- auc:")
    lines = (out / "paper-table-synthetic.csv").read_text().splitlines()
    assert lines[0].startswith("# adrank experiment paper-table")
    table = list(csv.DictReader(lines[1:]))
    assert [(r["metric"], r["rank"]) for r in table] == [("auc", "1"), ("auc", "2"), ("logloss", "1"), ("logloss", "2")]
    m = 6  # 15 pairs: rho = 1, 2 keep 7 and 14 of them

    def test_metric(name, seed, metric):
        return json.loads((runs / f"k4-s{seed}-{name}" / "metrics.json").read_text())["test"][metric]

    for r in table:
        rho, metric = int(r["rank"]), r["metric"]
        assert float(r["sparsity_pct"]) == pytest.approx(round(100 * 2 * rho * (m + 1) / (m * (m - 1)), 1))
        vals = {}
        for kind in ("lr", "fm", "fwfm", "fwfm_ft", "dplr", "pruned", "pruned_ft"):
            name = f"{kind}{rho}" if kind in ("dplr", "pruned", "pruned_ft") else kind
            vals[kind] = [test_metric(name, s, metric) for s in (0, 1)]
            assert float(r[kind]) == pytest.approx(np.mean(vals[kind]), rel=1e-5)
            assert float(r[f"{kind}_sd"]) == pytest.approx(np.std(vals[kind], ddof=1), rel=1e-4, abs=1e-9)
        sign = 1 if metric == "auc" else -1
        for other in ("pruned", "pruned_ft"):
            test = stats.paired([sign * (a - b) for a, b in zip(vals["dplr"], vals[other], strict=True)])
            assert r[f"vs_{other}_verdict"] == stats.verdict(test)
            if test["p"] is not None:
                assert float(r[f"vs_{other}_p"]) == pytest.approx(test["p"], rel=1e-4)
    summary = json.loads((out / "paper-table-synthetic.json").read_text())
    assert len(summary["runs"]) == 2 * (1 + 3 + 2 * 3) and summary["facts"]["split"] == "random"
    assert all(r["pearson_R"] is not None for r in summary["runs"] if r["kind"] in ("fwfm", "dplr"))
    fwfm, _, _ = checkpoint.load(runs / "k4-s0-fwfm")
    pruned, _, _ = checkpoint.load(runs / "k4-s0-pruned1")  # the paper's code: pruned, not retrained
    a, b = fwfm.export_arrays(), pruned.export_arrays()
    assert int(pruned.mask.sum()) == 2 * min(m + 1, m * (m - 1) // 2)
    assert np.array_equal(a["emb"], b["emb"]) and np.array_equal(np.where(b["mask"], a["R"], 0), b["R"])
    assert json.loads((runs / "k4-s0-pruned1" / "metrics.json").read_text())["epochs_run"] == 0
    ft, _, _ = checkpoint.load(runs / "k4-s0-pruned_ft1")
    assert np.array_equal(ft.mask.numpy(), pruned.mask.numpy()) and not np.array_equal(ft.export_arrays()["emb"], a["emb"])
    control, _, _ = checkpoint.load(runs / "k4-s0-fwfm_ft")  # fine-tuned with every pair kept
    assert int(control.mask.sum()) == m * (m - 1)
    # --resume with one more seed: the finished runs are reused, only seed 2's are trained
    before = {p.parent.name: p.stat().st_mtime_ns for p in runs.glob("k4-s0-*/model.pt")}
    assert len(before) == 1 + 3 + 2 * 3  # lr, fm, fwfm, fwfm_ft and three of each rank
    assert main(["experiment", "paper-table", "--dataset", "synthetic", "--data", str(gen), "--out", str(out),
                 "--runs-dir", str(runs), "--embed-dims", "4", "--ranks", "1", "2", "--seeds", "0", "1", "2",
                 "--epochs", "1", "--min-count", "2", "--cache-dir", str(tmp_path / "cache"), "--quiet",
                 "--resume"]) == 0
    assert {p.parent.name: p.stat().st_mtime_ns for p in runs.glob("k4-s0-*/model.pt")} == before
    again = json.loads((out / "paper-table-synthetic.json").read_text())
    assert len(again["runs"]) == 3 * 10 and (runs / "k4-s2-pruned_ft2" / "metrics.json").is_file()
    assert [r["test"] for r in again["runs"][:10]] == [r["test"] for r in summary["runs"][:10]]
