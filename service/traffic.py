"""Traffic between the loaded versions of one model name: pins, weighted splits, a shadow.

A name serves one *current* version (``Snapshot.models``) and may hold more versions loaded beside
it (``Snapshot.extra``, loaded with ``{"keep": true}``).  Which version answers a request:

1. ``"version"`` in the request pins one of the loaded versions (an unknown one is a 404 naming
   the loaded versions);
2. else, when the name has a :class:`Split`, its weights choose: a request giving
   ``"routing_key"`` (a user id, a session id: any string) is placed by a hash of (model name,
   key) — the same key always lands on the same version while the weights stay as they are —,
   a request without one by a random draw;
3. else the current version.

Weights of versions not loaded (retired since, or replaced by a reload) count as zero; a split with
no loaded weight left routes to the current version.  A split may name a *shadow* version, scored
on a sampled fraction of the requests after their reply is sent (service/shadow.py).

A split is state like any other: set through ``PUT /v1/models/{name}/traffic``, recorded in the
replication log (``model.traffic``), applied by every worker and replica, restored at start-up.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

_U64 = struct.Struct("<Q")


class TrafficError(ValueError):
    """A traffic setting that cannot be applied (HTTP 422); the message names the field."""


class UnknownVersion(LookupError):
    def __init__(self, name: str, version: str, loaded: list[str]):
        super().__init__(f"model {name!r} has no loaded version {version!r}; loaded versions: {', '.join(loaded)}")
        self.name, self.version, self.loaded = name, version, loaded


def key_point(name: str, key: str) -> float:
    """A uniform point in [0, 1) for (model name, routing key): the same on every worker, replica
    and restart (BLAKE2b, not Python's salted ``hash``)."""
    h = hashlib.blake2b(f"{name}\x00{key}".encode(), digest_size=8).digest()
    return _U64.unpack(h)[0] / 2.0**64


@dataclass(frozen=True)
class Split:
    """Weights by version (any non-negative numbers, normalised over the loaded versions), an
    optional shadow version and the fraction of requests it scores."""

    weights: tuple[tuple[str, float], ...] = ()  # sorted by version: every process cumulates alike
    shadow: str | None = None
    shadow_fraction: float = 0.0

    def pick(self, u: float, loaded) -> str | None:
        """The version at point ``u`` in [0, 1) of the cumulated weights of ``loaded`` versions;
        None when no loaded version has weight."""
        live = [(v, w) for v, w in self.weights if w > 0 and v in loaded]
        total = sum(w for _, w in live)
        if not live or total <= 0:
            return None
        at, acc = u * total, 0.0
        for v, w in live:
            acc += w
            if at < acc:
                return v
        return live[-1][0]  # u * total rounded up to total

    def to_dict(self) -> dict:
        return {"weights": dict(self.weights), "shadow": self.shadow, "shadow_fraction": self.shadow_fraction}

    @staticmethod
    def from_dict(data: dict) -> Split | None:
        """The split a log entry or an admin request describes (None: no split), checked for shape
        only (whether the versions are loaded is checked by the caller that writes it)."""
        if not isinstance(data, dict):
            raise TrafficError("traffic: expected an object")
        unknown = set(data) - {"weights", "shadow", "shadow_fraction"}
        if unknown:
            raise TrafficError(f"traffic: unknown field(s) {sorted(unknown)}; expected weights, shadow, "
                               "shadow_fraction")
        weights = data.get("weights") or {}
        if not isinstance(weights, dict):
            raise TrafficError("traffic.weights: expected an object {version: weight}")
        out = []
        for v, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
                raise TrafficError(f"traffic.weights[{v!r}]: expected a finite number >= 0, got {w!r}")
            out.append((str(v), float(w)))
        if weights and sum(w for _, w in out) <= 0:
            raise TrafficError("traffic.weights: at least one weight must be > 0")
        shadow = data.get("shadow")
        if shadow is not None and not isinstance(shadow, str):
            raise TrafficError(f"traffic.shadow: expected a version string or null, got {shadow!r}")
        frac = data.get("shadow_fraction", 0.0 if shadow is None else 1.0)
        if isinstance(frac, bool) or not isinstance(frac, int | float) or not 0.0 <= frac <= 1.0:
            raise TrafficError(f"traffic.shadow_fraction: expected a number in [0, 1], got {frac!r}")
        if not out and shadow is None:
            return None
        return Split(tuple(sorted(out)), shadow, float(frac) if shadow is not None else 0.0)

    def check(self, name: str, loaded: list[str]) -> None:
        """Every version named is loaded (TrafficError naming the loaded ones otherwise)."""
        for v in [v for v, _ in self.weights] + ([self.shadow] if self.shadow else []):
            if v not in loaded:
                raise TrafficError(f"traffic of {name!r}: version {v!r} is not loaded; loaded versions: "
                                   f"{', '.join(loaded)}")
