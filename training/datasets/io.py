"""Reading raw text files: plain or gzip (told apart by magic bytes), with clear errors.

Policy for malformed input (chosen once, for every format): **fail fast**.  A line with
the wrong number of columns, a bad label or an unparsable number raises :class:`DataError`
naming the file, the line number and the problem; a truncated or corrupt gzip stream raises
it too, naming the last good line.  Nothing is skipped silently, so a damaged file can never
train a model on part of its rows without anyone noticing.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from pathlib import Path

from adrank.core.errors import UserError

GZIP_MAGIC = b"\x1f\x8b"


class DataError(UserError, ValueError):
    """Malformed raw data; the message names the file, the line and what is wrong."""


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == GZIP_MAGIC


def open_text(path: Path, encoding: str = "utf-8") -> io.TextIOBase:
    """Open ``path`` for reading text, decompressing when it starts with the gzip magic."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if is_gzip(path):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding, newline="")
    return open(path, encoding=encoding, newline="")


def iter_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its line break) of a plain or gzip text file.

    Blank lines at the very end are ignored; a blank line in the middle is yielded (and
    rejected by the format's column check).
    """
    lineno = 0
    blank = 0
    try:
        with open_text(path, encoding) as fh:
            for line in fh:
                lineno += 1
                line = line.rstrip("\r\n")
                if not line:
                    blank += 1
                    continue
                for _ in range(blank):  # blank lines followed by data: report them
                    yield lineno - blank, ""
                blank = 0
                yield lineno, line
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: truncated or corrupt gzip stream after line {lineno} ({exc})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: line {lineno + 1} is not valid {encoding} text ({exc.reason})") from None


def bad_line(path: Path, lineno: int, problem: str) -> DataError:
    return DataError(f"{path}, line {lineno}: {problem}")


def parse_label(path: Path, lineno: int, text: str, binary: bool = True) -> float:
    """A 0/1 click label (binary) or a finite number (regression)."""
    if binary:
        if text == "0":
            return 0.0
        if text == "1":
            return 1.0
        raise bad_line(path, lineno, f"label must be 0 or 1, got {text!r}")
    try:
        y = float(text)
    except ValueError:
        raise bad_line(path, lineno, f"label must be a number, got {text!r}") from None
    if y != y or y in (float("inf"), float("-inf")):
        raise bad_line(path, lineno, f"label must be finite, got {text!r}")
    return y


def parse_int(path: Path, lineno: int, column: str, text: str) -> int | None:
    """An integer feature; empty means missing."""
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise bad_line(path, lineno, f"column {column} must be an integer, got {text!r}") from None
