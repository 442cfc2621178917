"""The edge under hostile and excess load: `adrank serve`, one worker, loopback (issue 16).

    python benchmarks/edge_load.py [--quick] [--out docs/results/edge-load]

1. **Capacity**: one keep-alive connection sends 100-ad requests back to back; capacity = replies/s.
2. **Baseline**: open-loop normal traffic (100-ad requests at 30 % of capacity, latency measured
   from the scheduled send time) — its p99 is "the usual p99".
3. **Slow clients**: the same traffic while 64 connections send headers and then trickle their body
   one byte a second (each reconnects when the server cuts it off with 408).  Done means >= 99 %
   of normal requests answered 200 within 2 x the usual p99.
4. **4x capacity**: 1,000-ad requests (their capacity measured like 1.), open-loop at 4 x that
   capacity over at most 128 connections; admitted requests' queueing (the server's
   ``adrank_queue_wait_seconds``, last byte -> scoring) against the budget, the rest 503 +
   Retry-After.

Writes OUT.json and OUT.md with the exact command and the machine load.  Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.serve_latency import RawClient, build_model, hist_stats, make_bodies, wait_ready

REPO = Path(__file__).resolve().parents[1]
N_ADS = 100  # normal traffic
N_ADS_OVERLOAD = 1000  # the overload phase: heavier requests, so that 4x capacity is a rate this client can offer


class Pool:
    """At most ``size`` keep-alive connections; a request waits for a free one (that wait counts in
    its latency: it is measured from the scheduled send time)."""

    def __init__(self, port: int, size: int = 128):
        self.port, self.free, self.opened = port, [], 0
        self.size, self.released = size, asyncio.Condition()

    async def _take(self):
        async with self.released:
            while not self.free and self.opened >= self.size:
                await self.released.wait()
            if self.free:
                return self.free.pop()
            self.opened += 1
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def _give(self, conn, keep: bool) -> None:
        async with self.released:
            if keep:
                self.free.append(conn)
            else:
                self.opened -= 1
                conn[1].close()
            self.released.notify()

    async def request(self, body: bytes) -> tuple[int, str | None]:
        conn = await self._take()
        try:
            status, ra, keep = await self._send(conn, body)
        except (OSError, asyncio.IncompleteReadError):
            await self._give(conn, False)
            raise
        await self._give(conn, keep)
        return status, ra

    async def _send(self, conn, body: bytes) -> tuple[int, str | None, bool]:
        r, w = conn
        w.write(b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body)
        await w.drain()
        head = await r.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        await r.readexactly(int(headers.get("content-length", "0")))
        return status, headers.get("retry-after"), headers.get("connection", "").lower() != "close"


async def open_loop(port: int, bodies: list[bytes], rate: float, seconds: float) -> list[tuple[int, float, str | None]]:
    """Requests at ``rate``/s for ``seconds``; (status, latency from the scheduled time, Retry-After)."""
    pool, out, tasks = Pool(port), [], []
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    n = int(rate * seconds)

    async def fire(i: int, due: float):
        try:
            status, ra = await pool.request(bodies[i % len(bodies)])
        except (OSError, asyncio.IncompleteReadError):
            status, ra = 0, None
        out.append((status, loop.time() - due, ra))

    for i in range(n):
        due = t0 + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(i, due)))
    await asyncio.gather(*tasks)
    return out


def slow_clients(port: int, n: int, stop: list) -> list:
    """``n`` threads each holding a connection that trickles its body (reconnecting after a 408)."""
    import threading

    cut = [0]

    def run():
        while not stop:
            try:
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 100000\r\n\r\n{")
                s.settimeout(1.0)
                while not stop:
                    try:
                        s.sendall(b" ")
                        if s.recv(1, socket.MSG_PEEK):
                            cut[0] += 1
                            break
                    except TimeoutError:
                        continue
                    except OSError:
                        cut[0] += 1
                        break
                s.close()
            except OSError:
                time.sleep(0.1)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return [threads, cut]


def scrape(client: RawClient) -> dict:
    """(sample name, le) -> value of the queue-wait histogram and the shed counter."""
    _, text = client.request("GET", "/metrics")
    out: dict = {}
    for fam in text_string_to_metric_families(text.decode()):
        for smp in fam.samples:
            if smp.name.startswith(("adrank_queue_wait_seconds", "adrank_shed")):
                out[smp.name, smp.labels.get("le")] = smp.value
    return out


def summary(rows: list) -> dict:
    codes: dict = {}
    for st, _, _ in rows:
        codes[str(st)] = codes.get(str(st), 0) + 1
    ok = np.array([lat for st, lat, _ in rows if st == 200]) * 1e3
    return {"requests": len(rows), "codes": codes, "ok_fraction": round(len(ok) / max(1, len(rows)), 4),
            "ok_p50_ms": round(float(np.percentile(ok, 50)), 3) if len(ok) else None,
            "ok_p99_ms": round(float(np.percentile(ok, 99)), 3) if len(ok) else None,
            "retry_after_on_503": all(ra == "1" for st, _, ra in rows if st == 503)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "edge-load"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--budget", type=float, default=0.025, help="ADRANK_QUEUE_BUDGET (seconds)")
    args = ap.parse_args()
    secs = 4.0 if args.quick else 10.0
    work = Path(tempfile.mkdtemp(prefix="adrank-edge-"))
    schema = build_model(work / "dplr.adrk")
    bodies = make_bodies(schema, N_ADS, 64, False, seed=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "ADRANK_QUEUE_BUDGET": str(args.budget), "ADRANK_HEADER_TIMEOUT": "5",
           "ADRANK_BODY_TIMEOUT": "10"}
    server = subprocess.Popen([sys.executable, "-c", "import sys; from adrank.cli import main; sys.exit(main())",
                               "serve", f"dplr={work / 'dplr.adrk'}", "--port", str(port), "--no-access-log",
                               "--log-level", "warning", "--state-dir", str(work / "state")], env=env)
    result: dict = {"command": "python benchmarks/edge_load.py" + (" --quick" if args.quick else ""),
                    "uptime_before": os.getloadavg(), "budget_ms": args.budget * 1e3, "candidates": N_ADS}
    try:
        wait_ready(server, port, 120)
        client = RawClient(port)
        for b in bodies[:20]:
            client.request("POST", "/v1/rank", b)
        t, n = time.perf_counter(), 0
        while time.perf_counter() - t < secs / 2:
            client.request("POST", "/v1/rank", bodies[n % len(bodies)])
            n += 1
        capacity = n / (time.perf_counter() - t)
        result["capacity_rps"] = round(capacity, 1)
        normal = 0.3 * capacity
        result["baseline"] = summary(asyncio.run(open_loop(port, bodies, normal, secs)))
        stop: list = []
        threads, cut = slow_clients(port, 64, stop)
        time.sleep(1.0)
        slow_rows = asyncio.run(open_loop(port, bodies, normal, secs))
        result["slow_clients"] = summary(slow_rows)
        stop.append(True)
        result["slow_clients"]["slow_connections"] = 64
        result["slow_clients"]["cut_off_by_timeout"] = cut[0]
        for t_ in threads:
            t_.join(3)
        usual = result["baseline"]["ok_p99_ms"]
        result["slow_clients"]["within_2x_usual_p99"] = round(sum(
            1 for st, lat, _ in slow_rows if st == 200 and lat * 1e3 <= 2 * usual) / max(1, len(slow_rows)), 4)
        heavy = make_bodies(schema, N_ADS_OVERLOAD, 16, False, seed=2)
        client = RawClient(port)  # a fresh connection: the server closed the idle one (keep-alive timeout)
        t, n = time.perf_counter(), 0
        while time.perf_counter() - t < secs / 2:
            client.request("POST", "/v1/rank", heavy[n % len(heavy)])
            n += 1
        heavy_capacity = n / (time.perf_counter() - t)
        result["capacity_1000_ads_rps"] = round(heavy_capacity, 1)
        before = scrape(RawClient(port))
        rows = asyncio.run(open_loop(port, heavy, 4 * heavy_capacity, secs))
        after = scrape(RawClient(port))
        result["overload_4x"] = summary(rows)
        result["overload_4x"]["rate_rps"] = round(4 * heavy_capacity, 1)
        q = hist_stats(before, after, "adrank_queue_wait_seconds")
        result["overload_4x"]["admitted_queue_wait"] = q
        result["overload_4x"]["admitted_queue_p99_le_ms"] = _p99_bucket(before, after)
        result["overload_4x"]["shed_by_budget"] = after.get(("adrank_shed_total", None), 0) - before.get(
            ("adrank_shed_total", None), 0)
        result["uptime_after"] = os.getloadavg()
    finally:
        server.terminate()
        server.wait(20)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


def _p99_bucket(before: dict, after: dict) -> float | None:
    """The upper edge (ms) of the bucket holding the 99th percentile of admitted queue waits."""
    edges = []
    for key, v in after.items():
        if key[0] == "adrank_queue_wait_seconds_bucket":
            edges.append((float(key[1]), v - before.get(key, 0.0)))
    edges.sort()
    if not edges or edges[-1][1] == 0:
        return None
    total = edges[-1][1]
    for le, c in edges:
        if c >= 0.99 * total:
            return le * 1e3
    return None


def markdown(r: dict) -> str:
    b, s, o = r["baseline"], r["slow_clients"], r["overload_4x"]
    return "\n".join([
        "# The edge under slow clients and 4x overload (`adrank serve`, one worker, loopback)", "",
        f"Command: `{r['command']}` (machine load before {r['uptime_before']}, after {r['uptime_after']}; "
        "2 shared cores: figures are ratios within one run).", "",
        f"Capacity (one connection, requests back to back): **{r['capacity_rps']} req/s** at {r['candidates']} ads, "
        f"**{r['capacity_1000_ads_rps']} req/s** at 1,000 ads.", "",
        "| phase | requests | status codes | 200 share | 200 p50 ms | 200 p99 ms |", "|---|---|---|---|---|---|",
        f"| normal traffic at 30 % capacity | {b['requests']} | {b['codes']} | {b['ok_fraction']} | {b['ok_p50_ms']} | "
        f"{b['ok_p99_ms']} |",
        f"| same + 64 slow-body connections | {s['requests']} | {s['codes']} | {s['ok_fraction']} | {s['ok_p50_ms']} | "
        f"{s['ok_p99_ms']} |",
        f"| 1,000-ad requests, open loop at 4x capacity ({o['rate_rps']} req/s) | {o['requests']} | {o['codes']} | {o['ok_fraction']} | "
        f"{o['ok_p50_ms']} | {o['ok_p99_ms']} |", "",
        f"Slow clients: {s['cut_off_by_timeout']} slow connections were cut off by the body timeout during the run.",
        f"Usual p99 {b['ok_p99_ms']} ms; with 64 slow clients the p99 of normal traffic is {s['ok_p99_ms']} ms "
        f"({'within' if s['ok_p99_ms'] and b['ok_p99_ms'] and s['ok_p99_ms'] <= 2 * b['ok_p99_ms'] else 'NOT within'} 2x); "
        f"share of normal requests answered 200 within 2x the usual p99: **{s['within_2x_usual_p99']}**.",
        "",
        f"4x overload: admitted requests' queueing (server histogram, last byte -> scoring): mean "
        f"{o['admitted_queue_wait'].get('mean_ms')} ms, p99 in the bucket <= {o['admitted_queue_p99_le_ms']} ms "
        f"(budget {r['budget_ms']:g} ms); every 503 carried Retry-After: {o['retry_after_on_503']}.",
        "Client-side latencies of the 200s at 4x include the time the request waited in the client's and the "
        "kernel's queues before the server read it (open loop, from the scheduled send time).", ""])


if __name__ == "__main__":
    sys.exit(main())
