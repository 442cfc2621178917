"""training/data.py: parsers on the real samples, the streaming encoder, split, cache, errors.

Expected values are recomputed independently in the tests (gzip + str.split, Counter,
datetime), never copied from the code under test.
"""

from __future__ import annotations

import datetime as dt
import gzip
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from adrank.core.hashing import hash_tokens
from adrank.core.preprocess import MISSING, N_SPECIAL, RARE, numeric_token
from training import data as D
from training.datasets.io import DataError

pytestmark = pytest.mark.data


def _raw_lines(path: Path, n: int | None = None, encoding="utf-8") -> list[str]:
    with gzip.open(path, "rt", encoding=encoding, newline="") as fh:
        out = [line.rstrip("\r\n") for line in fh]
    return out[:n] if n else out


def _collect(dataset, path, **kw):
    cols, ys = {}, []
    for c, y in D.read_raw(dataset, path, **kw):
        for k, v in c.items():
            cols.setdefault(k, []).extend(v)
        ys.append(y)
    return cols, np.concatenate(ys)


# --- parsers ---------------------------------------------------------------------------------
def test_criteo_parser_reads_sample(criteo_path):
    lines = [line.split("\t") for line in _raw_lines(criteo_path)]
    schema = D.schema_for("criteo", criteo_path)
    assert schema.m == 39 and [f.name for f in schema.fields[:13]] == [f"I{i}" for i in range(1, 14)]
    assert schema.context_fields[-1].name == "C13" and schema.item_fields[0].name == "C14"
    cols, y = _collect("criteo", criteo_path, chunk_rows=3000)
    assert len(y) == len(lines) and y.dtype == np.float32
    assert np.array_equal(y, [float(p[0]) for p in lines])
    assert set(cols) == {f.name for f in schema.fields}
    for i in range(13):
        assert cols[f"I{i + 1}"] == [int(p[1 + i]) if p[1 + i] else None for p in lines]
    for i in range(26):
        assert cols[f"C{i + 1}"] == [p[14 + i] or None for p in lines]
    assert min(v for v in cols["I2"] if v is not None) < 0  # negative ints survive
    assert any(v is None for v in cols["C22"])  # missing categoricals


def test_avazu_parser_drops_id_and_expands_hour(avazu_path):
    lines = _raw_lines(avazu_path)
    header = lines[0].split(",")
    rows = [line.split(",") for line in lines[1:]]
    schema = D.schema_for("avazu", avazu_path)
    cols, y = _collect("avazu", avazu_path, chunk_rows=1000)
    assert "id" not in cols and "hour" not in cols and set(cols) == {f.name for f in schema.fields}
    assert len(y) == len(rows) and np.array_equal(y, [float(r[header.index("click")]) for r in rows])
    assert {f.name for f in schema.item_fields} == {"banner_pos", *(f"C{i}" for i in range(14, 22))}
    for k in (0, len(rows) - 1):
        h = rows[k][header.index("hour")]
        when = dt.datetime.strptime(h, "%y%m%d%H")
        assert cols["hour_of_day"][k] == f"{when.hour:02d}"
        assert cols["day_of_week"][k] == when.strftime("%a").lower()
        assert cols["site_id"][k] == rows[k][header.index("site_id")]
        assert cols["C21"][k] == rows[k][header.index("C21")]


def test_movielens_join_genres_and_timestamps(movielens_path):
    n = 3000
    ratings = [line.split("::") for line in _raw_lines(movielens_path / "ratings.dat.gz", n)]
    users = {p[0]: p for p in (line.split("::") for line in _raw_lines(movielens_path / "users.dat.gz"))}
    movies = {p[0]: p for p in (line.split("::")
                                for line in _raw_lines(movielens_path / "movies.dat.gz", encoding="latin-1"))}
    schema = D.schema_for("movielens", movielens_path)
    assert schema.m == 11 and schema.target == "regression"
    assert [f.name for f in schema.item_fields] == ["movie_id", "genres"]
    assert schema.fields[schema.index("genres")].max_values == 6
    cols, y = _collect("movielens", movielens_path, max_rows=n, chunk_rows=700)
    assert len(y) == n and np.array_equal(y, [float(r[2]) for r in ratings])
    for k in range(0, n, 97):
        u, m, _, ts = ratings[k]
        when = dt.datetime.fromtimestamp(int(ts), dt.UTC)
        assert (cols["user_id"][k], cols["movie_id"][k]) == (u, m)
        assert [cols[f][k] for f in ("gender", "age", "occupation", "zip")] == users[u][1:]
        assert cols["genres"][k] == movies[m][2].split("|")
        assert [cols[f][k] for f in ("year", "month", "day_of_week", "hour")] == \
            [str(when.year), str(when.month), str(when.weekday()), str(when.hour)]
    assert max(len(g) for g in cols["genres"]) > 1  # genuinely multi-valued


def test_movielens_encodes_multi_field_with_pad(movielens_path, tmp_path):
    e = D.prepare("movielens", movielens_path, max_rows=4000, min_count=1, cache_dir=tmp_path, progress=False)
    X, _ = e.split("train")
    offs = e.schema.slot_offsets
    g = e.schema.index("genres")
    G = np.asarray(X[:, offs[g]:offs[g + 1]])
    assert G.shape[1] == 6 and (G[:, 0] >= 0).all()
    assert ((G == -1).sum(axis=1) > 0).any() and ((G >= 0).sum(axis=1) > 1).any()
    lo, hi = e.preprocessor.vocab.id_offsets[g], e.preprocessor.vocab.id_offsets[g + 1]
    assert ((G == -1) | ((G >= lo) & (G < hi))).all()


# --- the encoder -------------------------------------------------------------------------------
def _gunzip_head(src: Path, dst: Path, n: int) -> Path:
    dst.write_text("".join(line + "\n" for line in _raw_lines(src, n)))
    return dst


def test_gzip_and_plain_encode_identically_whatever_the_name(criteo_path, tmp_path):
    plain = _gunzip_head(criteo_path, tmp_path / "criteo.gz", 3000)  # plain text despite its name
    packed = tmp_path / "criteo.txt"  # gzip despite its name
    with gzip.open(packed, "wb") as fh:
        fh.write(plain.read_bytes())
    a = D.prepare("criteo", plain, min_count=2, cache_dir=tmp_path / "c", progress=False)
    b = D.prepare("criteo", packed, min_count=2, cache_dir=tmp_path / "c", progress=False)
    assert a.path != b.path
    assert np.array_equal(a.preprocessor.vocab.keys, b.preprocessor.vocab.keys)
    for s in D.SPLITS:
        for u, v in zip(a.split(s), b.split(s), strict=True):
            assert np.array_equal(u, v)


def test_rare_unseen_and_missing_ids_follow_train_counts(criteo_path, tmp_path):
    e = D.prepare("criteo", criteo_path, min_count=10, cache_dir=tmp_path, progress=False)
    lines = [line.split("\t") for line in _raw_lines(criteo_path)]
    split = D.split_of_rows(np.arange(len(lines)), 0)
    vocab, schema = e.preprocessor.vocab, e.schema
    Xs = {s: np.asarray(e.split(s)[0]) for s in D.SPLITS}
    for name, col, numeric in (("C3", 14 + 2, False), ("I5", 5, True), ("C22", 14 + 21, False)):
        f = schema.index(name)
        tok = [(numeric_token(p[col]) if numeric else (p[col] or None)) for p in lines]
        counts = Counter(t for t, s in zip(tok, split, strict=True) if s == 0 and t is not None)
        base = vocab.id_offsets[f]
        kept = {t for t, c in counts.items() if c >= 10}
        assert vocab.id_offsets[f + 1] - base == N_SPECIAL + len(kept)
        pos = dict.fromkeys(D.SPLITS, 0)
        seen = set()
        for t, s in zip(tok, split, strict=True):
            sname = D.SPLITS[s]
            got = Xs[sname][pos[sname], f]
            pos[sname] += 1
            if t is None:
                assert got == base + MISSING
            elif t not in kept:  # rare in train, or never seen in train
                assert got == base + RARE
                seen.add("unseen" if t not in counts else "rare")
            else:
                assert got >= base + N_SPECIAL and got == vocab.lookup(f, hash_tokens([t]))[0]
        if name == "C3":
            assert seen == {"rare", "unseen"}  # both cases are exercised on real data


def test_split_is_80_10_10_stable_and_chunk_independent(criteo_path, tmp_path):
    idx = np.arange(200_000)
    s = D.split_of_rows(idx, 7)
    frac = np.bincount(s, minlength=3) / len(idx)
    assert np.allclose(frac, [0.8, 0.1, 0.1], atol=0.005)
    assert np.array_equal(D.split_of_rows(idx[12345:23456], 7), s[12345:23456])
    assert not np.array_equal(D.split_of_rows(idx, 8), s)
    a = D.prepare("criteo", criteo_path, seed=3, max_rows=4000, cache_dir=tmp_path / "a", chunk_rows=333,
                  progress=False)
    b = D.prepare("criteo", criteo_path, seed=3, max_rows=4000, cache_dir=tmp_path / "b", progress=False)
    assert sum(len(a.split(n)[1]) for n in D.SPLITS) == 4000
    for n in D.SPLITS:
        assert np.array_equal(a.split(n)[0], b.split(n)[0]) and np.array_equal(a.split(n)[1], b.split(n)[1])


def test_cache_round_trip_reuse_and_key(avazu_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default cache is .adrank/cache under the working directory
    a = D.prepare("avazu", avazu_path, progress=False)
    assert a.path.parent == tmp_path / ".adrank" / "cache" and a.target == "binary"
    X, y = a.split("train")
    assert isinstance(X, np.memmap) and X.dtype == np.int32 and y.dtype == np.float32
    assert X.shape[1] == a.schema.n_slots and not X.flags.writeable
    b = D.load_encoded(a.path)
    assert np.array_equal(b.split("test")[0], a.split("test")[0])
    assert b.preprocessor.schema == a.schema

    def boom(*args, **kw):
        raise AssertionError("the raw file was read again")

    monkeypatch.setattr(D, "read_raw", boom)
    assert D.prepare("avazu", avazu_path, progress=False).path == a.path  # reused, not re-read
    with pytest.raises(AssertionError, match="read again"):
        D.prepare("avazu", avazu_path, min_count=3, progress=False)  # another key
    assert [p.name for p in (tmp_path / ".adrank" / "cache").iterdir()] == [a.path.name]  # no temp dirs left


def test_encode_file_with_given_preprocessor_matches_prepare(avazu_path, tmp_path):
    e = D.prepare("avazu", avazu_path, cache_dir=tmp_path, progress=False)
    X, y = D.encode_file("avazu", avazu_path, e.preprocessor)
    s = D.split_of_rows(np.arange(len(y)), 0)
    for k, name in enumerate(D.SPLITS):
        assert np.array_equal(X[s == k], e.split(name)[0]) and np.array_equal(y[s == k], e.split(name)[1])
    with pytest.raises(DataError, match="do not match"):
        D.encode_file("criteo", avazu_path, e.preprocessor)


# --- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("damage, message", [
    (lambda L: L.__setitem__(7, L[7] + "\textra"), r"line 8: expected 40 tab-separated"),
    (lambda L: L.__setitem__(3, "2" + L[3][1:]), r"line 4: label must be 0 or 1, got '2'"),
    (lambda L: L.__setitem__(5, "\t".join(["0", "x1"] + L[5].split("\t")[2:])), r"line 6: column I1 must be an integer"),
    (lambda L: L.__setitem__(len(L) - 1, L[-1][: len(L[-1]) // 2]), r"line 50: expected 40"),
])
def test_malformed_criteo_lines_name_file_and_line(criteo_path, tmp_path, damage, message):
    lines = _raw_lines(criteo_path, 50)
    damage(lines)
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message) as info:
        D.prepare("criteo", bad, cache_dir=tmp_path / "cache", progress=False)
    assert "bad.txt" in str(info.value)
    assert not any((tmp_path / "cache").iterdir())  # nothing half-written


def test_truncated_gzip_is_a_clear_error(avazu_path, tmp_path):
    cut = tmp_path / "avazu.csv.gz"
    data = avazu_path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"avazu\.csv\.gz: truncated or corrupt gzip stream after line \d+"):
        D.prepare("avazu", cut, cache_dir=tmp_path / "cache", progress=False)
    assert not any((tmp_path / "cache").iterdir())


def test_missing_inputs_and_bad_arguments(tmp_path, movielens_path):
    with pytest.raises(DataError, match="no such file"):
        D.prepare("criteo", tmp_path / "nope.txt", cache_dir=tmp_path)
    with pytest.raises(DataError, match="unknown dataset 'kdd'"):
        D.schema_for("kdd", tmp_path)
    with pytest.raises(DataError, match="no schema.json"):
        D.read_raw("synthetic", tmp_path)
    partial = tmp_path / "ml"
    partial.mkdir()
    shutil.copy(movielens_path / "users.dat.gz", partial / "users.dat.gz")
    with pytest.raises(DataError, match="no ratings.dat or ratings.dat.gz"):
        D.prepare("movielens", partial, cache_dir=tmp_path)
    header = (tmp_path / "h.csv")
    header.write_text("id,click,hour\n1,0,14102100\n")
    with pytest.raises(DataError, match="header lacks columns"):
        list(D.read_raw("avazu", header))


def test_distinct_value_encoding_equals_the_preprocessor(movielens_path, criteo_path, tmp_path):
    for ds, path in (("movielens", movielens_path), ("criteo", criteo_path)):
        e = D.prepare(ds, path, max_rows=3000, min_count=2, cache_dir=tmp_path, progress=False)
        cols, y = next(D.read_raw(ds, path, chunk_rows=1500))
        assert np.array_equal(D.encode_chunk(e.preprocessor, cols, len(y)),
                              e.preprocessor.encode_columns(cols, n_rows=len(y)))
