"""State benchmark: catalog writes against a large catalog, restarts, and a fleet on Redis.

    python -m benchmarks.state                  # 1M-ad catalog, 6 + 6 interleaved 5 s phases (~6 min)
    python -m benchmarks.state --quick          # 100k ads, 2 + 2 phases (smoke test)

Writes docs/results/state.{json,md}.  Real processes on loopback, side by side in one run:

1. **Writes vs ranking.**  ``adrank serve`` (one worker, SQLite log) with N generated ads; a
   client sends 1,000-id ``/v1/rank`` requests (Poisson arrivals, ``--rate`` per second) while, in
   every other phase, a second client upserts 100 ads every 200 ms (half of them new ids, half
   updates).  Reported: the time to acknowledge each upsert (client side) and the ranking latency
   percentiles of the phases with writes against those without, pooled and round by round; and,
   in process, what one such write costs (wall and CPU time, no HTTP, no concurrent requests).
2. **Restart.**  After 1,000 more single-ad PUT/DELETE pairs, kill -9 and start again on the same
   state directory: time to ready against the first (cold) start, and the catalog checked equal.
3. **Fleet.**  ``redis-server`` and three replicas (10k ads): a writer upserts 10 ads through each
   replica in turn; the propagation delay is the time from the acknowledgement until both other
   replicas serve the write (polled every 1 ms).

Client and server processes share the machine's cores; the load average is recorded.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgspec
import numpy as np

from adrank.core.artifact import FORMAT_NAME, write_artifact
from adrank.core.files import write_report
from exporter.synthetic import make_schema, random_features, synthetic_model
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
N_CONTEXT, N_ITEM, K, VALUES = 8, 8, 16, 2_000
ADRANK = [sys.executable, "-c", "import sys; from adrank.cli import main; sys.exit(main())"]
enc = msgspec.json.Encoder()
TOKEN = "bench-admin-token-0123456789abcdef"
# The servers never shed: a request's whole wait is what is measured (the default ADRANK_QUEUE_BUDGET
# of 25 ms would turn the worst waits into 503s and hide them from the percentiles).
QUEUE_BUDGET = "10"
REFUSED: dict[int, int] = {}  # ranking replies other than 200, by status (none expected)  # the served processes' admin token (catalog writes, /v1/state)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Conn:
    """One keep-alive http.client connection (less client overhead than httpx)."""

    def __init__(self, port: int):
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"authorization": f"Bearer {TOKEN}"}
        if body:
            headers["content-type"] = "application/json"
        self.c.request(method, path, body=body, headers=headers)
        r = self.c.getresponse()
        return r.status, r.read()


def serve(args: list[str], port: int, env: dict, log: Path) -> tuple[subprocess.Popen, float]:
    """Start ``adrank serve`` and wait for /readyz; returns (process, seconds to ready)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([*ADRANK, "serve", *args, "--port", str(port), "--no-access-log", "--log-level", "warning"],
                            env={"ADRANK_QUEUE_BUDGET": QUEUE_BUDGET, **env, "ADRANK_ADMIN_TOKEN": TOKEN},
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: see {log}")
        try:
            if Conn(port).call("GET", "/readyz")[0] == 200:
                return proc, time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.1)


def kill9(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def pct(a, q) -> float:
    return float(np.percentile(a, q)) * 1e3 if len(a) else float("nan")


def summary(t) -> dict:
    t = np.asarray(t)
    return {"n": len(t), "p50_ms": pct(t, 50), "p90_ms": pct(t, 90), "p99_ms": pct(t, 99), "max_ms": pct(t, 100)}


def commit_floor(d: Path, n: int = 100) -> dict:
    """The machine's floor under a write's acknowledgement: one SQLite commit of a 100-ad entry
    (~20 KB) in WAL mode with synchronous=FULL (an fsync), on the state directory's file system."""
    import sqlite3

    db = Path(tempfile.mkdtemp(dir=d)) / "floor.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = FULL")
    con.execute("CREATE TABLE log (pos INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB)")
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO log (body) VALUES (?)", (b"x" * 20_000,))
        con.execute("COMMIT")
        t.append(time.perf_counter() - t0)
        time.sleep(0.01)
    con.close()
    return summary(t)


# --- 1 + 2: writes against a large catalog, then a restart ----------------------------------------
def open_loop(port: int, bodies: list[bytes], rate: float, seconds: float, rng) -> list[float]:
    """Poisson arrivals at ``rate`` req/s for ``seconds``, from two threads with a keep-alive
    connection each (rate/2 each); a latency counts from the request's scheduled time, so a reply
    that holds up the next request is charged to it too (no coordinated omission)."""
    out, lock = [], threading.Lock()
    start = time.perf_counter() + 0.05

    def sender(seed: int) -> None:
        r = np.random.default_rng(seed)
        c, t, got = Conn(port), start, []
        while True:
            t += r.exponential(2.0 / rate)
            if t > start + seconds:
                break
            time.sleep(max(0.0, t - time.perf_counter()))
            status, _ = c.call("POST", "/v1/rank", bodies[int(r.integers(len(bodies)))])
            if status != 200:  # counted and reported, never timed
                with lock:
                    REFUSED[status] = REFUSED.get(status, 0) + 1
                continue
            got.append(time.perf_counter() - t)
        with lock:
            out.extend(got)

    threads = [threading.Thread(target=sender, args=(int(rng.integers(1 << 30)),)) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return out


def pressure() -> dict:
    """Linux pressure stall information: the share of the last 60 s some task waited for a CPU / IO."""
    out = {}
    for what in ("cpu", "io"):
        try:
            line = Path(f"/proc/pressure/{what}").read_text().splitlines()[0]
            out[what] = float(line.split("avg60=")[1].split()[0])
        except (OSError, IndexError, ValueError):
            out[what] = None
    return out


def write_cost(d: Path, rng) -> dict:
    """The CPU side of acknowledging an upsert of 100 ads, in this process (prepare + commit + apply
    against a 100k-ad catalog, no HTTP, no concurrent requests): what a write costs the server."""
    from adrank.core.preprocess import Preprocessor  # noqa: F401 - the serve extra is installed
    from service.settings import ModelSpec
    from service.state import ServingState

    schema = make_schema(N_CONTEXT, N_ITEM, multi_item=1, multi_context=1, max_values=4)
    feats = random_features(schema, range(N_CONTEXT, schema.m), VALUES, rng, 100_000)
    (d / "cost.jsonl").write_bytes(b"".join(enc.encode({"id": f"ad-{i}", "features": f}) + b"\n"
                                            for i, f in enumerate(feats)))
    st = ServingState(Settings(models=(ModelSpec("dplr", d / "dplr.adrk"),), catalog=d / "cost.jsonl",
                               state_dir=d / "cost-state", gc_freeze=False))
    st.start(follow=False)
    wall, cpu = [], []
    for j in range(100):
        ads = [{"id": f"c{j}-{i}", "features": feats[(j * 100 + i) % 100_000]} for i in range(100)]
        t0, c0 = time.perf_counter(), time.thread_time()
        st.upsert(ads)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    st.stop()
    return {"wall": summary(wall), "cpu": summary(cpu)}


def writes_and_restart(d: Path, n_ads: int, rounds: int, phase_s: float, rate: float, rng) -> dict:
    schema = make_schema(N_CONTEXT, N_ITEM, multi_item=1, multi_context=1, max_values=4)
    sm = synthetic_model("dplr", schema, values_per_field=VALUES, k=K, rho=2, seed=5)
    manifest, arrays = sm.artifact_parts()
    write_artifact(d / "dplr.adrk", {**manifest, "format": FORMAT_NAME}, arrays)
    item = range(N_CONTEXT, schema.m)
    with open(d / "ads.jsonl", "wb") as f:
        for lo in range(0, n_ads, 100_000):
            feats = random_features(schema, item, VALUES, rng, min(100_000, n_ads - lo))
            f.write(b"".join(enc.encode({"id": f"ad-{lo + i}", "features": x}) + b"\n" for i, x in enumerate(feats)))
    port = free_port()
    args = [f"dplr={d / 'dplr.adrk'}", "--catalog", str(d / "ads.jsonl"), "--state-dir", str(d / "state"),
            "--run-dir", str(d / "run")]
    env = {**os.environ}
    proc, cold_s = serve(args, port, env, d / "server.log")
    out = {"catalog_ads": n_ads, "cold_start_s": cold_s}
    t0 = time.perf_counter()
    while msgspec.json.decode(Conn(port).call("GET", "/v1/state")[1])["backlog"] > 1000:
        time.sleep(0.5)  # the start-up catalog's log entries are folded into the log's snapshot first
    out["settle_s"] = time.perf_counter() - t0
    ctx_names = [f.name for f in schema.context_fields]
    ctx = {name: f"f{f}v{int(rng.integers(0, VALUES))}" for f, name in enumerate(ctx_names)}
    ctx[ctx_names[-1]] = [ctx[ctx_names[-1]]]
    rank_bodies = [enc.encode({"context": ctx, "ads": [{"id": f"ad-{i}"} for i in rng.choice(n_ads, 1000, replace=False)]})
                   for _ in range(200)]
    new_feats = random_features(schema, item, VALUES, rng, 2_000)
    written = 0

    def write_body(j: int) -> bytes:
        ads = [{"id": f"new-{j}-{i}", "features": new_feats[(j * 100 + i) % 2000]} for i in range(50)]
        ads += [{"id": f"ad-{int(x)}", "features": new_feats[int(x) % 2000]} for x in rng.choice(n_ads, 50, replace=False)]
        return enc.encode({"ads": ads})

    try:
        rank_t = {"quiet": [[] for _ in range(rounds)], "writes": [[] for _ in range(rounds)]}
        out["rate"] = rate
        acks, stop = [], threading.Event()

        def writer(deadline: float) -> None:
            nonlocal written
            c = Conn(port)
            nxt = time.perf_counter()
            while time.perf_counter() < deadline:
                body = write_body(written)
                t0 = time.perf_counter()
                status, _ = c.call("PUT", "/v1/ads", body)
                acks.append(time.perf_counter() - t0)
                assert status == 200, status
                written += 1
                nxt += 0.2
                time.sleep(max(0.0, nxt - time.perf_counter()))

        for b in rank_bodies[:20]:  # warm the connection and caches
            Conn(port).call("POST", "/v1/rank", b)
        for r in range(rounds):
            for phase in (("quiet", "writes") if r % 2 == 0 else ("writes", "quiet")):
                end = time.perf_counter() + phase_s
                w = threading.Thread(target=writer, args=(end,)) if phase == "writes" else None
                if w:
                    w.start()
                rank_t[phase][r] = open_loop(port, rank_bodies, rate, phase_s, rng)
                if w:
                    w.join()
        stop.set()
        quiet = np.concatenate(rank_t["quiet"])
        busy = np.concatenate(rank_t["writes"])
        out["ack_100_ads"] = summary(acks)
        out["rank_quiet"], out["rank_with_writes"] = summary(quiet), summary(busy)
        out["p99_ratio"] = pct(busy, 99) / pct(quiet, 99)
        out["p99_ratio_by_round"] = [pct(b, 99) / pct(q, 99) for q, b in zip(rank_t["quiet"], rank_t["writes"],
                                                                              strict=True)]
        out["upserts"] = written
        status, state = Conn(port).call("GET", "/v1/state")
        out["state_after_writes"] = msgspec.json.decode(state)
        metrics = Conn(port).call("GET", "/metrics")[1].decode()
        out["merges"] = sum(float(x.rsplit(" ", 1)[1]) for x in metrics.splitlines()
                            if x.startswith("adrank_catalog_merges_total"))
        # 1,000 single-ad PUT/DELETE pairs (the history a restart must not replay one by one)
        c = Conn(port)
        for i in range(1000):
            c.call("PUT", "/v1/ads", enc.encode({"ads": [{"id": f"pair-{i}", "features": new_feats[i]}]}))
            c.call("DELETE", f"/v1/ads/pair-{i}")
        probe = [f"ad-{int(x)}" for x in rng.integers(0, n_ads, 200)] + [f"new-{written - 1}-{i}" for i in range(50)]
        before = {i: features(c, i) for i in probe}
        size_before = msgspec.json.decode(c.call("GET", "/v1/state")[1])["catalog"]["ads"]
        kill9(proc)
        port = free_port()
        proc, restart_s = serve(args, port, env, d / "server.log")
        c = Conn(port)
        after = {i: features(c, i) for i in probe}
        size_after = msgspec.json.decode(c.call("GET", "/v1/state")[1])["catalog"]["ads"]
        out["restart"] = {"after_kill9_s": restart_s, "cold_start_s": cold_s, "ratio": restart_s / cold_s,
                          "log_entries_since_start": 2000 + written, "catalog_equal": before == after
                          and size_before == size_after, "catalog_ads": size_after}
    finally:
        kill9(proc)
    return out


def features(c: Conn, ad_id: str):
    status, body = c.call("GET", f"/v1/ads/{ad_id}")
    return msgspec.json.decode(body)["features"] if status == 200 else None


# --- 3: a fleet on Redis ---------------------------------------------------------------------------
def fleet(d: Path, n_ads: int, writes: int, rng) -> dict:
    exe = shutil.which("redis-server")
    if exe is None:
        return {"skipped": "redis-server not installed"}
    schema = make_schema(N_CONTEXT, N_ITEM, multi_item=1, multi_context=1, max_values=4)
    feats = random_features(schema, range(N_CONTEXT, schema.m), VALUES, rng, n_ads + 10 * writes)
    (d / "fleet.jsonl").write_bytes(b"".join(enc.encode({"id": f"ad-{i}", "features": feats[i]}) + b"\n"
                                             for i in range(n_ads)))
    rport = free_port()
    (d / "redis").mkdir()
    redis = subprocess.Popen([exe, "--port", str(rport), "--bind", "127.0.0.1", "--dir", str(d / "redis"),
                              "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**os.environ, "ADRANK_LOG": f"redis://127.0.0.1:{rport}/0", "ADRANK_LOG_KEY": "bench"}
    procs, ports = [], []
    try:
        time.sleep(0.5)
        for i in range(3):
            ports.append(free_port())
            extra = ["--catalog", str(d / "fleet.jsonl")] if i == 0 else []
            procs.append(serve([f"dplr={d / 'dplr.adrk'}", *extra, "--run-dir", str(d / f"run{i}")], ports[-1], env,
                               d / f"replica{i}.log")[0])
        conns = [Conn(p) for p in ports]
        delays, acks = [], []
        for j in range(writes):
            src = j % 3
            ads = [{"id": f"f-{j}-{i}", "features": feats[n_ads + 10 * j + i]} for i in range(10)]
            t0 = time.perf_counter()
            status, _ = conns[src].call("PUT", "/v1/ads", enc.encode({"ads": ads}))
            t_ack = time.perf_counter()
            acks.append(t_ack - t0)
            assert status == 200
            for k in range(3):
                if k == src:
                    continue
                while conns[k].call("GET", f"/v1/ads/f-{j}-9")[0] != 200:
                    time.sleep(0.001)
                delays.append(time.perf_counter() - t_ack)
        return {"replicas": 3, "catalog_ads": n_ads, "writes": writes, "ads_per_write": 10,
                "ack": summary(acks), "propagation": summary(delays)}
    finally:
        for p in procs:
            kill9(p)
        redis.terminate()
        redis.wait(10)


def markdown(res: dict) -> str:
    w, f = res["writes"], res.get("fleet", {})
    lines = [f"# State: catalog writes, restarts, a fleet\n\nCommand: `{res['command']}`  \n"
             f"Machine: {res['machine']}; the servers' thread switch interval {res['args']['switch_interval']} s; load average (1, 5, 15 min) at start {res['load_start']}, at end "
             f"{res['load_end']}; CPU pressure (share of the last minute some task waited for a core) "
             f"{res['pressure_start']['cpu']}% at start, {res['pressure_end']['cpu']}% at end; clients and servers share "
             f"the cores with other jobs. The servers run with `ADRANK_QUEUE_BUDGET={QUEUE_BUDGET}` (no shedding: "
             "a ranking request's whole wait is timed); ranking replies other than 200: "
             f"{res.get('ranking_refused') or 'none'}.\n",
             f"## Writes against a {w['catalog_ads']:,}-ad catalog (one worker, SQLite log)\n",
             f"Cold start with `--catalog` ({w['catalog_ads']:,} ads): **{w['cold_start_s']:.1f} s** to /readyz.\n",
             f"Acknowledging an upsert of 100 ads (client side, {w['ack_100_ads']['n']} upserts, one every 200 ms, "
             f"half new ids, while the ranking client below runs): p50 **{w['ack_100_ads']['p50_ms']:.2f} ms**, p90 "
             f"{w['ack_100_ads']['p90_ms']:.2f}, p99 **{w['ack_100_ads']['p99_ms']:.2f} ms**, max "
             f"{w['ack_100_ads']['max_ms']:.2f} (target ≤ 10 ms).  Floor of the same run: one SQLite commit of such an "
             f"entry with its fsync (synchronous=FULL) took p50 {res['commit_floor_before']['p50_ms']:.2f} / p99 "
             f"{res['commit_floor_before']['p99_ms']:.2f} ms before the run and p50 "
             f"{res['commit_floor_after']['p50_ms']:.2f} / p99 {res['commit_floor_after']['p99_ms']:.2f} ms after it "
             "(the disk is shared with other jobs).\n",
             f"The same write in process (prepare + SQLite commit + apply, no HTTP, no concurrent requests, 100k-ad "
             f"catalog): wall p50 **{res['write_cost']['wall']['p50_ms']:.2f} ms** / p99 "
             f"{res['write_cost']['wall']['p99_ms']:.2f}, of which CPU p50 {res['write_cost']['cpu']['p50_ms']:.2f} ms.\n",
             f"1,000-id `/v1/rank` requests at {w['rate']:g} per second (Poisson, latency from each request's "
             "scheduled time), in interleaved phases without and with the writes above "
             f"({res['args']['rounds']} of each, {res['args']['phase_s']} s each; ms at the client):\n",
             "| phase | requests | p50 | p90 | p99 | max |", "|---|---|---|---|---|---|"]
    for name, key in (("no writes", "rank_quiet"), ("one write every 200 ms", "rank_with_writes")):
        s = w[key]
        lines.append(f"| {name} | {s['n']} | {s['p50_ms']:.2f} | {s['p90_ms']:.2f} | {s['p99_ms']:.2f} | {s['max_ms']:.2f} |")
    ratios = ", ".join(f"{x:.2f}" for x in w["p99_ratio_by_round"])
    lines += ["", f"p99 with writes ÷ p99 without: **{w['p99_ratio']:.2f}** pooled (target ≤ 1.2); round by round "
              f"{ratios}.  Background merges of the delta into the base during the run: {w['merges']:.0f}.\n",
              "## Restart\n",
              f"After the writes above and 1,000 single-ad PUT/DELETE pairs ({w['restart']['log_entries_since_start']:,} "
              f"log entries since the first start), kill -9 and start again on the same state directory: ready in "
              f"**{w['restart']['after_kill9_s']:.1f} s** against {w['restart']['cold_start_s']:.1f} s for the cold "
              f"start ({w['restart']['ratio']:.2f}×); catalog equal before and after: "
              f"**{w['restart']['catalog_equal']}** ({w['restart']['catalog_ads']:,} ads).\n"]
    if f and "skipped" not in f:
        p = f["propagation"]
        lines += ["## Fleet: three replicas on one Redis\n",
                  f"{f['writes']} upserts of {f['ads_per_write']} ads, through each replica in turn, into a "
                  f"{f['catalog_ads']:,}-ad catalog: acknowledged in p50 {f['ack']['p50_ms']:.2f} ms / p99 "
                  f"{f['ack']['p99_ms']:.2f} ms; served by both other replicas after (from the acknowledgement, "
                  f"{p['n']} measurements) p50 **{p['p50_ms']:.1f} ms**, p90 {p['p90_ms']:.1f}, p99 "
                  f"**{p['p99_ms']:.1f} ms**, max {p['max_ms']:.1f} (target p99 < 1 s).\n"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100k ads, 2 + 2 phases, 60 fleet writes")
    ap.add_argument("--ads", type=int, help="catalog size (default 1,000,000; --quick 100,000)")
    ap.add_argument("--rate", type=float, default=100.0, help="1,000-id ranking requests per second (Poisson)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "state"))
    args = ap.parse_args(argv)
    n_ads = args.ads or (100_000 if args.quick else 1_000_000)
    rounds, phase_s = (2, 3.0) if args.quick else (6, 5.0)
    rng = np.random.default_rng(7)
    d = Path(tempfile.mkdtemp(prefix="adrank-state-bench-"))
    cmd = "python -m benchmarks.state" + (" --quick" if args.quick else "") + (f" --ads {args.ads}" if args.ads else "") \
        + (f" --rate {args.rate:g}" if args.rate != 100.0 else "")
    res = {"command": cmd, "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]},
           "args": {"ads": n_ads, "rounds": rounds, "phase_s": phase_s,
                    "switch_interval": Settings.from_env().switch_interval, "queue_budget_s": float(QUEUE_BUDGET)},
           "load_start": os.getloadavg(), "pressure_start": pressure()}
    try:
        res["commit_floor_before"] = commit_floor(d)
        print("writes + restart ...", flush=True)
        res["writes"] = writes_and_restart(d, n_ads, rounds, phase_s, args.rate, rng)
        print("write cost ...", flush=True)
        res["write_cost"] = write_cost(d, rng)
        print("fleet ...", flush=True)
        res["fleet"] = fleet(d, 10_000, 60 if args.quick else 300, rng)
        res["commit_floor_after"] = commit_floor(d)
    finally:
        res["ranking_refused"] = {str(k): v for k, v in REFUSED.items()}
        res["load_end"], res["pressure_end"] = os.getloadavg(), pressure()
        shutil.rmtree(d, ignore_errors=True)
    write_report(Path(args.out), res, markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
