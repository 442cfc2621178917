"""The cost of a shadow version: plain ranking vs a 10 %-sampled shadow, side by side in one run.

    python benchmarks/shadow.py [--quick] [--out docs/results/shadow]

The model of benchmarks/serve_latency.py (DPLR rho=2, k=16, 40 fields, ~1M features) is exported
twice (two versions: seeds 0 and 1) and served by `adrank serve` (one worker) on loopback; the
second version is loaded beside the first (``{"keep": true}``).  Rounds alternate between *plain*
(no traffic setting: the current version answers) and *shadow* (``PUT /v1/models/dplr/traffic``
with the second version as shadow on 10 % of the requests, scored after the reply is sent), at
100 and 1,000 inline candidates, open-loop at a fixed rate (serve_latency's client).  Reported per
mode: the server's handler time (``adrank_request_duration_seconds``, median interpolated inside
its buckets, and mean), the client's end-to-end percentiles, the server's CPU per request, and the
shadow's own scoring time; the ratios shadow / plain are the result (target: a 10 % shadow adds
<= 15 % to the median in-server time).

Writes OUT.json and OUT.md with the exact command and the machine's load.  Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from adrank.core.files import write_report
from benchmarks.serve_latency import (
    RawClient,
    build_model,
    cpu_seconds,
    hist_stats,
    make_bodies,
    run_load,
    scrape,
    wait_ready,
)

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-admin-token-0123456789abcdef"  # the server's admin token (reload, traffic)


def _put(client: RawClient, path: str, obj) -> dict:
    status, body = client.request("PUT", path, json.dumps(obj).encode())
    if status != 200:
        raise RuntimeError(f"PUT {path}: {status} {body[:300]!r}")
    return json.loads(body)


def _shadow_seconds(client: RawClient) -> tuple[float, float]:
    """(count, sum) of adrank_shadow_duration_seconds."""
    from prometheus_client.parser import text_string_to_metric_families

    _, text = client.request("GET", "/metrics")
    count = total = 0.0
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            if s.name == "adrank_shadow_duration_seconds_count":
                count += s.value
            elif s.name == "adrank_shadow_duration_seconds_sum":
                total += s.value
    return count, total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "shadow"))
    ap.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    ap.add_argument("--rounds", type=int, default=3, help="plain/shadow round pairs per size")
    ap.add_argument("--fraction", type=float, default=0.1, help="shadow sampling fraction")
    args = ap.parse_args(argv)
    nice = os.nice(0)
    command = (f"nice -n {nice} " if nice else "") + "python benchmarks/shadow.py" + " ".join([""] + sys.argv[1:])
    plan = [(100, 200, 1500), (1000, 40, 400)]  # (candidates, rate req/s, requests per round)
    if args.quick:
        plan = [(n, r, c // 5) for n, r, c in plan]
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="adrank-bench-shadow-"))
    print("building two versions of the model...", file=sys.stderr)
    schema = build_model(work / "v1.adrk", seed=0)
    build_model(work / "v2.adrk", seed=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-c", "import sys; from adrank.cli import main; sys.exit(main())",
                               "serve", f"dplr={work / 'v1.adrk'}", "--port", str(port), "--no-access-log",
                               "--log-level", "warning", "--state-dir", str(work / "state"), "--model-dir", str(work)],
                              env={**os.environ, "ADRANK_ADMIN_TOKEN": TOKEN})
    rows = []
    try:
        wait_ready(server, port, 180)
        client, admin = RawClient(port), RawClient(port, TOKEN)
        status, body = admin.request("POST", "/v1/models/dplr/reload",
                                      json.dumps({"path": str(work / "v2.adrk"), "keep": True}).encode())
        if status != 200:
            raise RuntimeError(f"keep-load of v2: {status} {body[:300]!r}")
        v1, v2 = json.loads(body)["current_version"], json.loads(body)["version"]
        modes = {"plain": {}, "shadow": {"weights": {v1: 1}, "shadow": v2, "shadow_fraction": args.fraction}}
        for n_ads, rate, n in plan:
            bodies = make_bodies(schema, n_ads, 20, False, seed=n_ads)
            for _ in range(min(200, n)):
                client.request("POST", "/v1/rank", bodies[0])
            for r in range(args.rounds):
                for mode, traffic in (modes.items() if r % 2 == 0 else reversed(modes.items())):
                    _put(admin, "/v1/models/dplr/traffic", traffic)
                    print(f"N={n_ads} {mode} round {r} at {rate} req/s x {n}...", file=sys.stderr)
                    time.sleep(0.5)
                    before, cpu0, sh0 = scrape(client), cpu_seconds(server.pid), _shadow_seconds(client)
                    load = run_load(client, bodies, rate, n, warmup=0)
                    time.sleep(0.3)  # the last shadow jobs finish
                    cpu1, after, sh1 = cpu_seconds(server.pid), scrape(client), _shadow_seconds(client)
                    rows.append({"candidates": n_ads, "mode": mode, "round": r, "rate_rps": rate, **load,
                                 "server_cpu_ms_per_request": 1e3 * (cpu1 - cpu0) / n,
                                 "shadowed": int(sh1[0] - sh0[0]),
                                 "shadow_ms_mean": 1e3 * (sh1[1] - sh0[1]) / (sh1[0] - sh0[0])
                                 if sh1[0] > sh0[0] else None,
                                 "server_handler": hist_stats(before, after, "adrank_request_duration_seconds")})
    finally:
        server.terminate()
        server.wait(15)
        shutil.rmtree(work, ignore_errors=True)
    result = {"command": command, "load_before": load_before, "load_after": os.getloadavg(),
              "fraction": args.fraction, "rows": rows, "summary": summary(rows)}
    write_report(args.out, result, markdown(result))
    print(markdown(result))
    return 0


def summary(rows: list[dict]) -> list[dict]:
    """Per size: medians over rounds of each mode's figures, and the ratios shadow / plain."""
    out = []
    for n in sorted({r["candidates"] for r in rows}):
        by = {m: [r for r in rows if r["candidates"] == n and r["mode"] == m] for m in ("plain", "shadow")}

        def med(mode, f, by=by):
            vals = [f(r) for r in by[mode] if f(r) is not None]
            return float(np.median(vals)) if vals else None

        figs = {m: {"handler_p50_ms": med(m, lambda r: r["server_handler"]["p50_ms_interpolated"]),
                    "handler_mean_ms": med(m, lambda r: r["server_handler"]["mean_ms"]),
                    "e2e_p50_ms": med(m, lambda r: r["e2e_ms"]["p50"]),
                    "e2e_p99_ms": med(m, lambda r: r["e2e_ms"]["p99"]),
                    "cpu_ms_per_request": med(m, lambda r: r["server_cpu_ms_per_request"]),
                    "shadowed": sum(r["shadowed"] for r in by[m]),
                    "requests": sum(r["requests"] for r in by[m]),
                    "shadow_ms_mean": med(m, lambda r: r["shadow_ms_mean"])} for m in by}
        ratio = {k: figs["shadow"][k] / figs["plain"][k] for k in ("handler_p50_ms", "handler_mean_ms", "e2e_p50_ms",
                                                                      "e2e_p99_ms", "cpu_ms_per_request")
                 if figs["plain"][k] and figs["shadow"][k] is not None}
        out.append({"candidates": n, **figs, "ratio": ratio})
    return out


def markdown(r: dict) -> str:
    lines = ["# A shadow version's cost: plain ranking vs a 10 %-sampled shadow", "",
             f"Command: `{r['command']}`  ", f"Load average before / after: {r['load_before']} / {r['load_after']} "
             "(2 cores shared with other agents' work: compare the modes, which alternate round by round, not "
             "the absolute figures)", "",
             f"Shadow fraction {r['fraction']}: the shadow version scores the sampled requests in a worker thread "
             "after their reply is sent (service/shadow.py). Medians over rounds.", "",
             "| candidates | mode | handler p50 ms | handler mean ms | e2e p50 ms | e2e p99 ms | CPU ms/req | "
             "shadowed / requests | shadow scoring ms |", "|---|---|---|---|---|---|---|---|---|"]

    def f(x):
        return "-" if x is None else f"{x:.3f}"

    for s in r["summary"]:
        for m in ("plain", "shadow"):
            g = s[m]
            lines.append(f"| {s['candidates']} | {m} | {f(g['handler_p50_ms'])} | {f(g['handler_mean_ms'])} | "
                         f"{f(g['e2e_p50_ms'])} | {f(g['e2e_p99_ms'])} | {f(g['cpu_ms_per_request'])} | "
                         f"{g['shadowed']} / {g['requests']} | {f(g['shadow_ms_mean'])} |")
    lines += ["", "Ratios shadow / plain (target: handler p50 <= 1.15):", "",
              "| candidates | handler p50 | handler mean | e2e p50 | e2e p99 | CPU per request |",
              "|---|---|---|---|---|---|"]
    for s in r["summary"]:
        q = s["ratio"]
        lines.append(f"| {s['candidates']} | " + " | ".join(f"{q[k]:.3f}" if k in q else "-" for k in (
            "handler_p50_ms", "handler_mean_ms", "e2e_p50_ms", "e2e_p99_ms", "cpu_ms_per_request")) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
