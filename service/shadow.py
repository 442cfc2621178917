"""Shadow scoring: a sampled request scored again on the name's shadow version, off the reply's path.

The pipeline (service/pipeline.py) hands back a job for a sampled request (``pipeline.shadow_job``,
which records :func:`agreement` in the metrics); the HTTP layer submits it here only once the reply
has been sent (a Starlette background task), and the job runs in one daemon worker thread.  The reply is never delayed, changed or failed by it: the shadow parses the
same body with its own encoder, scores it against the same snapshot, and only metrics come out of
it — the mean absolute score difference over the ads both versions return and the top-k overlap
(the share of the served ads that the shadow also ranks in its top-k).  When the queue is full the
job is dropped and counted (``result="dropped"``): a slow shadow never builds up memory.
"""

from __future__ import annotations

import logging
import queue
import threading

import numpy as np

from service import metrics

log = logging.getLogger("adrank.shadow")
QUEUE = 64  # jobs waiting at most; beyond that new ones are dropped
_jobs: queue.Queue = queue.Queue(QUEUE)
_worker: threading.Thread | None = None
_lock = threading.Lock()


def agreement(served_order, served_scores, shadow_order, shadow_scores) -> tuple[float | None, float | None]:
    """(mean |score difference| over the ads in both rankings or None, top-k overlap or None):
    ``order`` arrays hold the same ad positions for both (the request's ads, or catalog rows)."""
    a = dict(zip(np.asarray(served_order).tolist(), np.asarray(served_scores).tolist(), strict=True))
    b = dict(zip(np.asarray(shadow_order).tolist(), np.asarray(shadow_scores).tolist(), strict=True))
    common = a.keys() & b.keys()
    diff = float(np.mean([abs(a[i] - b[i]) for i in common])) if common else None
    overlap = len(common) / len(a) if a else None
    return diff, overlap


def submit(job) -> None:
    """Queue ``job`` for the shadow thread (started on first use); drop it when the queue is full."""
    global _worker
    if _worker is None:
        with _lock:
            if _worker is None:
                _worker = threading.Thread(target=_run, name="adrank-shadow", daemon=True)
                _worker.start()
    try:
        _jobs.put_nowait(job)
    except queue.Full:
        served, shadow = job.args[3], job.args[4]
        metrics.SHADOW_REQUESTS.labels(served.name, served.version, shadow.version, "dropped").inc()


def _run() -> None:
    while True:
        job = _jobs.get()
        try:
            job()
        except Exception:  # noqa: BLE001 - the shadow thread outlives any job
            log.exception("shadow job failed")
        finally:
            _jobs.task_done()


def drain(timeout: float = 10.0) -> bool:
    """Wait until every queued job has run (tests, shut-down); False on timeout."""
    done = threading.Event()

    def wait():
        _jobs.join()
        done.set()

    threading.Thread(target=wait, daemon=True).start()
    return done.wait(timeout)
