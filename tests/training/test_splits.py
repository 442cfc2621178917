"""training/splits.py: the ordered (chronological) split, row counts, and held-out rows written back
in the input's own format (readable by the same reader, scoring to the run's test metrics)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from training import data as D
from training.generate import generate
from training.splits import Splitter, count_rows, ordered_bounds, split_of_rows, write_split


def criteo_like(path: Path, rows: int = 4000, seed: int = 0) -> None:
    """A Criteo-format file with learnable clicks: a few categorical values and counts move the logit."""
    rng = np.random.default_rng(seed)
    cats = rng.integers(0, 40, (rows, 26))
    ints = rng.poisson(3.0, (rows, 13))
    w = rng.normal(0, 0.6, (26, 40))
    logit = -1.4 + w[np.arange(26), cats].sum(1) * 0.4 + 0.1 * (ints[:, 0] - 3)
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    with gzip.open(path, "wt") as fh:
        for i in range(rows):
            ints_s = ["" if rng.random() < 0.1 else str(v) for v in ints[i]]
            fh.write("\t".join([str(y[i]), *ints_s, *(f"{0x1000 * (j + 1) + c:08x}" for j, c in enumerate(cats[i]))])
                     + "\n")


def test_ordered_split_is_file_order_80_10_10():
    s = Splitter("ordered", total=1000)
    got = np.concatenate([s.of(a, 137) for a in range(0, 1000, 137)])[:1000]
    assert (got[:800] == 0).all() and (got[800:900] == 1).all() and (got[900:] == 2).all()
    assert ordered_bounds(7) == (5, 6)
    assert np.array_equal(Splitter("random", seed=3).of(50, 20), split_of_rows(np.arange(50, 70), 3))
    with pytest.raises(ValueError, match="number of rows"):
        Splitter("ordered")
    with pytest.raises(ValueError, match="split must be"):
        Splitter("time", total=3)


def test_prepare_ordered_puts_the_last_rows_in_test(tmp_path):
    raw = tmp_path / "c.txt.gz"
    criteo_like(raw, rows=1000, seed=1)
    assert count_rows("criteo", raw) == 1000 and count_rows("criteo", raw, max_rows=300) == 300
    e = D.prepare("criteo", raw, min_count=2, cache_dir=tmp_path / "cache", progress=False, split="ordered")
    assert [len(e.split(s)[1]) for s in D.SPLITS] == [800, 100, 100]
    labels = [float(line.split("\t")[0]) for line in gzip.open(raw, "rt")]
    assert np.array_equal(e.split("test")[1], labels[900:]) and np.array_equal(e.split("train")[1], labels[:800])
    r = D.prepare("criteo", raw, min_count=2, cache_dir=tmp_path / "cache", progress=False, split="random")
    assert r.path != e.path  # the split kind is part of the cache key
    assert json.loads((e.path / "preprocess.json").read_text())["split"]["kind"] == "ordered"


@pytest.mark.parametrize("kind", ["ordered", "random"])
def test_written_test_rows_are_the_test_split(tmp_path, kind):
    raw = tmp_path / "c.txt.gz"
    criteo_like(raw, rows=700, seed=2)
    e = D.prepare("criteo", raw, min_count=2, cache_dir=tmp_path / "cache", progress=False, split=kind, seed=5)
    out = tmp_path / "held.txt.gz"
    n = write_split("criteo", raw, out, Splitter(kind, 5, 700), "test")
    X, y = D.encode_file("criteo", out, e.preprocessor)
    Xt, yt = e.split("test")
    assert n == len(yt) and np.array_equal(X, Xt) and np.array_equal(y, yt)
    plain = tmp_path / "held.txt"
    write_split("criteo", raw, plain, Splitter(kind, 5, 700), "valid")
    assert not plain.read_bytes().startswith(b"\x1f\x8b") and len(plain.read_text().splitlines()) == len(e.split("valid")[1])


def test_avazu_and_generated_keep_their_header_and_layout(tmp_path):
    header = "id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category," \
             "device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21"
    rows = [f"{i},{i % 2},14102100,1005,0,s{i % 3},d,c,a,ad,ac,dv,ip{i},m,1,0,{i % 5},320,50,1,0,35,-1,79"
            for i in range(60)]
    raw = tmp_path / "a.csv"
    raw.write_text(header + "\n" + "\n".join(rows) + "\n")
    out = tmp_path / "a-test.csv"
    n = write_split("avazu", raw, out, Splitter("ordered", total=60), "test")
    assert out.read_text().splitlines() == [header] + rows[54:] and n == 6
    gen = tmp_path / "gen"
    generate(gen, rows=400, vocab=60, fields=4, context_fields=2, seed=1, progress=False)
    held = tmp_path / "held"
    n = write_split("synthetic", gen, held, Splitter("random", 0), "test")
    e = D.prepare("synthetic", gen, min_count=1, cache_dir=tmp_path / "cache", progress=False)
    X, y = D.encode_file("synthetic", held, e.preprocessor)
    assert n == len(e.split("test")[1]) and np.array_equal(X, e.split("test")[0])


def test_cli_test_out(tmp_path, capsys):
    from adrank.cli import main

    raw = tmp_path / "c.txt.gz"
    criteo_like(raw, rows=600, seed=3)
    assert main(["train", "--dataset", "criteo", "--data", str(raw), "--model", "lr", "--out", str(tmp_path / "run"),
                 "--test-out", str(tmp_path / "held.txt.gz"), "--epochs", "1", "--min-count", "2",
                 "--cache-dir", str(tmp_path / "cache"), "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["test_out"]["rows"] == 60
    assert gzip.open(tmp_path / "held.txt.gz", "rt").read().splitlines() == \
        gzip.open(raw, "rt").read().splitlines()[540:]
