"""Prometheus metrics (names and labels from DESIGN §6); multiprocess-aware exposition.

Labels are bounded: ``endpoint`` is a route template, ``model`` a *loaded* model's name (a
request refused before its model is known — shed, malformed, naming an unknown model — is
counted under the model its body names if that is served, else ``model="unknown"``), ``code`` an
HTTP status.  Never an ad, user or request id.

Saturation: ``adrank_inflight_requests`` (summed over workers), ``adrank_queue_wait_seconds``
(from a request's last byte to the start of its scoring: what the deadline sheds on), and
per-worker process series (``adrank_process_*``, a ``pid`` label per live worker) refreshed
every few seconds by each worker itself, since the client library's process collector does not
work across processes.

With several uvicorn workers, ``PROMETHEUS_MULTIPROC_DIR`` (set by ``adrank serve`` before
any worker starts) makes prometheus-client keep every value in per-process files that
``render()`` aggregates: counters and histograms are summed; ``adrank_model_info`` keeps a
``pid`` label per live worker (``liveall``), so a half-finished rolling reload is visible.
"""

from __future__ import annotations

import gc
import os
import resource
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

#: 0.1 ms .. 1 s: the library's defaults start at 5 ms, above most of our requests.
# Dense from 0.3 to 6 ms, where /v1/rank answers (edges 12-25 % apart): histogram_quantile
# interpolates linearly inside a bucket, so a P99 is only as fine as the buckets around it.
LATENCY_BUCKETS = (0.0001, 0.0002, 0.0003, 0.0004, 0.0005, 0.0006, 0.00075, 0.0009, 0.001, 0.00125, 0.0015,
                   0.00175, 0.002, 0.0025, 0.003, 0.0035, 0.004, 0.005, 0.006, 0.0075, 0.01, 0.015, 0.025,
                   0.05, 0.1, 0.25, 0.5, 1.0)
CANDIDATE_BUCKETS = (1, 5, 10, 25, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

REQUEST_DURATION = Histogram(
    "adrank_request_duration_seconds",
    "Time in the server from the request entering the handler to the response body being ready.",
    ["endpoint", "model"], buckets=LATENCY_BUCKETS)
INFERENCE_DURATION = Histogram(
    "adrank_model_inference_duration_seconds",
    "Time in Ranker.rank: encoding the raw values, scoring, sorting.",
    ["model"], buckets=LATENCY_BUCKETS)
REQUEST_CANDIDATES = Histogram(
    "adrank_request_candidates", "Candidate ads per ranking request.", ["model"],
    buckets=CANDIDATE_BUCKETS)
REQUESTS = Counter(
    "adrank_requests", "Requests by endpoint, model and HTTP status code.",
    ["endpoint", "model", "code"])
MODEL_INFO = Gauge(
    "adrank_model_info", "1 for the artifact version each model serves now, 0 for replaced ones.",
    ["model", "version"], multiprocess_mode="liveall")


LOAD_BUCKETS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
MODEL_LOADS = Counter(
    "adrank_model_loads", "Model loads and reloads by result: ok, refused (the old version keeps serving), "
    "skipped (a log entry this process could not apply).", ["model", "result"])
MODEL_LOAD_DURATION = Histogram(
    "adrank_model_load_duration_seconds", "Reading, verifying and warming one model version.", ["model"],
    buckets=LOAD_BUCKETS)
SNAPSHOT_TIME = Gauge(
    "adrank_snapshot_published_timestamp_seconds", "Unix time the serving snapshot of this process was published "
    "(its age: time() - this).", multiprocess_mode="liveall")
LOG_POSITION = Gauge(
    "adrank_log_position", "The last replication-log entry this process has applied.", multiprocess_mode="liveall")
LOG_ENTRIES = Counter(
    "adrank_log_entries", "Replication-log entries by kind and result: applied, or skipped (corrupt, or refused "
    "here; reported in the log).", ["kind", "result"])


# Per version: ``version`` is always a *loaded* version's label (the one that answered), never a
# value taken from a request, so the label sets stay as few as the versions ever loaded.
VERSION_REQUESTS = Counter(
    "adrank_version_requests", "Ranking requests answered, by model and the version that scored them.",
    ["model", "version"])
VERSION_DURATION = Histogram(
    "adrank_version_inference_duration_seconds", "Time in the ranking pipeline (parse, encode, score, sort), by "
    "model and the version that scored the request.", ["model", "version"], buckets=LATENCY_BUCKETS)
SHADOW_REQUESTS = Counter(
    "adrank_shadow_requests", "Requests scored again on a shadow version after their reply was sent, by result: "
    "scored, dropped (the shadow queue was full), failed.", ["model", "version", "shadow", "result"])
SHADOW_SCORE_DIFF = Histogram(
    "adrank_shadow_score_abs_diff", "Per shadowed request: the mean |shadow score - served score| over the ads "
    "both returned.", ["model", "version", "shadow"],
    buckets=(0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0))
SHADOW_TOPK_OVERLAP = Histogram(
    "adrank_shadow_topk_overlap", "Per shadowed request: the fraction of the served top-k (the ads returned) that "
    "the shadow version also ranks in its top-k (1 = same set).", ["model", "version", "shadow"],
    buckets=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0))
SHADOW_DURATION = Histogram(
    "adrank_shadow_duration_seconds", "Time scoring one request on its shadow version (off the reply's path).",
    ["model", "shadow"], buckets=LATENCY_BUCKETS)


def model_kept(name: str, new) -> None:
    """A version loaded beside the current one serves too (pinned or split requests)."""
    MODEL_INFO.labels(name, new.version).set(1)


def model_retired(name: str, version: str) -> None:
    MODEL_INFO.labels(name, version).set(0)


def model_swapped(name: str, old, new) -> None:
    """The info gauge follows every (re)load."""
    if old is not None and old.version != new.version:
        MODEL_INFO.labels(name, old.version).set(0)
    MODEL_INFO.labels(name, new.version).set(1)


def snapshot_published(snap) -> None:
    SNAPSHOT_TIME.set(snap.published)
    LOG_POSITION.set(snap.position)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render() -> tuple[bytes, str]:
    """(exposition body, content type); aggregates every worker in multiprocess mode."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def worker_exited() -> None:
    """Drop this worker's live gauges (lifespan shutdown) so dead workers do not linger."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(os.getpid())


UNKNOWN_MODEL = "unknown"
QUEUE_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
QUEUE_WAIT = Histogram(
    "adrank_queue_wait_seconds", "Time from an admitted /v1/rank request's last byte to the start of its "
    "scoring (requests over ADRANK_QUEUE_BUDGET are shed instead: adrank_shed).", buckets=QUEUE_BUCKETS)
SHED = Counter("adrank_shed", "/v1/rank requests answered 503 because they queued longer than ADRANK_QUEUE_BUDGET.")
INFLIGHT = Gauge("adrank_inflight_requests", "Requests between the end of their headers and the end of their "
                 "reply, slow clients included (sampled every few seconds and at each scrape).",
                 multiprocess_mode="livesum")
PROCESS_CPU = Gauge("adrank_process_cpu_seconds", "CPU time (user + system) of this worker.", multiprocess_mode="liveall")
PROCESS_RSS = Gauge("adrank_process_resident_memory_bytes", "Resident memory of this worker.",
                    multiprocess_mode="liveall")
PROCESS_FDS = Gauge("adrank_process_open_fds", "Open file descriptors of this worker.", multiprocess_mode="liveall")
PROCESS_GC = Gauge("adrank_process_gc_collections", "Garbage collections of this worker by generation.",
                   ["generation"], multiprocess_mode="liveall")
PROCESS_START = Gauge("adrank_process_start_time_seconds", "Unix time this worker started.",
                      multiprocess_mode="liveall")
PROCESS_INTERVAL = 5.0  # seconds between refreshes of the process series
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def refresh_process() -> None:
    """This worker's CPU, RSS, fds and GC counts into its process series."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    PROCESS_CPU.set(ru.ru_utime + ru.ru_stime)
    try:
        with open("/proc/self/statm") as f:
            PROCESS_RSS.set(int(f.read().split()[1]) * _PAGE)
        PROCESS_FDS.set(len(os.listdir("/proc/self/fd")))
    except OSError:  # not Linux: RSS high-water mark instead, no fd count
        PROCESS_RSS.set(ru.ru_maxrss * 1024)
    for gen, st in enumerate(gc.get_stats()):
        PROCESS_GC.labels(str(gen)).set(st["collections"])


def process_started() -> None:
    PROCESS_START.set(time.time())
    refresh_process()
