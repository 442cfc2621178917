"""MovieLens-1M: ratings joined with users and movies, timestamp expanded (paper Sec. 5.1).

``path`` is the ``ml-1m`` directory holding ``ratings.dat``, ``users.dat`` and ``movies.dat``
(each plain or gzip, named with or without ``.gz``).  Fields are ``::``-separated;
``movies.dat`` is latin-1.  The timestamp (Unix seconds, UTC) becomes year, month, day of
week (0 = Monday) and hour of day; genres (``|``-separated) become a multi-valued field; the
label is the rating (regression).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from training.datasets.io import DataError, bad_line, iter_lines
from training.datasets.readers import Chunk, labels_of, split_chunks


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


def _lookup(table: dict, keys: tuple[str, ...], nums: list[int], path: Path, what: str, src: Path) -> list:
    try:
        return [table[k] for k in keys]
    except KeyError as exc:
        n = nums[keys.index(exc.args[0])]
        raise bad_line(path, n, f"{what} {exc.args[0]!r} is not in {src.name}") from None


def read_movielens(root, chunk_rows=65536, max_rows=None) -> Iterator[Chunk]:
    ratings_p, users_p, movies_p = movielens_files(root)
    users = _table(users_p, 5, "utf-8")  # UserID::Gender::Age::Occupation::Zip-code
    movies = _table(movies_p, 3, "latin-1")  # MovieID::Title::Genres
    genres = {k: [g for g in v[1].split("|") if g] for k, v in movies.items()}
    for nums, c in split_chunks(ratings_p, iter_lines(ratings_p), "::", 4,
                                "'::'-separated (UserID::MovieID::Rating::Timestamp)", chunk_rows, max_rows):
        u = _lookup(users, c[0], nums, ratings_p, "user", users_p)
        g = _lookup(genres, c[1], nums, ratings_p, "movie", movies_p)
        try:
            ts = np.array(c[3], dtype=np.int64)
        except ValueError:
            bad = next(i for i, v in enumerate(c[3]) if not v.lstrip("-").isdigit())
            raise bad_line(ratings_p, nums[bad], f"timestamp must be an integer, got {c[3][bad]!r}") from None
        cols = {"user_id": list(c[0])}
        for i, name in enumerate(("gender", "age", "occupation", "zip")):
            cols[name] = [r[i] for r in u]
        cols.update(expand_timestamps(ts))
        cols["movie_id"] = list(c[1])
        cols["genres"] = g
        yield cols, labels_of(ratings_p, nums, c[2], binary=False)
