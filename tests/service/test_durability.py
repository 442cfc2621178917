"""State that survives what operators do, with real processes (slow, each a few seconds):

* the served artifact overwritten in place, truncated and deleted under load: no crash, no failed
  request, scores unchanged until a reload;
* kill -9 of one worker, then of the whole server, in the middle of concurrent catalog writes,
  then a restart: every acknowledged write is there, no unacknowledged batch is half-applied; a
  corrupt log entry is skipped and reported, never fatal;
* SIGTERM: /readyz turns 503 while requests in flight finish, then the server exits;
* three replicas on one Redis converge after concurrent writes through all of them and a
  kill -9 + restart of one.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time

import httpx
import numpy as np
import pytest

from tests.service.helpers import ADMIN, Server, make_artifact, random_request, reference_scores
from tests.service.state_helpers import RedisServer

pytestmark = pytest.mark.slow


def _env(tmp_path, **extra):
    return {**os.environ, "ADRANK_LOG_POLL": "0.02", **extra}


def _eventually(check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "not converged in time"
        time.sleep(0.05)


def _ad(writer: int, i: int, gen: int) -> dict:
    return {"id": f"w{writer}-{i}", "features": {"C14": f"c14-{(i + gen) % 8}", "C15": f"c15-{gen % 8}",
                                                 "tags": [f"tags-{gen % 8}"]}}


class Writers:
    """Threads writing batches of their own ids through ``urls`` (round robin), recording what
    was acknowledged: per id the features of the last acknowledged upsert (None once deleted), and
    the batches in flight when a request failed (unacknowledged: all or nothing after a crash)."""

    def __init__(self, urls, n: int = 4, batch: int = 40):
        self.urls, self.batch = urls, batch
        self.acked: dict[str, dict | None] = {}
        self.unacked: list[list[dict]] = []
        self.ok = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(w,), daemon=True) for w in range(n)]
        for t in self.threads:
            t.start()

    def _run(self, w: int) -> None:
        gen = 0
        with httpx.Client(timeout=15, headers=ADMIN) as h:
            while not self.stop.is_set():
                url = self.urls[(w + gen) % len(self.urls)]
                gen += 1
                ads = [_ad(w, i, gen) for i in range(self.batch)]
                try:
                    r = h.put(url + "/v1/ads", json={"ads": ads})
                    if r.status_code != 200:
                        raise httpx.HTTPError(f"{r.status_code} {r.text[:100]}")
                except httpx.HTTPError:
                    with self.lock:
                        self.unacked.append(ads)
                    time.sleep(0.05)
                    continue
                with self.lock:
                    self.acked.update({a["id"]: a["features"] for a in ads})
                    self.ok += 1
                if gen % 5 == 0:  # and delete one of them
                    gone = f"w{w}-{gen % self.batch}"
                    try:
                        deleted = h.delete(f"{url}/v1/ads/{gone}").status_code == 200
                    except httpx.HTTPError:  # no reply (a kill mid-request): it may have landed
                        deleted = None
                    with self.lock:
                        if deleted:
                            self.acked[gone] = None
                        elif deleted is None:
                            self.unacked.append([{"id": gone, "features": None}])

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def _catalog(url: str, ids) -> dict:
    out = {}
    with httpx.Client(base_url=url, timeout=10, headers=ADMIN) as h:
        for i in ids:
            r = h.get(f"/v1/ads/{i}")
            out[i] = r.json()["features"] if r.status_code == 200 else None
    return out


def _check_acknowledged(found: dict, w: Writers) -> None:
    """Every acknowledged write is present; an id whose last acknowledged state differs was touched
    by an unacknowledged batch that landed whole (never half of one)."""
    landed = []
    for i, want in w.acked.items():
        if found[i] == want:
            continue
        batch = next((b for b in reversed(w.unacked) if any(a["id"] == i and a["features"] == found[i] for a in b)),
                     None)
        assert batch is not None, f"{i}: acknowledged {want}, found {found[i]}"
        landed.append(batch)
    for batch in landed:  # an unacknowledged batch that landed, landed whole
        assert all(found.get(a["id"]) == a["features"] for a in batch if a["id"] in found)


def test_the_artifact_overwritten_truncated_deleted_under_load(tmp_path):
    path, other = tmp_path / "served.adrk", tmp_path / "other.adrk"
    params = make_artifact(path, "dplr", seed=1)
    make_artifact(other, "dplr", seed=2)  # same schema, other parameters
    req = random_request(np.random.default_rng(3), 40)
    want = reference_scores("dplr", params, req)
    with Server([f"dplr={path}"], _env(tmp_path)) as srv:
        failures, replies, stop = [], [], threading.Event()

        def hammer():
            with httpx.Client(base_url=srv.url, timeout=10, headers=ADMIN) as h:
                while not stop.is_set():
                    try:
                        r = h.post("/v1/rank", json=req)
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))
                        continue
                    if r.status_code != 200:
                        failures.append(r.text[:200])
                        continue
                    got = {a["id"]: a["score"] for a in r.json()["ads"]}
                    replies.append(all(abs(got[i] - want[i]) <= 2e-6 for i in want))

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)
            with open(path, "r+b") as f:  # overwritten in place (cp): same inode, new bytes
                f.write(other.read_bytes())
            time.sleep(0.7)
            os.truncate(path, 100)
            time.sleep(0.7)
            path.unlink()
            time.sleep(0.7)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert srv.proc.poll() is None and not failures, failures[:3]
        assert len(replies) > 50 and all(replies)  # every reply scored by the model loaded at start
        path.write_bytes(other.read_bytes())
        r = httpx.post(srv.url + "/v1/models/dplr/reload", timeout=30, headers=ADMIN)
        assert r.status_code == 200 and r.json()["version"] != r.json()["previous_version"]


def test_kill9_of_a_worker_then_of_the_server_mid_writes_keeps_every_acknowledged_write(tmp_path):
    path = tmp_path / "m.adrk"
    make_artifact(path, "dplr", seed=1)
    state = tmp_path / "state"
    args = [f"dplr={path}", "--workers", "2"]
    srv = Server(args, _env(tmp_path), state_dir=state)
    try:
        pids = set()
        _eventually(lambda: pids.add(httpx.get(srv.url + "/v1/models").json()["worker"]) or len(pids) == 2)
        w = Writers([srv.url])
        time.sleep(1.0)
        os.kill(pids.pop(), signal.SIGKILL)  # one worker, mid-write; the supervisor starts another
        time.sleep(1.5)
        acked_before = w.ok
        time.sleep(1.0)
        assert w.ok > acked_before  # the surviving (and respawned) workers keep acknowledging
        srv.kill()  # kill -9 of the whole server, mid-write
        time.sleep(0.3)
        w.finish()
    finally:
        srv.stop()
    assert w.ok > 10 and w.unacked, "the kills should interrupt writes in flight"
    with Server(args, _env(tmp_path), state_dir=state) as again:
        _check_acknowledged(_catalog(again.url, list(w.acked)), w)
        # a corrupt entry (half of its bytes) lands in the log: skipped and reported, never fatal
        con = sqlite3.connect(state / "state.db")
        con.execute("INSERT INTO log (kind, body, crc, at) VALUES ('ads.upsert', x'7b2261647322', 1, 0)")
        con.commit()
        con.close()
        r = httpx.put(again.url + "/v1/ads", json={"ads": [{"id": "after", "features": {"C14": "c14-1"}}]}, headers=ADMIN)
        assert r.status_code == 200
        _eventually(lambda: all(httpx.get(again.url + "/v1/ads/after", headers=ADMIN).status_code == 200 for _ in range(4)))
        skipped = httpx.get(again.url + "/v1/state", headers=ADMIN).json()["skipped"]
        assert skipped and skipped[0]["reason"] == "checksum mismatch"
        metrics = httpx.get(again.url + "/metrics").text
        assert 'adrank_log_entries_total{kind="ads.upsert",result="skipped"}' in metrics
    with Server(args, _env(tmp_path), state_dir=state) as third:  # and at start-up too
        assert httpx.get(third.url + "/v1/ads/after", headers=ADMIN).status_code == 200
        _check_acknowledged(_catalog(third.url, list(w.acked)), w)


def test_sigterm_turns_readiness_off_and_finishes_requests_in_flight(tmp_path):
    path = tmp_path / "m.adrk"
    make_artifact(path, "dplr", seed=1)
    big = random_request(np.random.default_rng(0), 5000)
    srv = Server([f"dplr={path}"], _env(tmp_path, ADRANK_DRAIN_SECONDS="1.5"))
    try:
        codes, ready = [], []

        def client():
            with httpx.Client(base_url=srv.url, timeout=30, headers=ADMIN) as h:
                for _ in range(400):
                    try:
                        codes.append(h.post("/v1/rank", json=big).status_code)
                    except httpx.HTTPError:
                        return  # the server closed: no new request is accepted after the drain

        t = threading.Thread(target=client)
        t.start()
        time.sleep(0.5)
        srv.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:
            try:
                ready.append(httpx.get(srv.url + "/readyz", timeout=2).status_code)
            except httpx.HTTPError:
                break
            time.sleep(0.05)
        t.join(60)
        assert srv.proc.wait(30) == 0
    finally:
        srv.stop()
    assert ready and set(ready) == {503}  # out of rotation at once
    assert codes and set(codes) == {200}  # ... while every request it took was answered


def test_three_replicas_on_redis_converge_after_writes_and_a_restart(tmp_path):
    path = tmp_path / "m.adrk"
    make_artifact(path, "dplr", seed=1)
    other = tmp_path / "m2.adrk"
    make_artifact(other, "dplr", seed=2)
    with RedisServer(tmp_path / "redis") as redis:
        env = _env(tmp_path, ADRANK_LOG=redis.url, ADRANK_LOG_KEY="fleet")
        replicas = [Server([f"dplr={path}"], env, state_dir=tmp_path / f"r{i}") for i in range(3)]
        try:
            w = Writers([r.url for r in replicas], n=3, batch=20)
            time.sleep(1.0)
            victim = replicas[2]
            victim.kill()  # kill -9 mid-write
            time.sleep(0.5)
            replicas[2] = Server([f"dplr={path}"], env, state_dir=tmp_path / "r2")  # bootstraps from Redis
            time.sleep(1.0)
            w.finish()
            r = httpx.post(replicas[1].url + "/v1/models/dplr/reload", json={"path": str(other)}, timeout=30, headers=ADMIN)
            assert r.status_code == 200
            version = r.json()["version"]
            for rep in replicas:
                _eventually(lambda rep=rep: httpx.get(rep.url + "/readyz").json()["models"]["dplr"] == version)
            positions = {httpx.get(rep.url + "/readyz").json()["position"] for rep in replicas}
            assert len(positions) == 1  # every replica applied the same log
            views = [_catalog(rep.url, list(w.acked)) for rep in replicas]
            assert views[0] == views[1] == views[2]
            _check_acknowledged(views[0], w)
            assert w.ok > 10
        finally:
            for rep in replicas:
                rep.stop()
