"""training/generate.py: files, truth.json vs the oracle, Zipf frequencies, reproducibility."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from adrank.cli import main
from adrank.core.schema import Schema
from tests import naive
from training import data as D
from training.generate import generate
from training.metrics import auc, logloss

SMALL = dict(rows=3000, vocab=300, fields=6, context_fields=3, embed_dim=4, rank=2, multi_max=3, chunk_rows=1000)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "small"
    generate(out, seed=5, progress=False, **SMALL)
    return out


def _rows(out):
    with gzip.open(out / "data.tsv.gz", "rt") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        return header, [line.rstrip("\n").split("\t") for line in fh]


def test_files_schema_and_truth(small):
    assert {p.name for p in small.iterdir()} == {"data.tsv.gz", "schema.json", "planted.npz", "truth.json"}
    schema = Schema.from_dict(json.loads((small / "schema.json").read_text()))
    assert schema.m == 6 and schema.m_context == 3 and schema.target == "binary"
    assert schema.fields[-1].type == "multi" and schema.fields[-1].role == "item"
    truth = json.loads((small / "truth.json").read_text())
    assert truth["rows"] == 3000 and truth["split_seed"] == 0
    assert sum(truth[s]["rows"] for s in D.SPLITS) == 3000
    header, rows = _rows(small)
    assert header == ["label"] + [f.name for f in schema.fields] and len(rows) == 3000
    p = np.load(small / "planted.npz")
    assert p["emb"].shape == (300, 4) and p["linear"].shape == (300,) and p["field_offsets"][-1] == 300
    # R is the paper's DPLR matrix (Eq. 10): symmetric, zero diagonal, == the oracle's rebuild
    assert np.allclose(p["R"], naive.dplr_matrix(p["U"], p["e"]), atol=1e-6)
    assert np.allclose(np.array(truth["R"]), p["R"], atol=1e-6)  # truth.json carries the planted R
    assert truth["params"]["interactions"] == "dplr"


def test_truth_matches_the_oracle_on_every_row(small):
    schema = D.schema_for("synthetic", small)
    p = dict(np.load(small / "planted.npz"))
    header, rows = _rows(small)
    offs, fo = schema.slot_offsets, p["field_offsets"]
    scores, y = [], []
    for r in rows:
        x = np.full(schema.n_slots, -1)
        for f, fld in enumerate(schema.fields):
            toks = r[1 + f].split("|")
            assert len(toks) == len(set(toks)) <= fld.max_values
            for j, t in enumerate(toks):
                name, rank = t.rsplit("_", 1)
                assert name == fld.name
                x[offs[f] + j] = fo[f] + int(rank)
        scores.append(naive.fwfm_score(x, offs, p["bias"][0], p["linear"], p["emb"], p["R"]))
        y.append(float(r[0]))
    prob, y = 1 / (1 + np.exp(-np.array(scores))), np.array(y)
    truth = json.loads((small / "truth.json").read_text())
    split = D.split_of_rows(np.arange(len(y)), 0)
    for k, s in enumerate(D.SPLITS):
        assert truth[s]["logloss"] == pytest.approx(logloss(y[split == k], prob[split == k]), abs=1e-5)
        assert truth[s]["auc"] == pytest.approx(auc(y[split == k], prob[split == k]), abs=1e-4)


def test_calibrated_ctr_and_learnable_signal(tmp_path):
    t = generate(tmp_path / "g", rows=30_000, vocab=2000, seed=1, progress=False)
    assert 0.17 < t["ctr"] < 0.23
    assert 0.7 < t["all"]["auc"] < 0.85
    c = t["ctr"]
    assert t["all"]["logloss"] < -(c * np.log(c) + (1 - c) * np.log(1 - c)) - 0.05  # beats a constant


def test_zipf_frequencies(small, tmp_path):
    out = tmp_path / "z"
    generate(out, rows=40_000, vocab=2000, fields=2, context_fields=1, multi_max=0, zipf=1.2, seed=2,
             progress=False)
    _, rows = _rows(out)
    p = np.load(out / "planted.npz")
    n0 = p["field_offsets"][1]
    counts = np.bincount([int(r[1].rsplit("_", 1)[1]) for r in rows], minlength=n0)
    assert counts.argmax() == 0 and counts[0] > counts[9] > counts[99]
    ranks = np.arange(1, 51)
    slope = np.polyfit(np.log(ranks), np.log(counts[:50]), 1)[0]
    assert slope == pytest.approx(-1.2, abs=0.15)


def test_reproducible_by_seed(small, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    generate(a, seed=5, progress=False, **SMALL)
    generate(b, seed=6, progress=False, **SMALL)
    assert _rows(a) == _rows(small)
    for k, v in np.load(small / "planted.npz").items():
        assert np.array_equal(np.load(a / "planted.npz")[k], v)
    assert _rows(b)[1] != _rows(small)[1]


def test_tokens_round_trip_through_preprocessing(small, tmp_path):
    e = D.prepare("synthetic", small, min_count=1, cache_dir=tmp_path, progress=False)
    assert sum(len(e.split(s)[1]) for s in D.SPLITS) == 3000
    _, rows = _rows(small)
    X, y = e.split("train")
    first = next(i for i, s in enumerate(D.split_of_rows(np.arange(3000), 0)) if s == 0)
    assert float(y[0]) == float(rows[first][0])
    want = e.preprocessor.encode_rows([{f.name: (v.split("|") if f.type == "multi" else v)
                                        for f, v in zip(e.schema.fields, rows[first][1:], strict=True)}])
    assert np.array_equal(X[0], want[0]) and (X[0, :5] >= 0).all()


def test_clustered_embeddings(tmp_path):
    generate(tmp_path / "c", rows=2000, vocab=3000, fields=3, context_fields=1, clusters=8, seed=3,
             progress=False)
    p = np.load(tmp_path / "c" / "planted.npz")
    cl, cen, emb, fo = p["cluster"], p["centroids"], p["emb"], p["field_offsets"]
    assert (cl[fo[:-1][:, None] + np.arange(8)] == -1).all()  # the 8 most popular per field: head
    tail = np.flatnonzero(cl >= 0)
    field = np.searchsorted(fo, tail, side="right") - 1
    dist = np.linalg.norm(emb[tail] - cen[field, cl[tail]], axis=1)
    spread = np.linalg.norm(cen[0, 0] - cen[0, 1:], axis=1).mean()
    assert np.median(dist) < 0.3 * spread


def test_cli(tmp_path, capsys):
    assert main(["generate", "--out", str(tmp_path / "g"), "--rows", "500", "--vocab", "100",
                 "--fields", "4", "--context-fields", "2", "--plain", "--quiet"]) == 0
    assert (tmp_path / "g" / "data.tsv").is_file()
    assert json.loads(capsys.readouterr().out)["test"]["rows"] > 0
    assert main(["generate", "--out", str(tmp_path / "h"), "--fields", "3", "--context-fields", "3"]) == 2
    assert "context_fields" in capsys.readouterr().err and not (tmp_path / "h").exists()


def test_eigen_signs(small, tmp_path):
    assert (np.load(small / "planted.npz")["e"] < 0).any()  # default "mixed": R indefinite
    generate(tmp_path / "p", rows=200, vocab=40, fields=4, context_fields=2, rank=3, signs="positive",
             progress=False)
    p = np.load(tmp_path / "p" / "planted.npz")
    assert (p["e"] > 0).all() and p["U"].shape == (3, 4)
    with pytest.raises(ValueError, match="signs must be"):
        generate(tmp_path / "q", rows=200, vocab=40, fields=4, context_fields=2, signs="neg", progress=False)
    assert not (tmp_path / "q").exists()


def test_weights_fade_with_rarity(tmp_path):
    norms = {}
    for decay in (0.0, 0.5):
        generate(tmp_path / f"d{decay}", rows=500, vocab=2000, fields=2, context_fields=1, multi_max=0,
                 decay=decay, progress=False)
        p = np.load(tmp_path / f"d{decay}" / "planted.npz")
        e = np.linalg.norm(p["emb"][: p["field_offsets"][1]], axis=1)  # field 0, by popularity rank
        norms[decay] = e[:10].mean() / e[400:].mean()
    assert 0.7 < norms[0.0] < 1.4  # even
    assert norms[0.5] > 5  # (1+p)^-0.5: ranks 0-9 vs 400+ differ ~8x


@pytest.mark.parametrize("kind", ["block", "sparse"])
def test_other_interactions_score_like_the_oracle(tmp_path, kind):
    """block / sparse: truth.json's metrics are the oracle's FwFM with the planted R, and R has
    the promised structure (block: group-pair means plus noise, full rank; sparse: few pairs)."""
    out = tmp_path / kind
    kw = dict(SMALL, rows=1500, fields=8, context_fields=4)
    truth = generate(out, seed=3, progress=False, interactions=kind, groups=3, noise=0.2, pairs=5, **kw)
    p = dict(np.load(out / "planted.npz"))
    R = p["R"].astype(np.float64)
    assert np.array_equal(R, R.T) and not np.diag(R).any() and np.allclose(np.array(truth["R"]), R, atol=1e-6)
    assert "U" not in p and truth["params"]["interactions"] == kind
    off = ~np.eye(8, dtype=bool)
    if kind == "block":
        g = p["group"]
        assert sorted(set(g.tolist())) == [0, 1, 2]
        same = np.equal.outer(g, g) & off
        assert np.linalg.matrix_rank(R) == 8  # full rank: not a low-rank model
        # each group pair's entries scatter around one strength: within-pair spread ~ the noise
        spread = [R[np.ix_(g == a, g == b)][off[np.ix_(g == a, g == b)]].std()
                  for a in range(3) for b in range(3) if (same if a == b else ~same)[np.ix_(g == a, g == b)].any()]
        assert max(spread) < 0.6
    else:
        assert np.count_nonzero(np.triu(R, 1)) == 5 and (np.abs(R[R != 0]) >= 1).all()
    schema = D.schema_for("synthetic", out)
    header, rows = _rows(out)
    offs, fo = schema.slot_offsets, p["field_offsets"]
    scores, y = [], []
    for r in rows:
        x = np.full(schema.n_slots, -1)
        for f in range(schema.m):
            for j, t in enumerate(r[1 + f].split("|")):
                x[offs[f] + j] = fo[f] + int(t.rsplit("_", 1)[1])
        scores.append(naive.fwfm_score(x, offs, p["bias"][0], p["linear"], p["emb"], R))
        y.append(float(r[0]))
    prob, y = 1 / (1 + np.exp(-np.array(scores))), np.array(y)
    assert truth["all"]["logloss"] == pytest.approx(logloss(y, prob), abs=1e-5)
    assert truth["all"]["auc"] == pytest.approx(auc(y, prob), abs=1e-4) and truth["all"]["auc"] > 0.6


def test_bad_interaction_options_are_named(tmp_path):
    with pytest.raises(ValueError, match="interactions must be"):
        generate(tmp_path / "a", rows=100, vocab=40, fields=4, context_fields=2, interactions="dense", progress=False)
    with pytest.raises(ValueError, match="groups"):
        generate(tmp_path / "b", rows=100, vocab=40, fields=4, context_fields=2, interactions="block", groups=9,
                 progress=False)
    with pytest.raises(ValueError, match="pairs"):
        generate(tmp_path / "c", rows=100, vocab=40, fields=4, context_fields=2, interactions="sparse", pairs=7,
                 progress=False)
    assert not any((tmp_path / n).exists() for n in "abc")
