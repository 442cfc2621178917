"""The logistic-regression kind end to end: trained in torch, exported (no embedding table),
served by its kernel, from the ad catalog and over the fast path -- every score against
tests/naive.py's ``lr_score``."""

from __future__ import annotations

import numpy as np
import pytest

from adrank.core.artifact import BadManifest, read_artifact
from service.catalog import kernels
from service.catalog.precompute import ad_parts, context_part, make_plan
from service.ranker import Ranker
from tests import naive
from tests.training.test_train import make_planted
from training import checkpoint
from training.train import TrainConfig, fit, predict

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lr_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lr")
    data = make_planted(root / "data", n_rows=3000, seed=4)
    metrics = fit(TrainConfig(dataset="planted", model="lr", epochs=3, lr=1e-2, progress=False), data, root / "run")
    from exporter.export import export_run

    export_run(root / "run", root / "lr.adrk", progress=False)
    return root, data, metrics


def test_trained_lr_equals_the_oracle_and_beats_the_base_rate(lr_run):
    root, data, metrics = lr_run
    model, cfg, _ = checkpoint.load(root / "run")
    assert model.kind == "lr" and model.embedding is None and cfg["embed_dim"] == 0
    X, y = data.split("test")
    p = model.export_arrays()
    assert set(p) == {"bias", "linear"}
    raw = naive.scores("lr", X, data.preprocessor.schema.slot_offsets, p)
    np.testing.assert_allclose(predict(model, X, "binary"), 1 / (1 + np.exp(-raw)), rtol=1e-5, atol=1e-6)
    assert metrics["test"]["auc"] > 0.6 and metrics["embedding"] == "none"


def test_artifact_has_no_embedding_and_serves_like_the_oracle(lr_run):
    root, data, _ = lr_run
    art = read_artifact(root / "lr.adrk")
    assert art.manifest["kind"] == "lr" and art.manifest["embedding"] == {"type": "none"}
    assert art.manifest["embed_dim"] == 0 and "emb" not in art.arrays
    model, _, _ = checkpoint.load(root / "run")
    params = model.export_arrays()
    X, _ = data.split("test")
    schema = data.preprocessor.schema
    want = naive.scores("lr", X, schema.slot_offsets, params)
    ranker = Ranker.load(root / "lr.adrk")
    ranker.warm()
    np.testing.assert_allclose(ranker.scorer.score_rows(X), want, rtol=1e-5, atol=1e-5)
    c = schema.slot_offsets[schema.m_context]
    X1 = np.asarray(X[:50]).copy()
    X1[:, :c] = X1[0, :c]  # one context, 50 candidates: the context part once
    np.testing.assert_allclose(ranker.scorer.score(X1[0, :c], X1[:, c:]),
                               naive.scores("lr", X1, schema.slot_offsets, params), rtol=1e-5, atol=1e-5)
    # the ad catalog: score(x, a) = const_x + c_a with no vector part (D = 0)
    plan = make_plan("lr", schema, art.arrays)
    assert plan.D == 0
    W, cc = ad_parts(plan, X1[:, c:], None, art.arrays["linear"])
    z, const = context_part(plan, X1[0, :c], None, art.arrays["linear"])
    np.testing.assert_allclose(kernels.score_all(z, const, W, cc), naive.scores("lr", X1, schema.slot_offsets, params),
                               rtol=1e-5, atol=1e-5)


def test_ranked_request_and_info(lr_run):
    root, data, _ = lr_run
    ranker = Ranker.load(root / "lr.adrk")
    pre = data.preprocessor
    ctx = {"user": "x", "site": "y", "tags": ["a"]}
    ads = [{"id": f"a{i}", "features": {"ad": f"v{i}"}} for i in range(5)]
    got = ranker.rank(ctx, ads)
    X = pre.encode_rows([{**ctx, **ad["features"]} for ad in ads])
    model, _, _ = checkpoint.load(root / "run")
    raw = naive.scores("lr", X, pre.schema.slot_offsets, model.export_arrays())
    want = dict(zip((a["id"] for a in ads), 1 / (1 + np.exp(-raw)), strict=True))
    assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)
    assert all(s == pytest.approx(want[i], abs=1e-6) for i, s in got)
    assert ranker.info()["kind"] == "lr" and ranker.info()["embedding"] == "none"


def test_manifest_rules_for_lr(lr_run):
    from adrank.core.artifact import validate

    root, _, _ = lr_run
    art = read_artifact(root / "lr.adrk")
    table = {n: {"dtype": a.dtype.name, "shape": list(a.shape)} for n, a in art.arrays.items()}
    with pytest.raises(BadManifest, match="embedding type 'none'"):
        validate({**art.manifest, "embedding": {"type": "dense"}, "embed_dim": 4},
                 {**table, "emb": {"dtype": "float32", "shape": [art.manifest["n_features"], 4]}})
    with pytest.raises(BadManifest, match="embedding type 'none'"):
        validate({**art.manifest, "kind": "fm"}, {**table, "d": {"dtype": "float32", "shape": [6]}})
