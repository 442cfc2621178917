"""Files written whole or not at all.

Every result, report, state file and request pool the project writes goes through
:func:`replacing`: the content is written to a temporary file beside the target (same directory,
so the final rename is atomic; the writer's pid in its name, so concurrent writers never share
one) and renamed over the target only once it is complete.  A crash, an interrupt or an error
in the middle leaves the previous file as it was and no temporary file behind.

(Artifacts have their own writer with fsync, ``adrank.core.artifact.write_artifact``: the format's
owner.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; on a clean exit it replaces
    ``path``, on an exception it is removed and ``path`` is untouched.  The temporary file keeps
    the suffix (writers such as matplotlib's ``savefig`` pick the format from it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path, text: str) -> None:
    """``path.write_text(text)``, atomically."""
    with replacing(path) as tmp:
        tmp.write_text(text)


def write_json(path, obj, indent: int | None = 1) -> None:
    """``obj`` as JSON (one trailing newline), atomically."""
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def write_report(out, data, markdown: str) -> None:
    """A benchmark's ``OUT.json`` (``data``) and ``OUT.md`` (``markdown``), each atomically;
    ``out``'s directory is created."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), data)
    write_text(out.with_suffix(".md"), markdown)
