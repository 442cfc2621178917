"""A click model's calibration map: raw score (logit) -> calibrated click probability.

An artifact may carry one in its manifest (docs/artifact-format.md, "calibration"), fitted on
the validation split at export (exporter/calibrate.py).  Two methods, both monotone
non-decreasing in the raw score, so they never change a ranking by score:

* ``platt``: ``p = sigmoid(a * z + b)`` with ``a > 0`` (Platt scaling of the logit ``z``);
* ``isotonic``: ``p = interp(sigmoid(z), x, y)``: piecewise linear through the knots
  ``(x[i], y[i])`` (``x`` strictly increasing probabilities, ``y`` non-decreasing in [0, 1]),
  constant ``y[0]`` below ``x[0]`` and ``y[-1]`` above ``x[-1]``.

This module only reads and applies a map (numpy only: the core imports nothing above it); the
service applies it in service/link.py, after the sigmoid, wherever scores become probabilities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

METHODS = ("platt", "isotonic")


class CalibrationError(ValueError):
    """A manifest's calibration section that cannot be applied; the message says why."""


def _sigmoid(z: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@dataclass(frozen=True)
class Calibration:
    method: str
    a: float = 1.0
    b: float = 0.0
    x: np.ndarray | None = None  # isotonic knots: probabilities, strictly increasing
    y: np.ndarray | None = None  # calibrated probabilities at the knots, non-decreasing

    def __call__(self, raw) -> np.ndarray:
        """Calibrated probabilities of raw scores (float64, any shape)."""
        z = np.asarray(raw, dtype=np.float64)
        if self.method == "platt":
            return _sigmoid(self.a * z + self.b)
        assert self.x is not None and self.y is not None
        return np.interp(_sigmoid(z), self.x, self.y)

    def describe(self) -> dict:
        """What ``GET /v1/models`` and ``adrank inspect`` show (the knots counted, not listed)."""
        if self.method == "platt":
            return {"method": "platt", "a": self.a, "b": self.b}
        assert self.x is not None
        return {"method": "isotonic", "knots": int(len(self.x))}

    @staticmethod
    def from_manifest(section) -> Calibration:
        """The map a manifest's ``calibration`` section describes (CalibrationError if unusable)."""
        if not isinstance(section, dict):
            raise CalibrationError("calibration must be a JSON object")
        method = section.get("method")
        if method == "platt":
            a, b = section.get("a"), section.get("b")
            for name, v in (("a", a), ("b", b)):
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    raise CalibrationError(f"calibration {name!r} must be a finite number, got {v!r}")
            if not a > 0:  # type: ignore[operator]
                raise CalibrationError(f"calibration 'a' must be > 0 (a map that keeps the order), got {a!r}")
            return Calibration("platt", float(a), float(b))  # type: ignore[arg-type]
        if method == "isotonic":
            try:
                x = np.asarray(section.get("x"), dtype=np.float64)
                y = np.asarray(section.get("y"), dtype=np.float64)
            except (TypeError, ValueError):
                raise CalibrationError("calibration 'x' and 'y' must be lists of numbers") from None
            if x.ndim != 1 or y.shape != x.shape or len(x) < 2:
                raise CalibrationError("calibration 'x' and 'y' must be lists of the same length >= 2")
            if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
                raise CalibrationError("calibration knots must be finite")
            if np.any(np.diff(x) <= 0) or x[0] < 0 or x[-1] > 1:
                raise CalibrationError("calibration 'x' must be strictly increasing probabilities in [0, 1]")
            if np.any(np.diff(y) < 0) or y[0] < 0 or y[-1] > 1:
                raise CalibrationError("calibration 'y' must be non-decreasing probabilities in [0, 1]")
            x.flags.writeable = y.flags.writeable = False
            return Calibration("isotonic", x=x, y=y)
        raise CalibrationError(f"calibration method must be one of {METHODS}, got {method!r}")


def of_manifest(manifest: dict) -> Calibration | None:
    """The manifest's calibration map, or None when it carries none (CalibrationError if bad)."""
    section = manifest.get("calibration")
    return None if section is None else Calibration.from_manifest(section)
