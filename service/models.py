"""Loading one model version: read (into private memory) -> verify -> build -> warm.

:func:`load_version` turns an artifact path into a :class:`~service.snapshot.ModelVersion`: the
Ranker (arrays, encoder, scorer, fast-path scanner, every kernel compiled or taken from Numba's
cache) and the catalog's view of the same arrays.  Nothing is swapped here: service/state.py
publishes the version in the next snapshot only once it is complete, so a model that fails to
load, verify or warm is never served and the old one keeps serving (DESIGN §6).

An HTTP reload runs in a daemon thread (service/routes.py): a read stuck in the kernel (a hung
network file system) can then neither hold the server's shut-down nor the event loop, and the
reload lock is taken without waiting, so one stuck reload answers the next with 409 instead of
wedging it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from service import warmup
from service.snapshot import ModelVersion, UnknownModel

__all__ = ["ModelLoadError", "SchemaChanged", "UnknownModel", "load_ranker", "load_version", "same_schema"]


class ModelLoadError(Exception):
    """A model that could not be loaded; ``code`` is the artifact's named error code."""

    def __init__(self, name: str, path: Path | None, code: str, message: str):
        super().__init__(f"model {name!r} from {path}: {message} [{code}]")
        self.name, self.path, self.code, self.detail = name, path, code, message


class SchemaChanged(ModelLoadError):
    """A reload to an artifact of another schema, not asked for with ``force``."""

    def __init__(self, name: str, path: Path | None, old, new):
        diff = _schema_diff(old, new)
        super().__init__(name, path, "schema_changed",
                         f"the artifact's schema differs from the one served ({diff}); clients send values for "
                         "the served fields: reload with {\"force\": true} to switch anyway")


def _schema_diff(old, new) -> str:
    a = {f.name: (f.type, f.role, f.width) for f in old.fields}
    b = {f.name: (f.type, f.role, f.width) for f in new.fields}
    parts = [f"removed {sorted(set(a) - set(b))}"] if set(a) - set(b) else []
    parts += [f"added {sorted(set(b) - set(a))}"] if set(b) - set(a) else []
    parts += [f"changed {sorted(n for n in set(a) & set(b) if a[n] != b[n])}"] if any(
        a[n] != b[n] for n in set(a) & set(b)) else []
    return ", ".join(parts) or "field order"


def same_schema(a, b) -> bool:
    return a.to_dict() == b.to_dict()


def load_ranker(path: Path, name: str, **options):
    """The default loader: the artifact at ``path`` as a Ranker named ``name``; ``options`` go to
    ``Ranker.load`` (the read timeout and the scorer's options: ``Settings.scorer_options()``)."""
    from service.ranker import Ranker  # imported here so tests can run with a fake loader

    return Ranker.load(path, name=name, **options)


def load_version(name: str, path: str | Path, loader: Callable = load_ranker) -> ModelVersion:
    """Load + verify + warm the artifact at ``path`` as ``name`` with ``loader(path, name)``;
    errors -> ModelLoadError."""
    from service.catalog.store import Model

    t0 = time.perf_counter()
    path = Path(path).expanduser().resolve()
    try:
        started = warmup.loading(name, path)
        ranker = loader(path, name)
        warmup.loaded(name, ranker, started)
        with warmup.warming(name):
            ranker.warm()
            catalog_model = Model.from_ranker(ranker, name)  # compiles (or loads) the catalog's kernels too
    except FileNotFoundError:
        raise ModelLoadError(name, path, "not_found", f"no such file: {path}") from None
    except IsADirectoryError:
        raise ModelLoadError(name, path, "not_a_regular_file", f"{path} is a directory") from None
    except Exception as exc:  # ArtifactError carries .code; anything else is a load failure
        code = getattr(exc, "code", None) or "load_failed"
        raise ModelLoadError(name, path, str(code), str(exc) or type(exc).__name__) from exc
    return ModelVersion(name, ranker, catalog_model, path, load_seconds=time.perf_counter() - t0)
