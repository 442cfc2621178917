"""Locust load test for POST /v1/rank at a fixed request rate, recording raw per-request timings.

    ADRANK_LT_POOL=pool.jsonl ADRANK_LT_MODEL=dplr-2 ADRANK_LT_RPS=40 ADRANK_LT_TIMINGS=out.csv \\
        locust -f loadtest/locustfile.py --headless -u 8 -r 8 -t 20s --host http://127.0.0.1:8000

Bodies come from a pool written by ``loadtest.auctions.write_pool`` (realistic auctions: long-tail
candidate counts, Zipf-popular raw values, some unseen and missing), cycled in order from a
per-user offset, each prefixed with ``"model": ADRANK_LT_MODEL``.  The offered rate is fixed, open loop: every user of ``-u U``
follows its own arrival schedule (loadtest/arrivals.py, ``ADRANK_LT_ARRIVALS`` = ``poisson`` or
``uniform``) from a common epoch and sleeps until its next arrival, whatever the replies took.
(Locust's ``constant_throughput`` is not used: users spawned at a fixed rate with a common period
fall into a few phases and send their requests in bursts.)

Locust's own statistics round to whole milliseconds; a ``request`` event listener keeps the raw
float time of every request and writes ``start_unix,seconds,status,candidates`` rows to
``ADRANK_LT_TIMINGS`` when the test stops (``adrank loadtest compare`` reads them).
"""

from __future__ import annotations

import functools
import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

from locust import FastHttpUser, events, task

# `loadtest` is importable as a package: installed with adrank, or PYTHONPATH names the folder above
# it (the compose file does; so does `adrank loadtest compare` for a source checkout)
from loadtest.arrivals import KINDS, Schedule
from loadtest.auctions import open_replacing, with_model

SPAWN_SLACK = 1.0  # s from the first user's start to the common epoch: every user is spawned by then


@dataclass(frozen=True)
class Options:
    """This load test's settings: ``ADRANK_LT_*`` variables (written by ``adrank loadtest compare``,
    loadtest/compare.py, or by the compose file), read once when Locust starts, never at import."""

    pool: str
    model: str
    rps: float
    users: int
    arrivals: str
    timings: str

    @classmethod
    def from_env(cls) -> Options:
        env = os.environ
        opts = cls(pool=env.get("ADRANK_LT_POOL", ""), model=env.get("ADRANK_LT_MODEL", ""),
                   rps=float(env.get("ADRANK_LT_RPS", "10")), users=int(env.get("ADRANK_LT_USERS", "1")),
                   arrivals=env.get("ADRANK_LT_ARRIVALS", "poisson"), timings=env.get("ADRANK_LT_TIMINGS", ""))
        if opts.arrivals not in KINDS:
            raise SystemExit(f"locustfile: ADRANK_LT_ARRIVALS={opts.arrivals!r} is not one of {KINDS}")
        return opts


@functools.cache
def options() -> Options:
    return Options.from_env()


_bodies: list[tuple[bytes, int]] = []
_timings: list[tuple[float, float, int, int]] = []
_next_user = itertools.count()
_epoch: list[float] = []


def _load_pool() -> None:
    if _bodies:
        return
    pool, model = options().pool, options().model
    if not pool or not Path(pool).is_file():
        raise SystemExit(f"locustfile: ADRANK_LT_POOL={pool!r} is not a request pool file")
    for line in Path(pool).read_bytes().splitlines():
        if line.strip():
            body = with_model(line, model) if model else line
            _bodies.append((body, line.count(b'"id":')))


@events.init.add_listener
def _on_init(**_kw) -> None:
    options()  # a bad setting stops Locust before any user starts


@events.test_start.add_listener
def _on_start(environment, **_kw) -> None:
    _load_pool()


@events.request.add_listener
def _on_request(request_type, name, response_time, response_length, response=None, exception=None,
                context=None, start_time=None, **_kw) -> None:
    status = getattr(response, "status_code", 0) or 0
    if exception is not None and not status:
        status = -1
    _timings.append((start_time or 0.0, response_time / 1000.0, int(status), int((context or {}).get("n", 0))))


@events.test_stop.add_listener
def _on_stop(environment, **_kw) -> None:
    if not options().timings:
        return
    with open_replacing(options().timings, "w") as fh:
        fh.write("start_unix,seconds,status,candidates\n")
        fh.writelines(f"{s:.6f},{t:.9f},{c},{n}\n" for s, t, c, n in _timings)


class RankUser(FastHttpUser):
    def on_start(self) -> None:
        _load_pool()
        index = next(_next_user)
        self._order = itertools.cycle(range(len(_bodies)))
        for _ in range((index * 7919) % len(_bodies)):  # users start at different requests
            next(self._order)
        if not _epoch:
            _epoch.append(time.monotonic() + SPAWN_SLACK)
        opts = options()
        self._schedule = Schedule(opts.arrivals, opts.rps, max(opts.users, index + 1), index)
        self._schedule.skip_to(time.monotonic() - _epoch[0])
        time.sleep(max(0.0, _epoch[0] + self._schedule.t - time.monotonic()))  # gevent: yields

    def wait_time(self) -> float:
        """Seconds until this user's next scheduled arrival (0 when behind schedule)."""
        return max(0.0, _epoch[0] + self._schedule.next() - time.monotonic())

    @task
    def rank(self) -> None:
        body, n = _bodies[next(self._order)]
        with self.client.post("/v1/rank", data=body, headers={"content-type": "application/json"},
                              name="/v1/rank", context={"n": n}, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200] if resp.text else ''}")
