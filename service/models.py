"""The loaded-model registry: name -> Ranker, and hot reload (load -> verify -> warm -> swap).

Swapping is one reference assignment (``self._models = {...}``): a request that already took
its Ranker finishes on it, the next one sees the new model, and a model that fails to load,
verify or warm is never swapped in, so the old one keeps serving (DESIGN §6).

Several uvicorn workers are separate processes; a reload must reach all of them.  They share
a small JSON *state file* in the run directory::

    RUN_DIR/models.json  {"models": {"dplr": {"path": "...", "seq": 3, "version": "..."}, ...}}

Every reload request bumps the model's ``seq`` (under an ``flock``); each worker polls the
file's mtime and reloads any model whose ``seq`` is newer than the one it serves, from the
recorded path.  The worker that served the HTTP reload writes the file only after its own
swap succeeded, so a refused artifact is never propagated.  ``request_reload_all`` (SIGHUP)
bumps every model.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from adrank.core.files import write_text
from service import warmup
from service.settings import ModelSpec

log = logging.getLogger("adrank.models")

STATE_FILE = "models.json"


class UnknownModel(LookupError):
    def __init__(self, name: str, known: list[str]):
        super().__init__(f"unknown model {name!r}; loaded models: {', '.join(known) or 'none'}")
        self.name = name


class ModelLoadError(Exception):
    """A model that could not be loaded; ``code`` is the artifact's named error code."""

    def __init__(self, name: str, path: Path, code: str, message: str):
        super().__init__(f"model {name!r} from {path}: {message} [{code}]")
        self.name, self.path, self.code, self.detail = name, path, code, message


def load_ranker(path: Path, name: str, **scorer_options):
    """The registry's loader: the artifact at ``path`` as a Ranker named ``name``, its scorer built
    with ``scorer_options`` (``Settings.scorer_options()``: service/app.py binds them)."""
    from service.ranker import Ranker  # imported here so tests can run with a fake loader

    return Ranker.load(path, name=name, **scorer_options)


def load_and_warm(loader: Callable, name: str, path: Path):
    """Load (verifies the artifact), then compile/warm its kernels; errors -> ModelLoadError."""
    try:
        started = warmup.loading(name, path)
        ranker = loader(path, name)
        warmup.loaded(name, ranker, started)
        with warmup.warming(name):
            ranker.warm()
        return ranker
    except FileNotFoundError:
        raise ModelLoadError(name, path, "not_found", f"no such file: {path}") from None
    except IsADirectoryError:
        raise ModelLoadError(name, path, "not_a_file", f"{path} is a directory") from None
    except Exception as exc:  # ArtifactError carries .code; anything else is a load failure
        code = getattr(exc, "code", None) or "load_failed"
        raise ModelLoadError(name, path, str(code), str(exc) or type(exc).__name__) from exc


@dataclass
class _Served:
    path: Path
    seq: int


class ModelRegistry:
    """Models served by this process.  ``on_swap(name, old, new)`` is called after each swap."""

    def __init__(self, specs: list[ModelSpec] | tuple[ModelSpec, ...], loader: Callable | None = None,
                 run_dir: Path | None = None, on_swap: Callable | None = None):
        if not specs:
            raise ValueError("no models to serve")
        self.specs = list(specs)
        self.default = self.specs[0].name
        self.loader = loader or load_ranker
        self.run_dir = Path(run_dir) if run_dir else None
        self.on_swap = on_swap
        self.ready = False
        self._models: dict = {}
        self._served = {s.name: _Served(s.path, 0) for s in self.specs}
        self._reload_lock = threading.Lock()  # one reload at a time in this process
        self._state_stamp: tuple | None = None

    # --- lookup (hot path) ----------------------------------------------------------------
    def get(self, name: str | None):
        models = self._models
        try:
            return models[name or self.default]
        except KeyError:
            raise UnknownModel(name or self.default, list(models)) from None

    def names(self) -> list[str]:
        return list(self._models)

    def all(self) -> list:
        return list(self._models.values())

    def path_of(self, name: str) -> Path:
        return self._served[name].path

    # --- start-up -------------------------------------------------------------------------
    def load_all(self) -> None:
        """Load, verify and warm every model (start-up); paths come from the state file if any."""
        state = self._read_state()
        for spec in self.specs:
            entry = state.get(spec.name)
            if entry:
                self._served[spec.name] = _Served(Path(entry["path"]), int(entry["seq"]))
        loaded = {}
        for spec in self.specs:
            loaded[spec.name] = load_and_warm(self.loader, spec.name, self._served[spec.name].path)
        self._models = loaded
        for name, ranker in loaded.items():
            self._notify(name, None, ranker)
        if self.run_dir and not state:
            with self._locked_state() as st:  # first worker records the start-up paths
                for name, served in self._served.items():
                    st.setdefault(name, {"path": str(served.path), "seq": served.seq,
                                         "version": loaded[name].version})
        self.ready = True

    # --- reload ---------------------------------------------------------------------------
    def reload(self, name: str, path: str | Path | None = None):
        """Load + verify + warm ``name`` from ``path`` (default: its current path), then swap.

        Returns the new Ranker; raises UnknownModel or ModelLoadError (the old model stays).
        Records the reload in the state file so the other workers follow.
        """
        if name not in self._served:
            raise UnknownModel(name, self.names())
        with self._reload_lock:
            new_path = Path(path).expanduser().resolve() if path else self._served[name].path
            new = load_and_warm(self.loader, name, new_path)
            seq = self._served[name].seq + 1
            if self.run_dir:
                with self._locked_state() as st:
                    seq = max(seq, int(st.get(name, {}).get("seq", 0)) + 1)
                    st[name] = {"path": str(new_path), "seq": seq, "version": new.version}
            self._swap(name, new, new_path, seq)
            return new

    def request_reload_all(self) -> None:
        """SIGHUP: ask every worker (through the state file) to re-read every model."""
        if self.run_dir and (self.run_dir / STATE_FILE).exists():
            bump_all(self.run_dir)
        else:
            self.reload_everything()

    def reload_everything(self) -> dict[str, str]:
        """Re-read every model from its path in this process; failures are logged, not raised."""
        out = {}
        with self._reload_lock:
            for name, served in list(self._served.items()):
                try:
                    out[name] = self._load_and_swap(name, served.path, served.seq).version
                except ModelLoadError as exc:
                    log.error("reload refused, keeping the old model: %s [%s]", exc, exc.code)
        return out

    def sync_from_state(self) -> list[str]:
        """Follow reloads recorded by other workers; returns the names reloaded.  Cheap if unchanged."""
        if not self.run_dir:
            return []
        try:
            st = os.stat(self.run_dir / STATE_FILE)
        except FileNotFoundError:
            return []
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._state_stamp or not self._reload_lock.acquire(blocking=False):
            return []  # unchanged, or a reload runs here now (the next poll looks again)
        try:
            self._state_stamp = stamp
            done = []
            for name, entry in self._read_state().items():
                served = self._served.get(name)
                if served is None or int(entry.get("seq", 0)) <= served.seq:
                    continue
                try:
                    self._load_and_swap(name, Path(entry["path"]), int(entry["seq"]))
                    done.append(name)
                except ModelLoadError as exc:
                    served.seq = int(entry["seq"])  # do not retry a refused artifact
                    log.error("reload refused, keeping the old model: %s [%s]", exc, exc.code)
            return done
        finally:
            self._reload_lock.release()

    # --- internals ------------------------------------------------------------------------
    def _load_and_swap(self, name: str, path: Path, seq: int):
        new = load_and_warm(self.loader, name, path)
        self._swap(name, new, path, seq)
        return new

    def _swap(self, name: str, new, path: Path, seq: int) -> None:
        old = self._models.get(name)
        self._models = {**self._models, name: new}  # the one-step swap
        self._served[name] = _Served(path, seq)
        log.info("model %r now serves version %s from %s", name, new.version, path)
        self._notify(name, old, new)

    def _notify(self, name, old, new) -> None:
        if self.on_swap is not None:
            self.on_swap(name, old, new)

    def _read_state(self) -> dict:
        return read_state(self.run_dir) if self.run_dir else {}

    def _locked_state(self):
        assert self.run_dir is not None  # callers check it
        return locked_state(self.run_dir)


def read_state(run_dir: Path) -> dict:
    """The ``models`` mapping of the state file ({} when absent or unreadable)."""
    try:
        return json.loads((Path(run_dir) / STATE_FILE).read_text()).get("models", {})
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.error("unreadable reload state file %s: %s", Path(run_dir) / STATE_FILE, exc)
        return {}


@contextlib.contextmanager
def locked_state(run_dir: Path):
    """Read-modify-write the state file under an exclusive flock; written atomically."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "models.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            models = read_state(run_dir)
            yield models
            write_text(run_dir / STATE_FILE, json.dumps({"models": models}, indent=1))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def bump_all(run_dir: Path) -> None:
    """Ask every worker sharing ``run_dir`` to re-read every model (what SIGHUP does)."""
    with locked_state(run_dir) as models:
        for entry in models.values():
            entry["seq"] = int(entry.get("seq", 0)) + 1
