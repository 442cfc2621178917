"""`adrank train --embedding lightfm|xlightfm`: flags, memory in metrics.json, export, PQ init.

Scores of the exported artifact are checked against the checkpoint's torch model on the same
encoded rows; memory against ``training.quantize.embedding_memory`` of the saved sizes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from adrank.cli import main
from training import checkpoint
from training.data import prepare
from training.generate import generate
from training.quantize import embedding_memory, lightfm_sizes, memory_for
from training.train import TrainConfig, predict
from training.xlightfm import field_options

D, K, CANDS = 2, 16, (8, 16, 32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("cb")
    generate(root / "gen", rows=2000, vocab=300, fields=6, context_fields=3, seed=3, progress=False)
    data = prepare("synthetic", root / "gen", min_count=2, cache_dir=root / "cache", progress=False)
    return root, data


def _train(root, out, *extra) -> dict:
    argv = ["train", "--dataset", "synthetic", "--data", str(root / "gen"), "--model", "dplr", "--rank", "2",
            "--out", str(out), "--epochs", "1", "--batch-size", "256", "--lr", "1e-2", "--min-count", "2",
            "--cache-dir", str(root / "cache"), "--quiet", *extra]
    assert main(argv) == 0
    return json.loads((out / "metrics.json").read_text())


def _export_matches_torch(root, run, data, tmp_path):
    from service.ranker import Ranker

    assert main(["export", str(run), "--out", str(tmp_path / "a.adr"), "--quiet"]) == 0
    ranker = Ranker.load(tmp_path / "a.adr")
    model, _, _ = checkpoint.load(run)
    X = np.asarray(data.split("test")[0][:300])
    np.testing.assert_allclose(ranker.predict_encoded(X), predict(model, X, "binary"), rtol=1e-4)


def test_lightfm_run_records_memory_and_exports(ds, tmp_path, capsys):
    root, data = ds
    off = data.preprocessor.vocab.id_offsets
    assert any(lightfm_sizes(off, K)), "the data must have a field larger than K to quantize"
    m = _train(root, tmp_path / "run", "--embedding", "lightfm", "--codebooks", str(D), "--codewords", str(K))
    printed = json.loads(capsys.readouterr().out)
    want = memory_for("lightfm", off, 8, codebooks=D, codewords=K)["embedding_mb"]
    dense = memory_for("dense", off, 8)["embedding_mb"]
    assert m["embedding"] == "lightfm" and m["embedding_init"] == "random"
    assert m["embedding_mb"] == pytest.approx(want) and m["dense_embedding_mb"] == pytest.approx(dense)
    assert m["embedding_mb"] < m["dense_embedding_mb"] and printed["embedding_mb"] == m["embedding_mb"]
    model, _, _ = checkpoint.load(tmp_path / "run")
    ids = np.asarray(data.split("train")[0]).ravel()
    counts = np.bincount(ids[ids >= 0], minlength=model.n_features)
    np.testing.assert_array_equal(model.embedding.popularity.numpy(), counts)  # Eq. 5 weights: train split
    _export_matches_torch(root, tmp_path / "run", data, tmp_path)


def test_xlightfm_fits_the_budget_and_exports(ds, tmp_path):
    root, data = ds
    off = data.preprocessor.vocab.id_offsets
    n_f = np.diff(off)
    cheapest = embedding_memory(off, 8, [field_options(int(n), 8, D, CANDS)[0] for n in n_f], D)["embedding_mb"]
    dense = memory_for("dense", off, 8)["embedding_mb"]
    budget = cheapest + 0.3 * (dense - cheapest)
    m = _train(root, tmp_path / "run", "--embedding", "xlightfm", "--codebooks", str(D), "--candidates",
               ",".join(map(str, CANDS)), "--memory-budget-mb", str(budget), "--search-steps", "30")
    s = m["xlightfm_search"]
    assert m["embedding_init"] == "xlightfm-search"
    assert m["embedding_mb"] <= budget and s["peak_mb"] <= budget and m["embedding_mb"] < m["dense_embedding_mb"]
    assert m["embedding_mb"] == pytest.approx(embedding_memory(off, 8, s["sizes"], D)["embedding_mb"])
    model, cfg, _ = checkpoint.load(tmp_path / "run")
    assert model.embedding.sizes == s["sizes"] and cfg["embedding_opts"]["sizes"] == s["sizes"]
    _export_matches_torch(root, tmp_path / "run", data, tmp_path)


def test_init_from_dense_run_uses_pq(ds, tmp_path, monkeypatch):
    root, data = ds
    m = _train(root, tmp_path / "dense")
    assert m["embedding"] == "dense" and m["embedding_mb"] == m["dense_embedding_mb"]
    dense, _, _ = checkpoint.load(tmp_path / "dense")
    seen = {}
    import training.quantize as q

    real = q.pq_init

    def spy(table, *a, **kw):
        seen["table"] = torch.as_tensor(np.asarray(table)).clone()
        seen["books"] = real(table, *a, **kw)
        return seen["books"]

    monkeypatch.setattr(q, "pq_init", spy)
    cfg = TrainConfig(dataset="synthetic", model="dplr", rank=2, epochs=1, embedding="lightfm",
                      embedding_opts={"codebooks": D, "codewords": K}, reg_lambda=1.0, lr=1e-2,
                      init_from=str(tmp_path / "dense"), progress=False, min_count=2)
    from training.train import build, prepare_embedding

    model = build("dplr", data.preprocessor.schema, data.preprocessor.vocab.n_features, 8, 2, "lightfm",
                  {**cfg.embedding_opts, "id_offsets": list(data.preprocessor.vocab.id_offsets)})
    info = prepare_embedding(model, cfg, data)
    assert info["embedding_init"] == "pq"
    torch.testing.assert_close(seen["table"], dense.embedding.table().detach())  # k-means of the dense table
    torch.testing.assert_close(model.embedding.weight.detach(), dense.embedding.table().detach())
    for f, C in enumerate(seen["books"]):
        if C is not None:
            torch.testing.assert_close(model.embedding.codebooks[model.embedding.slot[f]].detach(), C)
    rest = {k: v for k, v in dense.state_dict().items() if not k.startswith("embedding.")}
    assert rest and all(torch.equal(model.state_dict()[k], v) for k, v in rest.items())  # the rest copied
    # and through the CLI
    m = _train(root, tmp_path / "pq", "--embedding", "lightfm", "--codebooks", str(D), "--codewords", str(K),
               "--init-from", str(tmp_path / "dense"))
    assert m["embedding_init"] == "pq" and m["init_from"] == str(tmp_path / "dense")


@pytest.mark.parametrize("flags, needle", [
    (["--codewords", "16"], "only apply to --embedding lightfm/xlightfm"),
    (["--embedding", "lightfm", "--memory-budget-mb", "1"], "only apply to --embedding xlightfm"),
    (["--embedding", "xlightfm"], "needs --memory-budget-mb"),
    (["--embedding", "xlightfm", "--memory-budget-mb", "1", "--codewords", "16"], "--codewords does not apply"),
    (["--embedding", "xlightfm", "--memory-budget-mb", "1e-9", "--search-steps", "1"], "below the smallest"),
    (["--embedding", "lightfm", "--init-from", "/nonexistent/run"], "not a run directory"),
    (["--embedding", "lightfm", "--codebooks", "3"], "multiple of the number of codebooks"),
])
def test_bad_combinations_are_named(ds, tmp_path, capsys, flags, needle):
    root, _ = ds
    argv = ["train", "--dataset", "synthetic", "--data", str(root / "gen"), "--model", "dplr", "--rank", "2",
            "--out", str(tmp_path / "run"), "--epochs", "1", "--min-count", "2", "--cache-dir",
            str(root / "cache"), "--quiet", *flags]
    assert main(argv) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.json").exists()
