"""`adrank loadtest compare`: the same fixed-rate traffic against each model in turn, one server.

Procedure (all on loopback, every step bounded in time):

1. build one request pool (loadtest/auctions.py) — byte-identical traffic for every model — and
   measure each model in process on it (thread-CPU ms per request of encoding, scoring and the
   whole ``Ranker.rank``: the cost without HTTP, queueing or the load generator);
2. start ONE ``adrank serve`` on 127.0.0.1 hosting every compared model (same process, same
   workers, same settings) and wait for /readyz;
3. warm-up: a short untimed run per model;
4. ``repeats`` rounds, each running every model once in the given order (A B A B ...), one model
   at a time: scrape /metrics, run headless Locust (loadtest/locustfile.py) for ``duration``
   seconds at ``rps`` requests/s, scrape /metrics again;
5. per model: client-side percentiles from the raw per-request timings of all its runs,
   server-side percentiles from the *difference* of the Prometheus histograms
   ``adrank_request_duration_seconds`` and ``adrank_model_inference_duration_seconds`` (bucket
   interpolation, as PromQL's histogram_quantile), achieved RPS and error rate;
6. write ``loadtest-<name>.md`` (table + command), ``.json`` (every run) and ``.png``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import httpx
import numpy as np

from adrank.client import AdrankError, Client
from loadtest.arrivals import KINDS
from loadtest.report import AGAIN, write_report
from loadtest.traffic import TrafficError, build_pool

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
REQUEST = "adrank_request_duration_seconds"
INFERENCE = "adrank_model_inference_duration_seconds"


class LoadTestError(RuntimeError):
    """A load test that could not run: names the step that failed."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback only
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


# --- CPU placement -----------------------------------------------------------------------------
def split_cpus(spec: str = "auto") -> tuple[frozenset[int], frozenset[int]] | None:
    """(server CPUs, load-generator CPUs), or None (no pinning).

    ``auto``: with two or more usable CPUs the server gets the upper half, Locust the lower half,
    so the load generator never takes CPU time from the server it measures (on a 2-core machine
    their contention is the largest source of tail latency).  ``none``: no pinning.  Otherwise
    ``SERVER/CLIENT`` CPU lists, e.g. ``1/0`` or ``2,3/0,1``."""
    usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if spec == "none":
        return None
    if spec == "auto":
        if len(usable) < 2:
            return None
        half = len(usable) // 2
        return frozenset(usable[half:]), frozenset(usable[:half])
    try:
        server, client = (frozenset(int(c) for c in part.split(",")) for part in spec.split("/"))
    except ValueError:
        raise LoadTestError(f"--pin {spec!r}: expected auto, none or SERVER/CLIENT CPU lists like 1/0") from None
    unknown = sorted((server | client) - set(usable))
    if unknown or not server or not client:
        raise LoadTestError(f"--pin {spec!r}: CPUs {unknown or 'missing'} are not usable here (usable: {usable})")
    return server, client


def _pinned(cpus: frozenset[int] | None):
    """A ``preexec_fn`` that pins the child to ``cpus`` (None: no function)."""
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


# --- server ----------------------------------------------------------------------------------
class Server:
    """``adrank serve`` on 127.0.0.1 in a child process group; stopped by its own pid."""

    def __init__(self, specs: list[str], workers: int, run_dir: Path, log_path: Path, ready_timeout: float,
                 cpus: frozenset[int] | None = None, extra: tuple[str, ...] = ()):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.client = Client(self.base, timeout=10)  # adrank.client: readiness and /metrics
        cmd = [sys.executable, "-c", "import sys; from adrank.cli import main; sys.exit(main())", "serve", *specs, "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", str(workers), "--no-access-log", "--log-level", "warning", "--run-dir", str(run_dir),
               "--state-dir", str(run_dir / "state"),
               "--max-candidates", "10000", *extra]
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=_pinned(cpus))
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise LoadTestError(f"the server exited with code {self.proc.returncode} before it was ready; "
                                    f"see {log_path}")
            if self.client.ready():
                return
            time.sleep(0.5)
        self.stop()
        raise LoadTestError(f"the server was not ready within {ready_timeout:.0f} s; see {log_path}")

    def metrics(self) -> str:
        try:
            return self.client.metrics()
        except (AdrankError, httpx.HTTPError) as exc:
            raise LoadTestError(f"GET /metrics failed: {exc}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()
        self.client.close()


class Running:
    """A server someone else started on 127.0.0.1:``port`` (e.g. scripts/run): measured, never stopped."""

    def __init__(self, port: int, names: list[str]):
        self.port, self.base = port, f"http://127.0.0.1:{port}"
        self.client = Client(self.base, timeout=10)
        status, body = get(f"{self.base}/readyz")
        if status != 200:
            raise LoadTestError(f"no ready adrank server on 127.0.0.1:{port} (GET /readyz: "
                                f"{status or 'no answer'}); start one (scripts/run, adrank serve) or drop --port")
        served = json.loads(get(f"{self.base}/v1/models")[1] or b"{}").get("models", [])
        self.models = {m["name"]: m for m in served}
        unknown = [n for n in names if n not in self.models]
        if unknown:
            raise LoadTestError(f"the server on 127.0.0.1:{port} serves {', '.join(self.models) or 'no model'}, "
                                f"not {', '.join(unknown)}")

    def metrics(self) -> str:
        return Server.metrics(self)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.client.close()


# --- Prometheus histograms -------------------------------------------------------------------
def histograms(text: str, metric: str, model: str) -> dict[float, float]:
    """{le: cumulative count} of ``metric`` for ``model`` (/v1/rank only for request durations)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[float, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name != metric:
            continue
        for s in fam.samples:
            if not s.name.endswith("_bucket") or s.labels.get("model") != model:
                continue
            if "endpoint" in s.labels and s.labels["endpoint"] != "/v1/rank":
                continue
            le = float(s.labels["le"])
            out[le] = out.get(le, 0.0) + s.value
    return out


def histogram_delta(before: dict, after: dict) -> dict[float, float]:
    return {le: after[le] - before.get(le, 0.0) for le in after}


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """PromQL's histogram_quantile: linear interpolation inside the bucket holding rank q*count."""
    les = sorted(buckets)
    if not les or buckets[les[-1]] <= 0:
        return None
    total = buckets[les[-1]]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le in les:
        c = buckets[le]
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 1.0)
        prev_le, prev_c = le, c
    return les[-2] if len(les) > 1 else None


# --- one Locust run ----------------------------------------------------------------------------
def run_locust(base: str, pool: Path, model: str, rps: float, duration: float, timings: Path, log: Path,
               cpus: frozenset[int] | None = None, arrivals: str = "poisson") -> None:
    users = max(2, int(np.ceil(rps / 5)))  # each user offers <= 5 req/s: a slow reply does not lower the rate
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "ADRANK_LT_POOL": str(pool), "ADRANK_LT_MODEL": model, "ADRANK_LT_RPS": str(rps),
           "ADRANK_LT_USERS": str(users), "ADRANK_LT_TIMINGS": str(timings),
           "ADRANK_LT_ARRIVALS": arrivals}
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(users), "-r", str(users),
           "-t", f"{duration:g}s", "--stop-timeout", "5", "--host", base, "--only-summary", "--loglevel", "WARNING"]
    with open(log, "ab") as fh:
        try:
            proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=duration + 60,
                                  check=False, preexec_fn=_pinned(cpus))
        except subprocess.TimeoutExpired:
            raise LoadTestError(f"locust did not finish within {duration + 60:.0f} s (model {model}); see {log}") from None
    if not timings.is_file():
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise LoadTestError(f"locust (exit code {proc.returncode}) wrote no timings for model {model}"
                            + (f": {' / '.join(tail)}" if tail else "") + f"; the whole log: {log}")


def read_timings(path: Path) -> np.ndarray:
    """Structured rows (start, seconds, status, candidates)."""
    with open(path) as fh:
        rows = [(float(r["start_unix"]), float(r["seconds"]), int(r["status"]), int(r["candidates"]))
                for r in csv.DictReader(fh)]
    return np.array(rows, dtype=[("start", "f8"), ("seconds", "f8"), ("status", "i4"), ("candidates", "i4")])


# --- in-process CPU cost per request (no HTTP, no queueing) -----------------------------------------
def cpu_breakdown(path, pool: Path, limit: int = 200) -> dict:
    """Mean thread-CPU ms per pooled request of the model's encoder, scorer and whole ``rank``, and,
    when the ranker has the compiled fast path (service/fastpath), of its body scan (raw bytes ->
    ids) and of the ``/v1/rank`` pipeline whole (service.pipeline.answer: scan + score + sort +
    response bytes)."""
    import msgspec

    from service.ranker import Ranker

    ranker = Ranker.load(path)
    ranker.warm()
    bodies = [line for line in pool.read_bytes().splitlines()[:limit] if line.strip()]
    reqs = [msgspec.json.decode(line) for line in bodies]
    enc = score = rank = 0.0
    for q in reqs:
        t0 = time.thread_time()
        ctx = ranker.encoder.encode_context(q["context"])
        _, X = ranker.encoder.encode_ads(q["ads"])
        t1 = time.thread_time()
        ranker.scorer.score(ctx, X)
        t2 = time.thread_time()
        ranker.rank(q["context"], q["ads"])
        rank += time.thread_time() - t2
        enc, score = enc + t1 - t0, score + t2 - t1
    n = max(len(reqs), 1)
    out = {"cpu_encode_ms": round(enc / n * 1e3, 3), "cpu_score_ms": round(score / n * 1e3, 4),
           "cpu_rank_ms": round(rank / n * 1e3, 3)}
    fp = getattr(ranker, "fastpath", None)
    if fp is not None:
        from service import pipeline
        from service.snapshot import of_rankers

        snap, scan_s, whole_s, fast = of_rankers({ranker.name: ranker}), 0.0, 0.0, 0
        for body in bodies:
            t0 = time.thread_time()
            ok = fp.scan(body) is not None
            t1 = time.thread_time()
            pipeline.answer(snap, body, 1 << 30)
            whole_s += time.thread_time() - t1
            ok = ok and pipeline.parse_fast(snap, body, 1 << 30) is not None
            scan_s, fast = scan_s + t1 - t0, fast + ok
        if fast == len(bodies):  # every pooled request takes the fast path
            out.update(cpu_fast_scan_ms=round(scan_s / n * 1e3, 3), cpu_fast_ms=round(whole_s / n * 1e3, 3))
    return out


def cpu_breakdown_catalog(paths: dict[str, str], pool: Path, ads: Path, limit: int = 200) -> dict[str, dict]:
    """Catalog traffic: per model, mean thread-CPU ms per pooled request of the ``/v1/rank``
    pipeline (service.pipeline.answer) against an in-process catalog of the same ads (context part
    + id lookups + per-ad dot products + sort + response bytes: what ``/v1/rank`` runs for these
    requests), and its median."""
    from loadtest.auctions import with_model
    from service import pipeline
    from service.catalog.store import read_jsonl
    from service.ranker import Ranker
    from service.snapshot import of_rankers

    rankers = {}
    for n, p in paths.items():
        rankers[n] = Ranker.load(p, name=n)
        rankers[n].warm()
    snap = of_rankers(rankers, read_jsonl(ads)[0])
    lines = [line for line in pool.read_bytes().splitlines()[:limit] if line.strip()]
    out = {}
    for n in rankers:
        bodies = [with_model(line, n) for line in lines]
        pipeline.answer(snap, bodies[0], 1 << 30)  # compile / first touch
        times = []
        for body in bodies:
            t0 = time.thread_time()
            got = pipeline.answer(snap, body, 1 << 30)
            times.append(time.thread_time() - t0)
            if got.mode != "catalog" or pipeline.parse_fast(snap, body, 1 << 30) is None:
                raise LoadTestError(f"model {n}: a pooled catalog request did not take the catalog fast path")
        out[n] = {"cpu_catalog_ms": round(float(np.mean(times)) * 1e3, 4),
                  "cpu_catalog_p50_ms": round(float(np.median(times)) * 1e3, 4)}
    return out


def round_order(names: list[str], rep: int) -> list[str]:
    """Round ``rep``'s model order: ``names`` rotated by ``rep``, so no model always runs first
    (right after the server's idle warm-up gap) or always follows the same neighbour."""
    k = rep % len(names)
    return names[k:] + names[:k]


# --- the comparison -----------------------------------------------------------------------------
def compare(specs: list[str], values_path, out_dir, name: str = "compare", rps: float = 20, duration: float = 20,
            warmup: float = 5, repeats: int = 3, workers: int = 1, pool_size: int = 300, median: float = 200,
            sigma: float = 1.0, max_candidates: int = 5000, seed: int = 0, command: str = "",
            progress: bool = True, ready_timeout: float = 300, pin: str = "auto", traffic: str = "inline",
            catalog_ads: int = 100_000, control: str | None = None, arrivals: str = "poisson",
            port: int | None = None, requests=None, rows=None, dataset: str | None = None,
            defaults: dict | None = None) -> dict:
    """Run the comparison (module docstring); returns the result written to ``out_dir``.

    ``port``: measure the server already running on 127.0.0.1:``port`` (``specs`` are names it
    serves, ``NAME=ARTIFACT`` where the in-process breakdown should run too) instead of starting
    one.  Traffic: ``requests`` (JSONL of /v1/rank bodies), ``rows`` + ``dataset`` (raw data rows),
    else ``values_path`` (loadtest/auctions.py), else, when every model is one of the embedded
    defaults (``defaults``: their versions and build parameters), their rebuilt data set
    (loadtest/traffic.py)."""
    from tqdm import tqdm

    names = [s.split("=", 1)[0] if "=" in s or port is not None else Path(s).stem for s in specs]
    paths = [s.split("=", 1)[1] if "=" in s else (None if port is not None else s) for s in specs]
    if control is not None:  # the noise floor: the same artifact again, under another name
        if control not in names:
            raise LoadTestError(f"--control {control!r} is not one of the models {names}")
        if port is not None:
            raise LoadTestError("--control serves a model twice under two names: it needs the server this "
                                "command starts (drop --port)")
        names.append(control + AGAIN)
        paths.append(paths[names.index(control)])
    if len(set(names)) != len(names):
        raise LoadTestError(f"model names must differ, got {names}")
    if arrivals not in KINDS:
        raise LoadTestError(f"arrivals must be one of {KINDS}, got {arrivals!r}")
    if traffic not in ("inline", "catalog"):
        raise LoadTestError(f"traffic must be inline or catalog, got {traffic!r}")
    if traffic == "catalog" and (catalog_ads < 1 or port is not None or requests or rows):
        raise LoadTestError("--traffic catalog needs --catalog-ads >= 1, generated traffic (not --requests or "
                            "--rows) and the server this command starts (not --port)")
    placement = split_cpus("none" if port is not None and pin == "auto" else pin)
    server_cpus, client_cpus = placement or (None, None)
    out_dir = Path(out_dir)
    work, kept = Path(tempfile.mkdtemp(prefix="adrank-loadtest-")), False
    try:
        running = Running(port, names) if port is not None else None
        pool, ads = work / "pool.jsonl", work / "ads.jsonl"
        served = running.models if running is not None else {}
        try:
            pool_stats, source = build_pool(
                work, pool, ads, [(n, p, served.get(n)) for n, p in zip(names, paths, strict=True)], values_path,
                requests, rows, dataset, traffic, pool_size, catalog_ads, seed, median, sigma, max_candidates,
                defaults, progress)
        except TrafficError as exc:
            raise LoadTestError(str(exc)) from None
        if traffic == "catalog":
            cpu = cpu_breakdown_catalog(dict(zip(names, paths, strict=True)), pool, ads)
        else:
            cpu = {n: cpu_breakdown(p, pool) if p else {} for n, p in zip(names, paths, strict=True)}
        server = running or Server([f"{n}={p}" for n, p in zip(names, paths, strict=True)], workers, work / "run",
                                   work / "server.log", ready_timeout, server_cpus,
                                   ("--catalog", str(ads)) if traffic == "catalog" else ())
        runs = []
        try:
            steps = [("warmup", 0, n) for n in names] + [("run", r, n) for r in range(repeats)
                                                          for n in round_order(names, r)]
            for kind, rep, model in tqdm(steps, desc="loadtest", disable=None if progress else True):
                timings = work / f"{kind}-{rep}-{model}.csv"
                before = server.metrics()
                t0 = time.time()
                run_locust(server.base, pool, model, rps, warmup if kind == "warmup" else duration, timings,
                           work / "locust.log", client_cpus, arrivals)
                wall = time.time() - t0
                after = server.metrics()
                if kind == "run":
                    runs.append(summarize_run(model, rep, read_timings(timings), before, after, duration, wall))
        finally:
            server.stop()
        result = {"command": command, "models": dict(zip(names, paths, strict=True)),
                  "settings": {"rps": rps, "duration_s": duration, "warmup_s": warmup, "repeats": repeats,
                               "workers": workers if running is None else None, "pool": pool_stats, "seed": seed,
                               "median_candidates": median, "sigma": sigma, "max_candidates": max_candidates,
                               "traffic": traffic, "source": source,
                               "catalog_ads": catalog_ads if traffic == "catalog" else None, "control": control,
                               "arrivals": arrivals, "server": "started" if running is None else
                               f"running on 127.0.0.1:{port}",
                               "pin": {"server_cpus": sorted(server_cpus or ()), "client_cpus": sorted(client_cpus)}
                               if placement else None},
                  "machine": {"cpus": os.cpu_count(), "load_average_end": os.getloadavg()},
                  "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs],
                  "summary": [{**summarize_model(n, [r for r in runs if r["model"] == n]), **cpu[n]}
                              for n in names]}
        out_dir.mkdir(parents=True, exist_ok=True)
        write_report(result, runs, out_dir, name)
        return result
    except LoadTestError as exc:
        kept = str(work) in str(exc)  # a message naming a log in here: the log stays for the reader
        raise
    finally:
        if not kept:
            shutil.rmtree(work, ignore_errors=True)


def summarize_run(model, rep, t: np.ndarray, before: str, after: str, duration: float, wall: float) -> dict:
    req = histogram_delta(histograms(before, REQUEST, model), histograms(after, REQUEST, model))
    inf = histogram_delta(histograms(before, INFERENCE, model), histograms(after, INFERENCE, model))
    ok = t["status"] == 200
    span = float(t["start"].max() - t["start"].min()) if len(t) > 1 else 0.0
    return {"model": model, "repeat": rep, "requests": int(len(t)), "errors": int((~ok).sum()),
            "achieved_rps": (len(t) - 1) / span if span > 0 else 0.0, "wall_s": wall,
            "client_p50_ms": _pct(t["seconds"][ok], 50), "client_p99_ms": _pct(t["seconds"][ok], 99),
            "server_p99_ms": _q(0.99, req), "_seconds": t["seconds"][ok], "_req": req, "_inf": inf,
            "_candidates": t["candidates"][ok]}


def summarize_model(model: str, runs: list[dict]) -> dict:
    """Pooled over the model's runs: raw client timings, summed histogram deltas."""
    sec = np.concatenate([r["_seconds"] for r in runs]) if runs else np.zeros(0)
    req, inf = {}, {}
    for r in runs:
        for src, dst in ((r["_req"], req), (r["_inf"], inf)):
            for le, c in src.items():
                dst[le] = dst.get(le, 0.0) + c
    n = sum(r["requests"] for r in runs)
    out = {"model": model, "runs": len(runs), "requests": n,
           "achieved_rps": float(np.mean([r["achieved_rps"] for r in runs])) if runs else 0.0,
           "error_rate": (sum(r["errors"] for r in runs) / n) if n else None,
           "server_requests": req.get(float("inf"), 0.0)}
    for q in (50, 95, 99):
        out[f"client_p{q}_ms"] = _pct(sec, q)
        out[f"server_p{q}_ms"] = _q(q / 100, req)
        out[f"inference_p{q}_ms"] = _q(q / 100, inf)
    out["_seconds"] = sec
    return out


def _pct(sec: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(sec, q)) * 1e3, 3) if len(sec) else None


def _q(q: float, buckets: dict) -> float | None:
    v = histogram_quantile(q, buckets)
    return None if v is None else round(v * 1e3, 3)
