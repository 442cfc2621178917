"""MovieLens-1M: ratings joined with users and movies, timestamp expanded (paper Sec. 5.1).

``path`` is the ``ml-1m`` directory holding ``ratings.dat``, ``users.dat`` and ``movies.dat``
(each plain or gzip, named with or without ``.gz``).  Fields are ``::``-separated;
``movies.dat`` is latin-1.  The timestamp (Unix seconds, UTC) becomes year, month, day of
week and hour of day; genres (``|``-separated) become a multi-valued field; the label is
the rating (regression).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from training.datasets.io import DataError, bad_line, iter_lines, parse_label
from training.datasets.readers import Chunk, _batches, _limit
from training.datasets.schemas import MOVIELENS


def movielens_file(root: Path, name: str) -> Path:
    """``root/name.dat`` or ``root/name.dat.gz``, whichever exists."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: MovieLens path must be the ml-1m directory")
    for cand in (root / f"{name}.dat", root / f"{name}.dat.gz"):
        if cand.is_file():
            return cand
    raise DataError(f"{root}: no {name}.dat or {name}.dat.gz")


def movielens_files(root: Path) -> list[Path]:
    return [movielens_file(root, n) for n in ("ratings", "users", "movies")]


def _table(path: Path, n_cols: int, encoding: str) -> dict[str, list[str]]:
    out = {}
    for lineno, line in iter_lines(path, encoding):
        p = line.split("::")
        if len(p) != n_cols:
            raise bad_line(path, lineno, f"expected {n_cols} '::'-separated columns, got {len(p)}")
        out[p[0]] = p[1:]
    return out


def expand_timestamps(ts: np.ndarray) -> dict[str, list[str]]:
    """Unix seconds (UTC) -> year, month (1-12), day of week (0 = Monday) and hour, as strings."""
    ts = np.asarray(ts, dtype=np.int64)
    t = ts.astype("datetime64[s]")
    year = t.astype("datetime64[Y]").astype(np.int64) + 1970
    month = t.astype("datetime64[M]").astype(np.int64) % 12 + 1
    days = t.astype("datetime64[D]").astype(np.int64)
    dow = (days + 3) % 7  # 1970-01-01 was a Thursday (3 with Monday = 0)
    hour = (ts // 3600) % 24
    return {k: [str(v) for v in a.tolist()]
            for k, a in (("year", year), ("month", month), ("day_of_week", dow), ("hour", hour))}


def read_movielens(root, chunk_rows=65536, max_rows=None) -> Iterator[Chunk]:
    ratings_p, users_p, movies_p = movielens_files(root)
    users = _table(users_p, 5, "utf-8")  # UserID::Gender::Age::Occupation::Zip-code
    movies = _table(movies_p, 3, "latin-1")  # MovieID::Title::Genres
    names = [f.name for f in MOVIELENS.fields]

    def rows():
        for lineno, line in _limit(iter_lines(ratings_p), max_rows):
            p = line.split("::")
            if len(p) != 4:
                raise bad_line(ratings_p, lineno, f"expected 4 '::'-separated columns "
                                                  f"(UserID::MovieID::Rating::Timestamp), got {len(p)}")
            u, mv = users.get(p[0]), movies.get(p[1])
            if u is None:
                raise bad_line(ratings_p, lineno, f"user {p[0]!r} is not in {users_p.name}")
            if mv is None:
                raise bad_line(ratings_p, lineno, f"movie {p[1]!r} is not in {movies_p.name}")
            y = parse_label(ratings_p, lineno, p[2], binary=False)
            try:
                ts = int(p[3])
            except ValueError:
                raise bad_line(ratings_p, lineno, f"timestamp must be an integer, got {p[3]!r}") from None
            genres = [g for g in mv[1].split("|") if g]
            yield (p[0], *u, p[1], genres, ts), y

    for batch in _batches(rows(), chunk_rows):
        values, labels = zip(*batch, strict=True)
        c = list(zip(*values, strict=True))
        cols = {"user_id": list(c[0]), "gender": list(c[1]), "age": list(c[2]),
                "occupation": list(c[3]), "zip": list(c[4])}
        cols.update(expand_timestamps(np.asarray(c[7], dtype=np.int64)))
        cols["movie_id"] = list(c[5])
        cols["genres"] = list(c[6])
        assert set(cols) == set(names)
        yield cols, np.asarray(labels, dtype=np.float32)
