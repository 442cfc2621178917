"""Serving settings: one frozen dataclass, read from ``ADRANK_*`` environment variables.

Every knob of the server is read here and nowhere else, once, when the app is built
(``Settings.from_env``), and passed down explicitly: the kernel knobs reach every served
model's scorer through ``Settings.scorer_options`` (service/app.py -> service/models.py ->
``Ranker.load``).  Settings travel through the environment because ``adrank serve --workers N``
starts each uvicorn worker as a fresh process that builds its app with
``service.app:create_app``; the CLI writes the variables (``to_env``), every worker reads the
same ones.  The README's settings table describes each variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from service.kernels.pool import PARALLEL_MIN_CANDIDATES

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the variable or argument."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: Path


def parse_model_specs(items: Iterable[str]) -> list[ModelSpec]:
    """``NAME=PATH`` or ``PATH`` (name = file stem) -> specs; names must be unique and URL-safe."""
    specs: list[ModelSpec] = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).stem, item
        if not path:
            raise SettingsError(f"model {item!r}: empty path")
        if not _NAME.match(name):
            raise SettingsError(f"model {item!r}: name {name!r} must be 1-64 letters, digits, '_', '-', '.'")
        if any(s.name == name for s in specs):
            raise SettingsError(f"model name {name!r} given twice")
        specs.append(ModelSpec(name, Path(path).expanduser()))
    return specs


def format_model_specs(specs: Iterable[ModelSpec]) -> str:
    return " ".join(f"{s.name}={s.path}" for s in specs)


def _int(env: Mapping[str, str], key: str, default, minimum: int):
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{key}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{key}={value} must be >= {minimum}")
    return value


def _float(env: Mapping[str, str], key: str, default: float, allow_zero: bool = False) -> float:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{key}={raw!r} is not a number") from None
    if not (value >= 0 if allow_zero else value > 0) or value == float("inf"):
        raise SettingsError(f"{key}={raw!r} must be {'>= 0' if allow_zero else '> 0'} and finite")
    return value


def _flag(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{key}={raw!r} must be 1/0, true/false, yes/no or on/off")


def _choice(env: Mapping[str, str], key: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(key) or default
    if raw not in choices:
        raise SettingsError(f"{key}={raw!r} must be one of {', '.join(choices)}")
    return raw


def _admin_token(env: Mapping[str, str]) -> str | None:
    """ADRANK_ADMIN_TOKEN, else the first line of ADRANK_ADMIN_TOKEN_FILE (``adrank serve`` writes
    one, mode 0600, when no token is given: the secret never travels in an environment variable)."""
    if env.get("ADRANK_ADMIN_TOKEN"):
        return env["ADRANK_ADMIN_TOKEN"]
    path = env.get("ADRANK_ADMIN_TOKEN_FILE")
    if not path:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise SettingsError(f"ADRANK_ADMIN_TOKEN_FILE={path!r}: {exc.strerror}") from None
    if len(token) < 16:
        raise SettingsError(f"ADRANK_ADMIN_TOKEN_FILE={path!r}: the token must have at least 16 characters")
    return token


@dataclass(frozen=True)
class Settings:
    models: tuple[ModelSpec, ...] = ()
    max_candidates: int = 10_000
    max_explain: int = 10  # ads explained per /v1/rank request ("explain": true): the first ones of the reply
    max_auctions: int = 100  # auctions per POST /v1/rank:batch (their ads together: at most max_candidates)
    max_body_bytes: int = 16 * 1024 * 1024
    max_inflight: int = 64
    retry_after: int = 1
    admin_enabled: bool = True
    admin_token: str | None = None  # admin routes answer 401 to everyone while none is configured
    admin_token_file: Path | None = None  # where admin_token was read from (workers re-read it)
    model_dir: Path | None = None  # reload takes paths inside this directory only; None: no paths at all
    max_top_k: int = 1000  # the largest top_k of an `all_ads` request (the catalog is never listed whole)
    queue_budget: float = 0.025  # seconds a complete request may wait for scoring before it is shed (503)
    header_timeout: float = 5.0  # seconds from a request's first byte to the end of its headers
    body_timeout: float = 10.0  # seconds from the end of the headers to the end of the body
    docs: bool = True  # /docs (Swagger UI over /openapi.json)
    access_log: str = "off"  # off | text | json: one line per request (service/trace.py)
    gc_freeze: bool = True
    catalog: Path | None = None  # JSONL of ads recorded at start (service/catalog)
    # state (service/state.py, service/replog): where the replication log lives and how it is used
    state_dir: Path | None = None  # SQLite log directory; None: in memory, nothing survives the process
    log_url: str | None = None  # "sqlite" / None, or redis://HOST:PORT/DB (a fleet)
    log_key: str = "adrank"  # prefix of the Redis keys
    log_poll: float = 0.05  # seconds between polls for other processes' entries (Redis: longest block)
    compact_entries: int = 1000  # log entries kept after the log's snapshot before compaction
    merge_rows: int = 16384  # delta + dead rows of the catalog that start a background merge
    load_timeout: float = 60.0  # seconds a model file may take to read
    drain_seconds: float = 0.0  # after SIGTERM: seconds /readyz answers 503 before the shut-down
    switch_interval: float = 0.0002  # the worker's thread switch interval (the event loop vs writers)
    fastpath: bool = True  # the compiled /v1/rank fast path (service/fastpath); off = the generic path only
    # kernels (service/kernels): huge-page table copies (memory.py), the linear-weight prefetch
    # (schedule.py), when and into how many slices an auction is split (pool.py; None = its default)
    huge_pages: bool = True
    prefetch_linear: bool = True
    parallel_min_candidates: int = PARALLEL_MIN_CANDIDATES
    kernel_threads: int | None = None

    def scorer_options(self) -> dict:
        """The options every served model's scorer is built with (``Ranker.load``)."""
        return {"huge_pages": self.huge_pages, "prefetch_linear": self.prefetch_linear,
                "parallel_min": self.parallel_min_candidates, "threads": self.kernel_threads}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        models = tuple(parse_model_specs(re.split(r"[\s,]+", env.get("ADRANK_MODELS", ""))))
        state_dir = env.get("ADRANK_STATE_DIR") or None
        return cls(
            models=models,
            max_candidates=_int(env, "ADRANK_MAX_CANDIDATES", cls.max_candidates, 1),
            max_explain=_int(env, "ADRANK_MAX_EXPLAIN", cls.max_explain, 0),
            max_auctions=_int(env, "ADRANK_MAX_AUCTIONS", cls.max_auctions, 1),
            max_body_bytes=_int(env, "ADRANK_MAX_BODY_BYTES", cls.max_body_bytes, 1024),
            max_inflight=_int(env, "ADRANK_MAX_INFLIGHT", cls.max_inflight, 1),
            retry_after=_int(env, "ADRANK_RETRY_AFTER", cls.retry_after, 0),
            admin_enabled=_flag(env, "ADRANK_ADMIN", True),
            admin_token=_admin_token(env),
            admin_token_file=(Path(env["ADRANK_ADMIN_TOKEN_FILE"]) if env.get("ADRANK_ADMIN_TOKEN_FILE")
                              and not env.get("ADRANK_ADMIN_TOKEN") else None),
            model_dir=Path(env["ADRANK_MODEL_DIR"]).expanduser().resolve() if env.get("ADRANK_MODEL_DIR") else None,
            max_top_k=_int(env, "ADRANK_MAX_TOP_K", cls.max_top_k, 1),
            queue_budget=_float(env, "ADRANK_QUEUE_BUDGET", cls.queue_budget),
            header_timeout=_float(env, "ADRANK_HEADER_TIMEOUT", cls.header_timeout),
            body_timeout=_float(env, "ADRANK_BODY_TIMEOUT", cls.body_timeout),
            docs=_flag(env, "ADRANK_DOCS", cls.docs),
            access_log=_choice(env, "ADRANK_ACCESS_LOG", cls.access_log, ("off", "text", "json")),
            gc_freeze=_flag(env, "ADRANK_GC_FREEZE", True),
            catalog=Path(env["ADRANK_CATALOG"]) if env.get("ADRANK_CATALOG") else None,
            fastpath=_flag(env, "ADRANK_FASTPATH", cls.fastpath),
            huge_pages=_flag(env, "ADRANK_HUGE_PAGES", cls.huge_pages),
            prefetch_linear=_flag(env, "ADRANK_PREFETCH_LINEAR", cls.prefetch_linear),
            parallel_min_candidates=_int(env, "ADRANK_PARALLEL_MIN_CANDIDATES", cls.parallel_min_candidates, 1),
            kernel_threads=_int(env, "ADRANK_KERNEL_THREADS", None, 1),
            state_dir=Path(state_dir) if state_dir else None,
            log_url=env.get("ADRANK_LOG") or None,
            log_key=env.get("ADRANK_LOG_KEY") or cls.log_key,
            log_poll=_float(env, "ADRANK_LOG_POLL", cls.log_poll),
            compact_entries=_int(env, "ADRANK_LOG_COMPACT", cls.compact_entries, 0),
            merge_rows=_int(env, "ADRANK_CATALOG_MERGE_ROWS", cls.merge_rows, 1),
            load_timeout=_float(env, "ADRANK_LOAD_TIMEOUT", cls.load_timeout),
            drain_seconds=_float(env, "ADRANK_DRAIN_SECONDS", cls.drain_seconds, allow_zero=True),
            switch_interval=_float(env, "ADRANK_SWITCH_INTERVAL", cls.switch_interval),
        )

    def to_env(self) -> dict[str, str]:
        """The variables that make ``from_env`` rebuild these settings (for worker processes)."""
        env = {
            "ADRANK_MODELS": format_model_specs(self.models),
            "ADRANK_MAX_CANDIDATES": str(self.max_candidates),
            "ADRANK_MAX_EXPLAIN": str(self.max_explain),
            "ADRANK_MAX_AUCTIONS": str(self.max_auctions),
            "ADRANK_MAX_BODY_BYTES": str(self.max_body_bytes),
            "ADRANK_MAX_INFLIGHT": str(self.max_inflight),
            "ADRANK_RETRY_AFTER": str(self.retry_after),
            "ADRANK_ADMIN": "1" if self.admin_enabled else "0",
            "ADRANK_MAX_TOP_K": str(self.max_top_k),
            "ADRANK_QUEUE_BUDGET": str(self.queue_budget),
            "ADRANK_HEADER_TIMEOUT": str(self.header_timeout),
            "ADRANK_BODY_TIMEOUT": str(self.body_timeout),
            "ADRANK_DOCS": "1" if self.docs else "0",
            "ADRANK_ACCESS_LOG": self.access_log,
            "ADRANK_GC_FREEZE": "1" if self.gc_freeze else "0",
            "ADRANK_FASTPATH": "1" if self.fastpath else "0",
            "ADRANK_HUGE_PAGES": "1" if self.huge_pages else "0",
            "ADRANK_PREFETCH_LINEAR": "1" if self.prefetch_linear else "0",
            "ADRANK_PARALLEL_MIN_CANDIDATES": str(self.parallel_min_candidates),
            "ADRANK_LOG_KEY": self.log_key,
            "ADRANK_LOG_POLL": str(self.log_poll),
            "ADRANK_LOG_COMPACT": str(self.compact_entries),
            "ADRANK_CATALOG_MERGE_ROWS": str(self.merge_rows),
            "ADRANK_LOAD_TIMEOUT": str(self.load_timeout),
            "ADRANK_DRAIN_SECONDS": str(self.drain_seconds),
            "ADRANK_SWITCH_INTERVAL": str(self.switch_interval),
        }
        if self.kernel_threads is not None:
            env["ADRANK_KERNEL_THREADS"] = str(self.kernel_threads)
        if self.admin_token_file:
            env["ADRANK_ADMIN_TOKEN_FILE"] = str(self.admin_token_file)
        elif self.admin_token:
            env["ADRANK_ADMIN_TOKEN"] = self.admin_token
        if self.model_dir:
            env["ADRANK_MODEL_DIR"] = str(self.model_dir)
        if self.state_dir:
            env["ADRANK_STATE_DIR"] = str(self.state_dir)
        if self.log_url:
            env["ADRANK_LOG"] = self.log_url
        if self.catalog:
            env["ADRANK_CATALOG"] = str(self.catalog)
        return env
