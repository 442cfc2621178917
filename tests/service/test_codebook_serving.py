"""Codebook (LightFM / xLightFM) artifacts served with in-loop decoding (xlightfm.md Sec. 3).

For every kind: the codebook artifact's kernels (``score``, ``score_rows``), the Ranker and the
catalog precompute equal the dense path on the decoded table (``training.quantize.decode_arrays``,
the reference decoder) and tests/naive.py on that table; the export -> read round trip of a
codebook model trained a few steps; corrupted / missing codebook arrays raise named artifact
errors; code widths 1..16 through the kernel.
"""

from __future__ import annotations

import numpy as np
import pytest

from adrank.core import artifact as A
from adrank.core import kinds
from adrank.core.preprocess import Preprocessor, Vocab
from adrank.core.schema import Field, Schema
from exporter.export import export_params
from service.catalog.precompute import ad_parts, context_part, make_plan
from service.kernels.registry import make_scorer
from service.ranker import Ranker
from tests import naive
from tests.exporter.test_export import SCHEMA, random_rows, toy_params, toy_preprocessor

quantize = pytest.importorskip("training.quantize")  # the reference decoder (and torch) for the oracle
KINDS = kinds.EMBEDDED  # every kind with embeddings (a codebook needs a table)
RTOL, ATOL = 1e-4, 1e-4  # float32 kernels vs the float64 oracle (as tests/service/test_kernels.py)
SAME = dict(rtol=1e-6, atol=1e-6)  # codebook vs dense kernels: same float32 math


def codebook_params(pre: Preprocessor, sizes, k=8, D=2, seed=0) -> dict:
    """Random arrays in the ``CodebookEmbedding.export_arrays()`` contract (sizes[f] = 0: dense)."""
    rng = np.random.default_rng(seed)
    off = pre.vocab.id_offsets
    m, kd = len(sizes), k // D
    base, dense_base = np.full((m, D), -1, np.int64), np.full(m, -1, np.int64)
    codes = np.zeros((int(off[-1]), D), np.int64)
    W = n_dense = 0
    for f, K in enumerate(sizes):
        lo, hi = int(off[f]), int(off[f + 1])
        if K:
            base[f] = W + K * np.arange(D)
            W += D * K
            codes[lo:hi] = rng.integers(0, K, size=(hi - lo, D))
        else:
            dense_base[f] = n_dense
            n_dense += hi - lo
    return {"codebooks": rng.normal(scale=0.7, size=(W, kd)).astype(np.float32),
            "codebook_base": base, "codebook_sizes": np.asarray(sizes, np.int64),
            "code_bits": np.array([max(1, (K - 1).bit_length()) if K else 0 for K in sizes], np.int64),
            "codes": codes.astype(np.uint16 if max(sizes) > 256 else np.uint8),
            "dense_rows": rng.normal(scale=0.7, size=(n_dense, k)).astype(np.float32),
            "dense_base": dense_base}


def model(kind, tmp_path, seed=0, sizes=(5, 3, 0, 0, 4, 2), k=8, D=2):
    """(codebook artifact, dense artifact of the decoded table, unfolded params with that table)."""
    pre = toy_preprocessor(seed)
    cb = codebook_params(pre, list(sizes), k, D, seed)
    params = {**toy_params(kind, pre.vocab.n_features, SCHEMA.m, k=k, seed=seed), **cb}
    params["emb"] = quantize.decode_arrays(cb, pre.vocab.id_offsets)
    config = {"kind": kind, "embedding": "lightfm", "rank": 2, "embed_dim": k}
    art = A.read_artifact(export_params(params, config, pre, tmp_path / f"{kind}-cb.adrk").path)
    dense = A.read_artifact(export_params(params, config, pre, tmp_path / f"{kind}-d.adrk",
                                          dense_embeddings=True).path)
    return art, dense, params, pre


def split(X):
    c = SCHEMA.slot_offsets[SCHEMA.m_context]
    return X[0, :c], X[:, c:]


@pytest.mark.parametrize("kind", KINDS)
def test_codebook_kernels_equal_dense_and_naive_on_the_decoded_table(tmp_path, kind):
    art, dense, params, pre = model(kind, tmp_path)
    assert art.manifest["embedding"]["type"] == "codebook" and "emb" not in art.arrays
    cb, dn = make_scorer(art.manifest, art.arrays), make_scorer(dense.manifest, dense.arrays)
    X = random_rows(pre, n_rows=60, seed=1)
    want = naive.scores(kind, X, SCHEMA.slot_offsets, params)
    np.testing.assert_allclose(cb.score_rows(X), dn.score_rows(X), **SAME)
    np.testing.assert_allclose(cb.score_rows(X), want, rtol=RTOL, atol=ATOL)
    ctx, items = split(X)
    X_ctx = X.copy()
    X_ctx[:, : len(ctx)] = ctx  # every candidate under the first row's context
    np.testing.assert_allclose(cb.score(ctx, items), dn.score(ctx, items), **SAME)
    np.testing.assert_allclose(cb.score(ctx, items), naive.scores(kind, X_ctx, SCHEMA.slot_offsets, params),
                               rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind", KINDS)
def test_ranker_and_catalog_serve_codebook_artifacts(tmp_path, kind):
    art, dense, params, pre = model(kind, tmp_path, seed=3)
    ranker = Ranker.load(art.path)
    assert ranker.info()["embedding"] == "codebook"
    X = random_rows(pre, n_rows=30, seed=4)
    want = naive.scores(kind, X, SCHEMA.slot_offsets, params)
    got = ranker.predict_encoded(X)
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-want)), rtol=RTOL, atol=ATOL)
    ctx, items = split(X)
    for arrays in (art.arrays, dense.arrays):
        plan = make_plan(kind, SCHEMA, arrays)
        W, c = ad_parts(plan, items, arrays.get("emb"), arrays["linear"])
        z, const = context_part(plan, ctx, arrays.get("emb"), arrays["linear"])
        cat = const + c + W.astype(np.float64) @ z.astype(np.float64)
        np.testing.assert_allclose(cat, ranker.scorer.score(ctx, items), rtol=RTOL, atol=ATOL)


def test_ranker_rank_equals_dense_ranker(tmp_path):
    art, dense, params, pre = model("dplr", tmp_path, seed=5)
    a, b = Ranker.load(art.path), Ranker.load(dense.path)
    rng = np.random.default_rng(0)
    ctx = {"user": "x", "age": 3, "tags": ["p", "q"]}
    ads = [{"id": f"a{i}", "features": {"ad": f"v{rng.integers(9)}", "cats": ["c1"], "slot": "s"}} for i in range(20)]
    ra, rb = a.rank(ctx, ads), b.rank(ctx, ads)
    assert [i for i, _ in ra] == [i for i, _ in rb]
    np.testing.assert_allclose([s for _, s in ra], [s for _, s in rb], **SAME)


def test_export_reports_paper_memory_and_real_bytes(tmp_path):
    art, dense, _, pre = model("fm", tmp_path)
    emb = art.manifest["embedding"]
    mem = quantize.embedding_memory(pre.vocab.id_offsets, 8, list(emb["K"]), emb["D"])
    assert emb["paper_mb"]["embedding_mb"] == pytest.approx(mem["embedding_mb"], rel=1e-5)
    names = A.EMBEDDING_ARRAYS["codebook"]
    assert emb["stored_bytes"] == sum(art.arrays[n].nbytes for n in names)
    assert emb["dense_fields"] == ["tags", "ad"] and emb["bits"] == [3, 2, 0, 0, 2, 1]
    assert art.arrays["code_stream"].dtype == np.uint32  # packed, not one int per code
    from exporter.describe import describe

    text = describe(art)
    assert "embedding_mb=" in text and str(emb["stored_bytes"]) in text


@pytest.mark.parametrize("problem", ["missing", "big_code", "bits", "base", "dense_base", "D"])
def test_corrupted_codebook_arrays_raise_named_errors(tmp_path, problem):
    art, *_ = model("fm", tmp_path)
    arrays = {n: np.array(a) for n, a in art.arrays.items()}
    manifest = {**art.manifest, "embedding": dict(art.manifest["embedding"])}
    want = A.BadArray
    if problem == "missing":
        del arrays["code_stream"]
        want = A.MissingArray
    elif problem == "big_code":  # field 0 has K=5 at 3 bits: code 7 is out of its codebook
        w = int(arrays["code_word_base"][0])
        arrays["code_stream"][w] |= np.uint32(0b111 << 3)  # code (0, 1): bits 3..5 of the field's stream
    elif problem == "bits":
        arrays["code_bits"][1] = 5
    elif problem == "base":
        arrays["codebook_base"][4, 1] = len(arrays["codebooks"]) - 1
    elif problem == "dense_base":
        arrays["dense_base"][2] = len(arrays["dense_rows"])
    else:
        manifest["embedding"]["sub_dim"] = 3
        want = (A.BadArray, A.BadManifest)
    with pytest.raises(want) as e:
        A.write_artifact(tmp_path / "bad.adrk", manifest, arrays)
    assert e.value.code in ("missing_array", "bad_array", "bad_manifest")
    assert {"missing": "code_stream", "big_code": "holds code 7", "bits": "code_bits 5",
            "base": "codebook_base[4, 1]", "dense_base": "dense-kept field 2", "D": "codebooks"}[problem] in str(e.value)
    assert not (tmp_path / "bad.adrk").exists()


def test_codebook_round_trip_of_a_trained_model(tmp_path):
    torch = pytest.importorskip("torch")
    from training.models import build

    pre = toy_preprocessor()
    n = pre.vocab.n_features
    opts = {"id_offsets": pre.vocab.id_offsets.tolist(), "codebooks": 2, "codewords": 3, "seed": 0}
    net = build("dplr", SCHEMA, n, 8, rank=2, embedding="lightfm", embedding_opts=opts)
    X = torch.as_tensor(random_rows(pre, n_rows=64, seed=2)).long()
    y = torch.rand(64).round()
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(X), y) + net.embedding.regularizer()
        loss.backward()
        opt.step()
    params = net.export_arrays()
    art = A.read_artifact(export_params(params, {**net.describe(), "kind": "dplr"}, pre, tmp_path / "t.adrk").path)
    assert art.manifest["embedding"]["method"] == "lightfm" and "emb" not in art.arrays
    with torch.no_grad():
        want = net(X).double().numpy()
    got = make_scorer(art.manifest, art.arrays).score_rows(X.numpy().astype(np.int32))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("bits", range(1, 17))
def test_every_code_width_through_the_kernel(tmp_path, bits):
    K = 2 if bits == 1 else 2 ** (bits - 1) + 1  # the smallest codebook needing `bits` bits
    n_item = K + 3
    schema = Schema("w", (Field("u"), Field("ad", role="item")))
    rng = np.random.default_rng(bits)
    pre = Preprocessor(schema, Vocab.from_kept([rng.integers(0, 2**63, size=3, dtype=np.uint64),
                                                 rng.integers(0, 2**63, size=n_item - 2, dtype=np.uint64)]))
    cb = codebook_params(pre, [0, K], k=4, D=2, seed=bits)
    off = pre.vocab.id_offsets
    cb["codes"][off[1]] = K - 1  # the largest code is exercised
    params = {"bias": np.zeros(1, np.float32), "linear": rng.normal(size=int(off[-1])).astype(np.float32), **cb}
    params["emb"] = quantize.decode_arrays(cb, off)
    art = A.read_artifact(export_params(params, {"kind": "fm", "embedding": "lightfm", "embed_dim": 4}, pre,
                                        tmp_path / "w.adrk").path)
    assert art.manifest["embedding"]["bits"] == [0, bits]
    sc = make_scorer(art.manifest, art.arrays)
    items = rng.integers(off[1], off[2], size=(300, 1)).astype(np.int32)
    items[:2, 0] = [off[1], off[2] - 1]
    ctx = np.array([1], np.int32)
    X = np.concatenate([np.full((len(items), 1), 1, np.int32), items], axis=1)
    np.testing.assert_allclose(sc.score(ctx, items), naive.scores("fm", X, schema.slot_offsets, params),
                               rtol=RTOL, atol=ATOL)


def test_catalog_model_from_a_codebook_ranker(tmp_path):
    from service.catalog.store import Model

    art, dense, params, pre = model("pruned", tmp_path, seed=6)
    ranker = Ranker.load(art.path)
    cat = Model.from_ranker(ranker)
    assert cat.arrays["emb"] is None  # nothing dense is built: rows are decoded per ad batch
    X = random_rows(pre, n_rows=25, seed=7)
    ctx, items = split(X)
    W, c = cat.parts(items)
    z, const = context_part(cat.plan, ctx, cat.arrays["emb"], cat.arrays["linear"])
    got = const + c + W.astype(np.float64) @ z.astype(np.float64)
    X_ctx = X.copy()
    X_ctx[:, : len(ctx)] = ctx
    np.testing.assert_allclose(got, naive.scores("pruned", X_ctx, SCHEMA.slot_offsets, params), rtol=RTOL, atol=ATOL)


def test_cli_export_of_a_codebook_run_prints_paper_and_real_sizes(tmp_path, monkeypatch, capsys):
    from adrank.cli import main
    from tests.exporter.test_export import _fake_checkpoint

    pre = toy_preprocessor()
    cb = codebook_params(pre, [5, 3, 0, 0, 4, 2])
    params = {**toy_params("fm", pre.vocab.n_features, SCHEMA.m, k=8), **cb,
              "emb": quantize.decode_arrays(cb, pre.vocab.id_offsets)}
    run = tmp_path / "run"
    run.mkdir()
    _fake_checkpoint(monkeypatch, params, {"kind": "fm", "embedding": "lightfm", "embed_dim": 8}, pre)
    assert main(["export", str(run), "--out", str(tmp_path / "m.adrk"), "--quiet"]) == 0
    text = capsys.readouterr().out
    art = A.read_artifact(tmp_path / "m.adrk")
    emb = art.manifest["embedding"]
    for piece in ("embedding=codebook", "embedding_mb=", f"stored embedding arrays {emb['stored_bytes']} bytes",
                  f"whole file {art.nbytes} bytes", "dense fields: tags, ad", "code_stream"):
        assert piece in text, piece
