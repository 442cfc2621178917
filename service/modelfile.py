"""Read an artifact into memory this process owns: what a served model is built from.

A served model never reads a file that someone else can rewrite: ``read_owned`` copies every
array out of the file (verifying the SHA-256 on the bytes it read, not on a map that could change
afterwards), so replacing, truncating or deleting the artifact on disk has no effect on the
model until a reload.  The tables the kernels gather from at random (``emb``, ``linear``) are read
straight into private memory advised for 2 MiB transparent huge pages
(``service.kernels.memory.resident_empty``), so they are not copied a second time; everything
else goes into one 64-byte aligned buffer (every array keeps its 64-byte alignment).

Opening never blocks and never reads what is not a regular file: the file is opened with
``O_NONBLOCK`` (a FIFO without a writer would otherwise block ``open`` forever) and refused unless
``fstat`` says it is a regular file; reading gives up after ``timeout`` seconds (checked between
chunks).  Every failure is a named :class:`ArtifactError`.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path

import numpy as np

from adrank.core.artifact import (
    ALIGN,
    PRELUDE,
    Artifact,
    ArtifactError,
    ChecksumMismatch,
    TrailingBytes,
    Truncated,
    check_prelude,
    parse_header,
    validate,
)
from service.kernels import memory

CHUNK = 16 << 20  # bytes per read (and per deadline check)
RESIDENT = ("emb", "linear")  # gathered at random by the kernels: huge-page memory


class NotRegularFile(ArtifactError):
    code = "not_a_regular_file"


class ReadTimeout(ArtifactError):
    code = "read_timeout"


class NotFound(ArtifactError):
    code = "not_found"


class _Reader:
    """Sequential reads from one file descriptor, hashed, under a deadline."""

    def __init__(self, fd: int, path: Path, deadline: float):
        self.fd, self.path, self.deadline = fd, path, deadline
        self.pos = 0
        self.sha = hashlib.sha256()

    def into(self, view: memoryview, hashed: bool = True) -> None:
        """Fill ``view`` (a byte memoryview) completely, or raise Truncated / ReadTimeout."""
        done, n = 0, len(view)
        while done < n:
            if time.monotonic() > self.deadline:
                raise ReadTimeout(f"reading stopped after the timeout, at byte {self.pos + done}", self.path)
            got = os.readv(self.fd, [view[done : min(n, done + CHUNK)]])
            if got == 0:
                raise Truncated(f"file ends at byte {self.pos + done}, the header promises more", self.path)
            done += got
        if hashed:
            self.sha.update(view)
        self.pos += n


def _open(path: Path) -> tuple[int, int]:
    """(fd, size) of a regular file opened without blocking; named errors otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"no such file: {path}", None) from None
    except OSError as exc:
        raise NotRegularFile(f"cannot open {path}: {exc.strerror}", None) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else \
            "a device or socket"
        raise NotRegularFile(f"{path} is {what}, not a regular file", None)
    os.set_blocking(fd, True)  # a regular file never blocks on O_NONBLOCK anyway; be explicit
    return fd, st.st_size


def read_owned(path, timeout: float = 60.0, huge_pages: bool = True) -> Artifact:
    """Open, read, verify and validate an artifact into private memory (see the module docstring)."""
    path = Path(path)
    fd, size = _open(path)
    try:
        rd = _Reader(fd, path, time.monotonic() + timeout)
        if size < PRELUDE.size:
            raise Truncated(f"file has {size} bytes, shorter than the {PRELUDE.size}-byte prelude", path)
        prelude = bytearray(PRELUDE.size)
        rd.into(memoryview(prelude), hashed=False)
        hlen, dlen, digest = check_prelude(bytes(prelude), size, path)
        header = bytearray(hlen)
        rd.into(memoryview(header))
        manifest, table = parse_header(bytes(header), dlen, path)
        arrays = _read_arrays(rd, table, dlen, huge_pages)
        if os.read(fd, 1):  # the file grew while it was read
            raise TrailingBytes("the file grew while it was read", path)
        if rd.sha.digest() != digest:
            raise ChecksumMismatch("SHA-256 of header + data does not match the prelude", path)
    finally:
        os.close(fd)
    validate(manifest, table, arrays, path)
    return Artifact(path, manifest, arrays, digest.hex()[:12], size)


def _read_arrays(rd: _Reader, table: dict, dlen: int, huge_pages: bool) -> dict[str, np.ndarray]:
    """Every array of the data region in file order, into its destination; gaps are hashed too."""
    order = sorted(table.items(), key=lambda kv: kv[1]["offset"])
    resident = {n for n, t in order if huge_pages and n in RESIDENT and t["nbytes"] >= memory.HUGE_PAGE}
    rest = 0
    slots = {}
    for name, t in order:  # the other arrays packed into one buffer, each 64-byte aligned
        if name not in resident:
            slots[name] = rest
            rest += t["nbytes"] + (-t["nbytes"] % ALIGN)
    buf = memory.aligned_empty((rest,), np.uint8)
    arrays, at = {}, 0
    for name, t in order:
        gap = t["offset"] - at
        if gap:
            rd.into(memoryview(bytearray(gap)))
        nb = t["nbytes"]
        dest = memory.resident_empty(nb) if name in resident else buf[slots[name] : slots[name] + nb]
        rd.into(dest.data)
        a = dest.view(np.dtype(t["dtype"]).newbyteorder("<")).reshape(t["shape"])
        a.flags.writeable = False
        arrays[name] = a
        at = t["offset"] + nb
    if dlen - at:
        rd.into(memoryview(bytearray(dlen - at)))
    return arrays
