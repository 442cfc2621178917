"""Open-loop arrival schedules for the load generator's users (loadtest/locustfile.py).

``users`` users share one offered rate ``rps``; each keeps its own schedule of arrival times
(seconds from a common epoch) and sleeps until the next one, whatever its replies took:

* ``poisson``: exponential gaps of mean ``users / rps`` per user, so together the users are one
  Poisson stream at ``rps`` (independent Poisson streams superpose to one): requests sometimes
  arrive together and queue, as they do in production;
* ``uniform``: user i at ``i / rps`` and then every ``users / rps``, so together an evenly spaced
  comb at ``rps``: no two requests overlap while a reply takes less than ``1 / rps``.
"""

from __future__ import annotations

import random

KINDS = ("poisson", "uniform")


class Schedule:
    """Arrival times of user ``index`` of ``users``; ``next()`` returns the following one."""

    def __init__(self, kind: str, rps: float, users: int, index: int, seed: int = 0):
        if kind not in KINDS:
            raise ValueError(f"arrivals must be one of {KINDS}, got {kind!r}")
        if rps <= 0 or users < 1 or not 0 <= index < users:
            raise ValueError(f"need rps > 0, users >= 1 and 0 <= index < users (got {rps}, {users}, {index})")
        self.kind, self.rps = kind, rps
        self.gap = users / rps  # this user's mean time between arrivals
        self._rng = random.Random(seed * 1_000_003 + index)
        self.t = index / rps if kind == "uniform" else self._rng.expovariate(1 / self.gap)

    def next(self) -> float:
        self.t += self.gap if self.kind == "uniform" else self._rng.expovariate(1 / self.gap)
        return self.t

    def skip_to(self, t: float) -> float:
        """The first arrival at or after ``t`` (a user that started late joins its schedule there)."""
        while self.t < t:
            self.next()
        return self.t
