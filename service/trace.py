"""Request ids and the access log: one line per request, text or JSON (``ADRANK_ACCESS_LOG``).

The id comes from the client's ``x-request-id`` (printable ASCII, at most 128 characters) or is
made here: the worker's pid and a counter, unique per process lifetime and cheaper than a UUID.
It is echoed in the reply's ``x-request-id`` header and named in the access line, which also
carries what the exchange needs to find a slow or refused request: model, version, candidates,
status, latency and the time the complete request waited before scoring.
"""

from __future__ import annotations

import itertools
import logging
import os
import re

import msgspec

MAX_ID = 128
_VALID = re.compile(rb"[\x21-\x7e]{1,128}")
_counter = itertools.count(1)
_prefix = ""
access = logging.getLogger("adrank.access")
access.disabled = True  # until configure(): never through the "adrank" logger's handler
_encoder = msgspec.json.Encoder()


def _new_prefix() -> None:
    global _prefix
    _prefix = f"{os.getpid():x}-"


_new_prefix()
os.register_at_fork(after_in_child=_new_prefix)  # a forked worker names its requests by its own pid


def request_id(given: bytes | None) -> str:
    """The client's id if it is printable ASCII of at most 128 characters, else a fresh one."""
    if given is not None and _VALID.fullmatch(given):
        return given.decode("ascii")
    return _prefix + str(next(_counter))


def configure(mode: str) -> None:
    """``off``, ``text`` or ``json``: where ``log_access`` writes (stderr, one line per request)."""
    access.propagate = False
    for h in list(access.handlers):
        access.removeHandler(h)
    access.disabled = mode == "off"
    if mode == "off":
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    global _json
    _json = mode == "json"


_json = False


def log_access(rid: str, method: str, path: str, status: int, seconds: float, model: str = "",
               version: str = "", candidates: int = 0, queued: float = 0.0, error: str = "") -> None:
    if access.disabled:
        return
    if _json:
        line = _encoder.encode({"request_id": rid, "method": method, "path": path, "status": status,
                                "latency_ms": round(seconds * 1e3, 3), "queue_ms": round(queued * 1e3, 3),
                                "model": model, "version": version, "candidates": candidates,
                                "error": error}).decode()
    else:
        line = (f"{rid} {method} {path} {status} {seconds * 1e3:.3f}ms queue={queued * 1e3:.3f}ms "
                f"model={model or '-'} version={version or '-'} candidates={candidates}"
                + (f" error={error}" if error else ""))
    access.info(line)
