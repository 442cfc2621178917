"""`adrank serve` as a real uvicorn server on loopback: scores over HTTP equal the in-process
Ranker and tests/naive.py for every kind; bad input and overload over real sockets; start-up
errors (the embedded default models: tests/cli/test_default_models.py)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import httpx
import msgspec
import numpy as np
import pytest

from service.ranker import Ranker
from tests.service.helpers import ADRANK, Server, make_artifact, random_request, reference_scores

KINDS = ("dplr", "pruned", "fm", "fwfm")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    d = tmp_path_factory.mktemp("served")
    params = {k: make_artifact(d / f"{k}.adrk", k, seed=10 + i) for i, k in enumerate(KINDS)}
    env = {**os.environ, "ADRANK_MAX_INFLIGHT": "2", "ADRANK_QUEUE_BUDGET": "0.005"}
    srv = Server([f"{k}={d / f'{k}.adrk'}" for k in KINDS] + ["--max-body-bytes", "200000"], env)
    yield srv, params, d
    log = srv.stop()
    run_dir = re.search(r"run dir (\S+)", log).group(1)
    assert not Path(run_dir).exists(), "the temporary run directory is removed on SIGTERM"


def test_scores_over_http_equal_ranker_and_naive(served):
    srv, params, d = served
    rng = np.random.default_rng(3)
    with httpx.Client(base_url=srv.url, timeout=10) as h:
        for kind in KINDS:
            local = Ranker.load(d / f"{kind}.adrk", name=kind)
            for positional in (False, True):
                req = random_request(rng, 20, positional=positional)
                body = h.post("/v1/rank", json={**req, "model": kind}).json()
                assert body["model"] == kind and body["version"] == local.version
                got = [(a["id"], a["score"]) for a in body["ads"]]
                assert got == local.rank(req["context"], req["ads"])  # identical, order included
                want = reference_scores(kind, params[kind], req)
                assert all(s == pytest.approx(want[i], abs=2e-6) for i, s in got)
        assert h.post("/v1/rank", json=random_request(rng, 3)).json()["model"] == "dplr"  # default


def test_bad_input_over_http_never_500(served):
    srv, _, _ = served
    cases = [
        (b"\xff\xfe not json", 422, "invalid_json"),
        (b"", 422, "invalid_json"),
        (b'{"ads": [{"id": "a", "features": {"nope": 1}}]}', 422, "unknown_field"),
        (b'{"ads": [], "model": "unknown"}', 404, "unknown_model"),
        (msgspec.json.encode({"ads": [{"id": "a" * 300_000}]}), 413, "body_too_large"),
    ]
    with httpx.Client(base_url=srv.url, timeout=10) as h:
        for body, status, code in cases:
            r = h.post("/v1/rank", content=body, headers={"content-type": "application/json"})
            assert (r.status_code, r.json()["error"]) == (status, code), r.text
        # a chunked body (no content-length) over the limit is refused too
        chunks = (b"x" * 50_000 for _ in range(6))
        r = h.post("/v1/rank", content=chunks, headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert h.get("/readyz").status_code == 200


def test_overload_sheds_with_503_retry_after(served):
    srv, _, _ = served  # ADRANK_QUEUE_BUDGET=0.005: 5 ms of queueing before scoring, then 503
    req = random_request(np.random.default_rng(5), 1500)

    async def burst():
        limits = httpx.Limits(max_connections=40)
        async with httpx.AsyncClient(base_url=srv.url, timeout=30, limits=limits) as h:
            return await asyncio.gather(*(h.post("/v1/rank", json=req) for _ in range(40)))

    replies = asyncio.run(burst())
    codes = [r.status_code for r in replies]
    assert set(codes) <= {200, 503} and 200 in codes, codes
    for r in replies:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1" and r.json()["error"] == "overloaded"
    assert 503 in codes, "40 simultaneous 1,500-ad requests should queue past 5 ms"


def test_start_errors_are_clear(tmp_path):
    def serve(*args):  # --port 0: a free port (the port is taken before the artifacts are checked)
        return subprocess.run([*ADRANK, "serve", *args, "--port", "0"], capture_output=True,
                              text=True, timeout=60)

    r = serve(str(tmp_path / "missing.adrk"))
    assert r.returncode == 2 and "missing.adrk does not exist" in r.stderr
    make_artifact(tmp_path / "m.adrk")
    r = serve(f"a={tmp_path / 'm.adrk'}", f"a={tmp_path / 'm.adrk'}")
    assert r.returncode == 2 and "'a' given twice" in r.stderr
    bad = tmp_path / "bad.adrk"
    bad.write_bytes(b"not an artifact at all" * 10)
    r = serve(str(bad))
    assert r.returncode == 2 and "[bad_magic]" in r.stderr


def test_client_gone_mid_body_is_499_not_500(served):
    srv, _, _ = served
    with socket.create_connection(("127.0.0.1", srv.port)) as s:
        s.sendall(b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"ads\": [")
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = httpx.get(srv.url + "/metrics").text
        if 'code="499"' in text:
            break
        time.sleep(0.1)
    assert 'adrank_requests_total{code="499",endpoint="/v1/rank",model="unknown"}' in text
    assert 'code="500"' not in text
