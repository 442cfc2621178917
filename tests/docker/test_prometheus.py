"""A real Prometheus scraping a live `adrank serve` (slow; loopback only; bounded in time).

Two small artifacts (DPLR rho=2 and pruned FwFM, random weights, written by the exporter) are
served by `adrank serve --workers 2` (prometheus-client's multiprocess mode, as in production);
a bounded load of ranking requests (plus some rejected ones) runs for a
few seconds; Debian's `prometheus` scrapes the server every second with docker/prometheus/rules.yml
loaded. Checked through Prometheus' HTTP API:
- the scraped counters equal what the load generator counted itself (requests by model and code,
  candidates), so the metrics pipeline loses and invents nothing;
- the recording rules give P50 <= P95 <= P99 latencies for each model, request rates, error
  ratios and candidates per request;
- every expression of the Grafana dashboard evaluates, and the model-version table names both
  models.
Skipped with a message when the prometheus binary is absent (.ci/run installs it).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.docker.test_dashboards import (
    PROM,
    RULE_FILES,
    dashboard_exprs,
    load_dashboard,
    recording_rules,
    substitute_variables,
)
from tests.service.helpers import ADMIN, ADMIN_TOKEN

REPO = Path(__file__).resolve().parents[2]
MODELS = ("dplr", "pruned")
LOAD_SECONDS = 6.0  # load duration; the test as a whole is bounded by the deadlines below
MAX_REQUESTS = 3000
MAX_CANDIDATES = 60  # `adrank serve --max-candidates`: a request with more is a 422 under its model
N_VALUES = 40  # kept raw values per field: "<field>-0" .. "<field>-39"

pytestmark = pytest.mark.slow


# --- artifacts ---------------------------------------------------------------------------------
def toy_schema():
    from adrank.core.schema import Field, Schema

    return Schema("ops-toy", (
        Field("user"), Field("site"), Field("hour"),
        Field("ad", role="item"), Field("advertiser", role="item"), Field("category", role="item"),
    ))


def make_artifacts(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """DPLR (rho=2) and pruned FwFM artifacts with random weights over a toy schema whose
    kept values are the strings "<field>-<i>", exported by exporter.export.export_params."""
    from adrank.core.hashing import hash_tokens
    from adrank.core.preprocess import Preprocessor, Vocab
    from exporter.export import export_params

    schema = toy_schema()
    vocab = Vocab.from_kept([hash_tokens([f"{f.name}-{i}" for i in range(N_VALUES)]) for f in schema.fields])
    pre = Preprocessor(schema, vocab)
    rng = np.random.default_rng(seed)
    n, m, k, rho = vocab.n_features, schema.m, 8, 2
    base = {"bias": rng.normal(size=1).astype(np.float32),
            "linear": rng.normal(scale=0.1, size=n).astype(np.float32),
            "emb": rng.normal(scale=0.3, size=(n, k)).astype(np.float32)}
    R = rng.normal(size=(m, m))
    R = (R + R.T) / 2 * (1 - np.eye(m))
    mask = np.abs(R) >= np.median(np.abs(R[np.triu_indices(m, 1)]))
    mask &= ~np.eye(m, dtype=bool)
    params = {
        "dplr": {**base, "U": rng.normal(size=(rho, m)).astype(np.float32),
                 "e": rng.normal(size=rho).astype(np.float32)},
        "pruned": {**base, "R": np.where(mask, R, 0).astype(np.float32), "mask": mask},
    }
    paths = {}
    for name, p in params.items():
        info = export_params(p, {"kind": name, "rank": rho}, pre, out_dir / f"{name}.adrk")
        paths[name] = Path(info.path)
    return paths


def random_request(rng: random.Random, model: str) -> tuple[dict, int]:
    """A ranking request with 1..50 candidates over the toy schema (some values unseen)."""
    schema = toy_schema()

    def value(field):
        return f"{field.name}-{rng.randrange(N_VALUES + 5)}"  # the last 5 are unseen -> rare id

    n = rng.randint(1, 50)
    context = {f.name: value(f) for f in schema.context_fields}
    ads = [{"id": f"ad-{i}", "features": {f.name: value(f) for f in schema.item_fields}} for i in range(n)]
    return {"model": model, "context": context, "ads": ads}, n


# --- processes ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prometheus_binary() -> str:
    path = shutil.which("prometheus") or ("/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None)
    if path is None:
        pytest.skip("prometheus binary not found (Debian: apt-get install prometheus; .ci/run installs it)")
    return path


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group we started, SIGKILL it if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def wait_http(client, url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if client.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail(f"{url} not ready after {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def start(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(adrank base URL, prometheus base URL, httpx client, artifact paths); stops both at the end."""
    httpx = pytest.importorskip("httpx")
    prom_bin = prometheus_binary()
    tmp = tmp_path_factory.mktemp("prom-stack")
    paths = make_artifacts(tmp)
    procs = []
    client = httpx.Client()
    try:
        app_port, prom_port = free_port(), free_port()
        procs.append(start([sys.executable, "-m", "adrank.cli", "serve",
                            *(f"{name}={paths[name]}" for name in MODELS),
                            "--host", "127.0.0.1", "--port", str(app_port), "--no-access-log",
                            "--max-candidates", str(MAX_CANDIDATES), "--workers", "2",
                            "--run-dir", str(tmp / "run"), "--state-dir", str(tmp / "state"),
                            "--model-dir", str(tmp)], tmp / "adrank.log",
                           # the counts compared here must not depend on this busy machine's queueing (no shedding)
                           env={**os.environ, "ADRANK_QUEUE_BUDGET": "30", "ADRANK_ADMIN_TOKEN": ADMIN_TOKEN}))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(PROM / f) for f in RULE_FILES],
            "scrape_configs": [{"job_name": "adrank", "static_configs": [{"targets": [f"127.0.0.1:{app_port}"]}]}],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        procs.append(start([prom_bin, f"--config.file={tmp / 'prometheus.yml'}",
                            f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}",
                            "--log.level=warn"], tmp / "prometheus.log"))
        app, prom = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{prom_port}"
        wait_http(client, f"{prom}/-/ready", procs[1], tmp / "prometheus.log", timeout=60)
        wait_http(client, f"{app}/readyz", procs[0], tmp / "adrank.log", timeout=240)
        yield app, prom, client, paths
    finally:
        client.close()
        for p in reversed(procs):
            stop(p)


@pytest.fixture(scope="module")
def load(stack):
    """Bounded load: alternate models, count what the server answered (model label, code) and
    the candidates of every ranked request. Two in every 50 requests have too many candidates
    (422, counted under their model); every 50th names an unknown model (404, counted under model="unknown")."""
    app, prom, client, _ = stack
    # Prometheus must already be scraping the server when the load starts: the load takes ~3 s
    # (MAX_REQUESTS), and a first successful scrape after it would leave every rate flat (0).
    up = wait_query(client, prom, 'up{job="adrank"}', lambda r: bool(r) and all(s["value"][1] == "1" for s in r))
    assert up and all(s["value"][1] == "1" for s in up), f"Prometheus never scraped the server: {up}"
    # a second version of dplr (the pruned artifact: same schema) as dplr's shadow on half the
    # requests, so the per-version and shadow series exist (answers still come from dplr's current version)
    r = client.post(f"{app}/v1/models/dplr/reload", json={"path": str(stack[3]["pruned"]), "keep": True}, timeout=60,
                    headers=ADMIN)
    assert r.status_code == 200, r.text
    shadow = {"weights": {r.json()["current_version"]: 1}, "shadow": r.json()["version"], "shadow_fraction": 0.5}
    assert client.put(f"{app}/v1/models/dplr/traffic", json=shadow, timeout=30, headers=ADMIN).status_code == 200
    rng = random.Random(1)
    codes, candidates, sent = Counter(), Counter(), 0
    t_end = time.monotonic() + LOAD_SECONDS
    while time.monotonic() < t_end and sent < MAX_REQUESTS:
        model = MODELS[sent % 2]
        body, n = random_request(rng, model)
        if sent % 50 in (7, 8):  # one of each model
            body["ads"] = body["ads"] * (MAX_CANDIDATES // len(body["ads"]) + 1)
        elif sent % 50 == 13:
            body["model"], model = "no-such-model", "unknown"
        r = client.post(f"{app}/v1/rank", json=body, timeout=10)
        codes[model, r.status_code] += 1
        if r.status_code == 200:
            candidates[model] += n
            ranked = r.json()
            scores = [a["score"] for a in ranked["ads"]]
            assert ranked["model"] == model and len(scores) == n and scores == sorted(scores, reverse=True)
        sent += 1
    assert codes[MODELS[0], 422] and codes["unknown", 404], f"the rejected requests were not rejected: {dict(codes)}"
    assert codes[MODELS[0], 200] > 10 and codes[MODELS[1], 200] > 10, f"too little load: {dict(codes)}"
    # Rate-based rules look back 1m: later queries are evaluated at this moment (plus a few
    # scrape/evaluation intervals), so a slow machine or a slow earlier test cannot slide the
    # window past the load.
    return codes, candidates, time.time() + 3.0


# --- Prometheus HTTP API -----------------------------------------------------------------------
def query(client, prom: str, expr: str, at: float | None = None) -> list[dict]:
    """Instant query, evaluated now or at unix time ``at`` (waiting until then has passed)."""
    params = {"query": expr}
    if at is not None:
        time.sleep(max(0.0, at - time.time()))
        params["time"] = f"{at:.3f}"
    r = client.get(f"{prom}/api/v1/query", params=params, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr!r}: {body}"
    return body["data"]["result"]


def by_model(result: list[dict]) -> dict[str, float]:
    return {s["metric"].get("model", ""): float(s["value"][1]) for s in result}


def wait_query(client, prom, expr, ok, timeout=45.0, at=None):
    """Poll an instant query (at unix time ``at``, default now) until ok(result) holds; returns
    the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = query(client, prom, expr, at)
        if ok(result) or time.monotonic() > deadline:
            return result
        time.sleep(1)


# --- tests ---------------------------------------------------------------------------------------
def test_scraped_counters_equal_what_the_client_saw(stack, load):
    _, prom, client, _ = stack
    codes, candidates, _ = load
    expected = {(m, str(c)): n for (m, c), n in codes.items()}

    def scraped(result):
        return {(s["metric"].get("model", ""), s["metric"]["code"]): round(float(s["value"][1])) for s in result}

    result = wait_query(client, prom, 'sum by (model, code) (adrank_requests_total{endpoint="/v1/rank"})',
                        lambda r: scraped(r) == expected)
    assert scraped(result) == expected
    result = wait_query(client, prom, "sum by (model) (adrank_request_candidates_sum)",
                        lambda r: by_model(r) == {m: float(candidates[m]) for m in MODELS})
    assert by_model(result) == {m: float(candidates[m]) for m in MODELS}
    total = Counter()
    for (m, _), n in codes.items():
        total[m] += n
    result = query(client, prom, 'sum by (model) (adrank_request_duration_seconds_count{endpoint="/v1/rank"})')
    assert by_model(result) == {m: float(n) for m, n in total.items()}


def test_recording_rules_give_latency_quantiles_per_model(stack, load):
    _, prom, client, _ = stack
    at = load[2]
    for family in ("endpoint_model:adrank_request_duration_seconds", "model:adrank_model_inference_duration_seconds"):
        q = {}
        for p in ("p50", "p95", "p99"):
            result = wait_query(client, prom, f"{family}:{p}",
                                lambda r: set(MODELS) <= {s["metric"].get("model") for s in r}, at=at)
            q[p] = by_model(result)
        for m in MODELS:
            vals = [q[p][m] for p in ("p50", "p95", "p99")]
            assert all(math.isfinite(v) and 0 < v <= 1.0 for v in vals), f"{family} {m}: {vals}"
            assert vals[0] <= vals[1] <= vals[2], f"{family} {m}: quantiles out of order {vals}"


def test_recording_rules_give_rates_errors_and_candidates(stack, load):
    _, prom, client, _ = stack
    codes, candidates, at = load

    def has_models(r):
        return set(MODELS) <= {s["metric"].get("model") for s in r}

    rates = by_model(wait_query(client, prom, 'endpoint_model:adrank_requests:rate1m{endpoint="/v1/rank"}', has_models, at=at))
    assert all(rates[m] > 0 for m in MODELS), rates
    errors = by_model(wait_query(client, prom, 'endpoint_model:adrank_request_errors:ratio_rate1m{endpoint="/v1/rank"}',
                                 has_models, at=at))
    client_errors = by_model(wait_query(
        client, prom, 'endpoint_model:adrank_request_client_errors:ratio_rate1m{endpoint="/v1/rank"}', has_models, at=at))
    for m in MODELS:
        # The client saw no 5xx: the ratio must be exactly 0 (present, not absent, not NaN);
        # it did see 422s, so the 4xx ratio is positive.
        failed = sum(n for (mm, c), n in codes.items() if mm == m and c >= 500)
        rejected = sum(n for (mm, c), n in codes.items() if mm == m and 400 <= c < 500)
        assert (errors[m] > 0) == (failed > 0) and 0 <= errors[m] <= 1, (m, errors, dict(codes))
        assert (client_errors[m] > 0) == (rejected > 0) and client_errors[m] <= 1, (m, client_errors, dict(codes))
    means = by_model(wait_query(client, prom, "model:adrank_request_candidates:mean_rate1m", has_models, at=at))
    for m in MODELS:
        # every request carried 1..50 candidates, so any window's mean lies in [1, 50]
        assert 1 <= means[m] <= 50, means


def test_every_rule_and_dashboard_metric_exists_in_prometheus(stack, load):
    _, prom, client, _ = stack
    from tests.docker.test_dashboards import SERVICE_METRICS

    wait_query(client, prom, "endpoint_model:adrank_request_duration_seconds:p99", lambda r: len(r) > 0)
    names = set(client.get(f"{prom}/api/v1/label/__name__/values", timeout=10).json()["data"])
    missing = (SERVICE_METRICS | set(recording_rules())) - names
    assert not missing, f"never scraped or recorded: {sorted(missing)}"
    # the process series come from every live worker (two here), each under its own pid
    for name in ("adrank_process_cpu_seconds", "adrank_process_resident_memory_bytes", "adrank_process_open_fds"):
        pids = {s["metric"].get("pid") for s in query(client, prom, name)}
        assert len(pids) >= 2 and None not in pids, f"{name}: {pids}"
    groups = client.get(f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
    bad = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"]
    assert groups and not bad, f"rules failing on live data: {bad}"
    firing = [a["labels"]["alertname"] for g in groups for r in g["rules"] for a in r.get("alerts", [])]
    assert "AdrankTargetDown" not in firing


def test_dashboard_queries_evaluate_on_live_data(stack, load):
    _, prom, client, _ = stack
    at = load[2]
    wait_query(client, prom, "model:adrank_request_candidates:p95", lambda r: len(r) >= len(MODELS), at=at)
    for where, expr in dashboard_exprs(load_dashboard()):
        result = query(client, prom, substitute_variables(expr), at)
        assert result, f"{where}: {expr!r} returned nothing on live data"
    versions = query(client, prom, "adrank_model_info == 1")
    served = {(s["metric"]["model"], s["metric"]["version"]) for s in versions}  # kept versions serve too
    assert {m for m, _ in served} == set(MODELS) and all(v for _, v in served), served
    models = client.get(f"{stack[0]}/v1/models", timeout=10).json()["models"]
    loaded = {(d["name"], v["version"]) for d in models for v in d["versions"]}
    assert served == loaded and {(d["name"], d["version"]) for d in models} <= served, json.dumps(models)
