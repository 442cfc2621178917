"""The command line's own settings: the ``ADRANK_*`` variables that are not serving knobs.

Read here and nowhere else, when a command runs (never at import).  The serving knobs
(``ADRANK_MODELS``, ``ADRANK_MAX_CANDIDATES``, ...) belong to ``service.settings.Settings``,
which ``adrank serve`` uses; the README's settings table lists both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from adrank.core.errors import UserError

DEFAULT_HOME = "~/.cache/adrank/default"


@dataclass(frozen=True)
class CliSettings:
    home: Path  # ADRANK_HOME: where the embedded default models are built and cached
    cache: Path | None  # ADRANK_CACHE: the encoded-data cache of train/experiment (None: training.data's default)
    default_rows: int | None  # ADRANK_DEFAULT_ROWS: shrink the default models' data set (tests)
    default_epochs: int | None  # ADRANK_DEFAULT_EPOCHS: ... and their training

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CliSettings:
        env = os.environ if env is None else env
        return cls(home=Path(env.get("ADRANK_HOME") or DEFAULT_HOME).expanduser(),
                   cache=Path(env["ADRANK_CACHE"]) if env.get("ADRANK_CACHE") else None,
                   default_rows=_positive(env, "ADRANK_DEFAULT_ROWS"),
                   default_epochs=_positive(env, "ADRANK_DEFAULT_EPOCHS"))


def _positive(env: Mapping[str, str], key: str) -> int | None:
    raw = env.get(key)
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"{key}={raw!r} is not an integer") from None
    if value < 1:
        raise UserError(f"{key}={value} must be >= 1")
    return value
