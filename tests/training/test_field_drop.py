"""training/field_drop.py: a field subset of an encoded data set equals encoding the raw rows with
the subset's own preprocessing; the drop-fields experiment drops the least important fields."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adrank.cli import main
from training import data as D
from training.data import encode_chunk, read_raw
from training.field_drop import FieldSubset
from training.generate import generate
from training.splits import Splitter, write_split


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    root = tmp_path_factory.mktemp("fd")
    generate(root / "gen", rows=1500, vocab=150, fields=6, context_fields=2, seed=3, progress=False)
    return root


def test_subset_equals_encoding_raw_rows_with_the_subset_preprocessing(gen, tmp_path):
    data = D.prepare("synthetic", gen / "gen", min_count=2, cache_dir=gen / "cache", progress=False)
    sub = FieldSubset(data, [0, 2, 3, 5])
    assert [f.name for f in sub.schema.fields] == ["f0", "f2", "f3", "f5"] and sub.schema.m_context == 1
    write_split("synthetic", gen / "gen", tmp_path / "test", Splitter("random", 0), "test")
    cols, y = next(read_raw("synthetic", tmp_path / "test", chunk_rows=10**6))
    want = encode_chunk(sub.preprocessor, {n: cols[n] for n in ("f0", "f2", "f3", "f5")}, len(y))
    X, ys = sub.split("test")
    assert np.array_equal(X, want) and np.array_equal(ys, y)
    assert X.max() < sub.n_features and sub.n_features < data.n_features
    with pytest.raises(ValueError, match="item field"):
        FieldSubset(data, [0, 1])


@pytest.mark.slow
def test_drop_fields_experiment(gen, tmp_path):
    out = tmp_path / "out"
    assert main(["experiment", "drop-fields", "--dataset", "synthetic", "--data", str(gen / "gen"), "--out", str(out),
                 "--ranks", "2", "--embed-dims", "4", "--drops", "0", "2", "--epochs", "1", "--min-count", "2",
                 "--cache-dir", str(gen / "cache"), "--quiet"]) == 0
    s = json.loads((out / "drop-fields-synthetic.json").read_text())
    imp = s["importance"]
    assert s["order"] == sorted(imp, key=lambda n: (imp[n], int(n[1:])))  # least important first
    r0, r2 = s["results"]
    assert r0["dropped"] == 0 and r0["m"] == 6 and r2["dropped_fields"] == s["order"][:2] and r2["m"] == 4
    assert all(r["ns_per_candidate"] > 0 and 0.5 < r["test"]["auc"] <= 1 for r in s["results"])
    md = (out / "drop-fields-synthetic.md").read_text()
    assert "adrank experiment drop-fields" in md and "ns / candidate" in md
