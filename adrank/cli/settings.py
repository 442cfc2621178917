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


@dataclass(frozen=True)
class CliSettings:
    cache: Path | None  # ADRANK_CACHE: the encoded-data cache of train/experiment (None: training.data's default)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> CliSettings:
        env = os.environ if env is None else env
        return cls(cache=Path(env["ADRANK_CACHE"]) if env.get("ADRANK_CACHE") else None)
