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
    """`adrank experiment paper-table`: every cell is the seed mean of its runs' test metrics."""
    import csv

    gen = tmp_path / "gen"
    generate(gen, rows=2500, vocab=200, fields=6, context_fields=2, seed=2, progress=False)
    out, runs = tmp_path / "out", tmp_path / "runs"
    assert main(["experiment", "paper-table", "--dataset", "synthetic", "--data", str(gen), "--out", str(out),
                 "--runs-dir", str(runs), "--embed-dims", "4", "--ranks", "1", "2", "--seeds", "0", "1",
                 "--epochs", "1", "--min-count", "2", "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    md = (out / "paper-table-synthetic.md").read_text()
    assert "adrank experiment paper-table --dataset synthetic" in md.split("```")[1]
    lines = (out / "paper-table-synthetic.csv").read_text().splitlines()
    assert lines[0].startswith("# adrank experiment paper-table")
    table = list(csv.DictReader(lines[1:]))
    assert [(r["metric"], r["rank"]) for r in table] == [("auc", "1"), ("auc", "2"), ("logloss", "1"), ("logloss", "2")]
    m = 6  # 15 pairs: rho = 1, 2 keep 7 and 14 of them
    for r in table:
        rho, metric = int(r["rank"]), r["metric"]
        assert float(r["sparsity_pct"]) == pytest.approx(round(100 * 2 * rho * (m + 1) / (m * (m - 1)), 1))
        for kind in ("fm", "fwfm", "fwfm_ft", "dplr", "pruned"):  # seed means of the runs' metrics.json
            name = f"{kind}{rho}" if kind in ("dplr", "pruned") else kind
            vals = [json.loads((runs / f"k4-s{s}-{name}" / "metrics.json").read_text())["test"][metric]
                    for s in (0, 1)]
            assert float(r[kind]) == pytest.approx(np.mean(vals), rel=1e-5)
        dplr, pruned = float(r["dplr"]), float(r["pruned"])
        better = dplr > pruned if metric == "auc" else dplr < pruned
        assert (float(r["dplr_vs_pruned_pct"]) > 0) == better
        assert r["verdict"] in ("DPLR better", "pruned better", "tie (within seed noise)")
        if r["verdict"] != "tie (within seed noise)":
            assert (r["verdict"] == "DPLR better") == better
    from training import checkpoint

    pruned, _, _ = checkpoint.load(runs / "k4-s0-pruned1")
    assert int(pruned.mask.sum()) == 2 * min(m + 1, m * (m - 1) // 2)
    control, _, _ = checkpoint.load(runs / "k4-s0-fwfm_ft")  # fine-tuned with every pair kept
    assert int(control.mask.sum()) == m * (m - 1)
