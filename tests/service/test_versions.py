"""Several versions of one model: pins, traffic splits (weights, sticky keys), a shadow version,
retiring; every change logged (a restart keeps it, other workers follow it).  Scores are checked
against tests/naive.py (reference_scores) of the version each reply names."""

from __future__ import annotations

import math
import random

import msgspec
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import metrics, shadow
from service.app import create_app
from service.settings import ModelSpec, Settings
from service.state import ServingState
from service.traffic import Split, TrafficError, UnknownVersion, key_point
from tests.service.helpers import (
    ADMIN,
    ADMIN_TOKEN,
    make_artifact,
    random_request,
    ranker_loader,
    reference_scores,
)
from tests.service.test_metrics import value


def _settings(path, state_dir, **kw) -> Settings:
    """One model served from ``path``; reloads read its directory; the tests' admin token."""
    kw.setdefault("admin_token", ADMIN_TOKEN)
    return Settings(models=(ModelSpec("dplr", path),), gc_freeze=False, state_dir=state_dir, log_poll=0.01,
                    model_dir=path.parent, **kw)


@pytest.fixture
def world(tmp_path):
    """Two versions of one schema: a.adrk (served at start) and b.adrk; their params (the oracle's input)."""
    a, b, c = tmp_path / "a.adrk", tmp_path / "b.adrk", tmp_path / "c.adrk"
    pa, pb, pc = make_artifact(a, "dplr", seed=1), make_artifact(b, "dplr", seed=2), make_artifact(c, "dplr", seed=3)
    return tmp_path, (a, pa), (b, pb), (c, pc)


def _check(body: dict, params_by_version: dict, req: dict) -> None:
    want = reference_scores("dplr", params_by_version[body["version"]], req)
    assert {a["id"] for a in body["ads"]} == set(want)
    for ad in body["ads"]:
        assert ad["score"] == pytest.approx(want[ad["id"]], abs=2e-6)


def _two_versions(c, b):
    """Load b beside the current version; returns (current version, b's version)."""
    v1 = c.get("/v1/models").json()["models"][0]["version"]
    r = c.post("/v1/models/dplr/reload", json={"path": str(b), "keep": True})
    assert r.status_code == 200, r.text
    v2 = r.json()["version"]
    assert v2 != v1 and r.json()["current_version"] == v1 and r.json()["versions"] == [v1, v2]
    return v1, v2


# --- routing without a server ---------------------------------------------------------------------
def test_split_pick_follows_the_cumulated_weights_of_loaded_versions():
    s = Split((("a", 1.0), ("b", 3.0), ("c", 0.0)))
    assert [s.pick(u, {"a", "b", "c"}) for u in (0.0, 0.2499, 0.25, 0.999999)] == ["a", "a", "b", "b"]
    assert s.pick(0.1, {"b"}) == "b"  # a version not loaded counts as weight 0
    assert s.pick(0.1, {"c"}) is None
    with pytest.raises(TrafficError, match="weights\\['a'\\]"):
        Split.from_dict({"weights": {"a": -1}})
    with pytest.raises(TrafficError, match="unknown field"):
        Split.from_dict({"weight": {"a": 1}})
    with pytest.raises(TrafficError, match="not loaded; loaded versions: x, y"):
        Split.from_dict({"weights": {"a": 1}}).check("m", ["x", "y"])
    assert Split.from_dict({}) is None


def test_route_fractions_match_the_weights_and_keys_are_sticky(world):
    """20,000 keyed and 20,000 random routings against a 70/30 split: each observed fraction is
    within 5 standard deviations of 0.3 (sd = sqrt(0.3 * 0.7 / 20000) = 0.0032; a false failure has
    probability < 6e-7 per check, if the hash and the generator are uniform)."""
    tmp, (a, _), (b, _), _ = world
    st = ServingState(_settings(a, tmp / "state"), loader=ranker_loader())
    st.start(follow=False)
    try:
        v1 = st.snapshot.models["dplr"].version
        v2 = st.reload("dplr", str(b), keep=True)[0].version
        st.set_traffic("dplr", {"weights": {v1: 70, v2: 30}})
        snap, n = st.snapshot, 20_000
        sd = math.sqrt(0.3 * 0.7 / n)
        keyed = [snap.route("dplr", key=f"user-{i}").version for i in range(n)]
        assert abs(keyed.count(v2) / n - 0.3) < 5 * sd
        rng = random.Random(7)
        drawn = [snap.route("dplr", draw=rng.random).version for _ in range(n)]
        assert abs(drawn.count(v2) / n - 0.3) < 5 * sd
        # sticky: a key routes the same way every time, on any snapshot with the same split
        assert all(snap.route("dplr", key=f"user-{i}").version == keyed[i] for i in range(0, n, 97))
        assert key_point("dplr", "user-1") == key_point("dplr", "user-1") != key_point("other", "user-1")
        assert snap.route("dplr", version=v2).version == v2  # a pin wins over the split
        with pytest.raises(UnknownVersion, match=f"loaded versions: {v1}, {v2}"):
            snap.route("dplr", version="nope")
    finally:
        st.stop()


# --- HTTP ---------------------------------------------------------------------------------------
def test_pin_split_sticky_replies_name_their_version(world):
    tmp, (a, pa), (b, pb), _ = world
    req = random_request(np.random.default_rng(0), 6)
    with TestClient(create_app(_settings(a, tmp / "state"), loader=ranker_loader()), headers=ADMIN) as c:
        v1, v2 = _two_versions(c, b)
        params = {v1: pa, v2: pb}
        assert c.post("/v1/rank", json=req).json()["version"] == v1  # no split: the current version
        for v in (v1, v2):
            body = c.post("/v1/rank", json={**req, "version": v}).json()
            assert body["version"] == v
            _check(body, params, req)
        r = c.post("/v1/rank", json={**req, "version": "nope"})
        assert r.status_code == 404 and r.json()["error"] == "unknown_version"
        assert r.json()["versions"] == [v1, v2] and v1 in r.json()["message"] and v2 in r.json()["message"]

        r = c.put("/v1/models/dplr/traffic", json={"weights": {v1: 1, v2: 1}})
        assert r.status_code == 200 and r.json()["traffic"]["weights"] == {v1: 1.0, v2: 1.0}
        seen: dict[str, str] = {}
        for i in range(40):
            key = f"user-{i % 10}"
            body = c.post("/v1/rank", json={**req, "routing_key": key}).json()
            assert seen.setdefault(key, body["version"]) == body["version"]  # sticky per key
            _check(body, params, req)
        assert set(seen.values()) == {v1, v2}  # 10 keys on a 50/50 split: both (fails w.p. 2 * 2^-10)
        unkeyed = {c.post("/v1/rank", json=req).json()["version"] for _ in range(30)}  # the fast path
        assert unkeyed == {v1, v2}  # random by weight (fails w.p. 2 * 2^-30)

        r = c.put("/v1/models/dplr/traffic", json={"weights": {v1: 1, "nope": 1}})
        assert r.status_code == 422 and "'nope' is not loaded" in r.json()["message"]
        assert c.put("/v1/models/dplr/traffic", json={"weights": {v1: -1}}).status_code == 422
        assert c.put("/v1/models/nope/traffic", json={}).status_code == 404
        models = c.get("/v1/models").json()["models"][0]
        assert [v["version"] for v in models["versions"]] == [v1, v2] and models["versions"][0]["current"]
        assert models["traffic"]["weights"] == {v1: 1.0, v2: 1.0}

        text = c.get("/metrics").text
        assert value(text, "adrank_version_requests_total", model="dplr", version=v2) >= 1
        assert value(text, "adrank_version_inference_duration_seconds_count", model="dplr", version=v1) >= 1


def test_retire_and_the_catalog_parts_of_every_version(world):
    tmp, (a, pa), (b, pb), _ = world
    req = random_request(np.random.default_rng(1), 5)
    with TestClient(create_app(_settings(a, tmp / "state"), loader=ranker_loader()), headers=ADMIN) as c:
        assert c.put("/v1/ads", json={"ads": req["ads"]}).status_code == 200
        v1, v2 = _two_versions(c, b)
        by_id = {"context": req["context"], "ads": [{"id": ad["id"]} for ad in req["ads"]]}
        for v, p in ((v1, pa), (v2, pb)):  # catalog ads scored with the parts of the version pinned
            body = c.post("/v1/rank", json={**by_id, "version": v}).json()
            assert body["version"] == v
            _check(body, {v: p}, req)
        svc = c.app.state.svc
        assert set(svc.state.snapshot.catalog.models) == {f"dplr@{v1}", f"dplr@{v2}"}

        r = c.delete(f"/v1/models/dplr/versions/{v1}")
        assert r.status_code == 409 and "current version" in r.json()["message"]
        c.put("/v1/models/dplr/traffic", json={"weights": {v1: 9, v2: 1}})
        r = c.delete(f"/v1/models/dplr/versions/{v2}")
        assert r.status_code == 409 and r.json()["error"] == "version_in_use"
        c.put("/v1/models/dplr/traffic", json={"weights": {v1: 1, v2: 0}})
        assert c.delete("/v1/models/dplr/versions/nope").status_code == 404
        r = c.delete(f"/v1/models/dplr/versions/{v2}")
        assert r.status_code == 200 and r.json()["versions"] == [v1]
        assert set(svc.state.snapshot.catalog.models) == {f"dplr@{v1}"}
        assert c.post("/v1/rank", json={**req, "version": v2}).status_code == 404

        # promoting a kept version: a plain reload with its path makes it current
        _two_versions(c, b)
        r = c.post("/v1/models/dplr/reload", json={"path": str(b)})
        assert r.status_code == 200 and r.json()["current_version"] == v2 and r.json()["versions"] == [v2]


def test_admin_routes_use_the_admin_token(world):
    tmp, (a, _), (b, _), _ = world
    with TestClient(create_app(_settings(a, tmp / "state", admin_token="s3cret-0123456789abcdef"), loader=ranker_loader()), headers=ADMIN) as c:
        assert c.put("/v1/models/dplr/traffic", json={}).status_code == 401
        assert c.get("/v1/models/dplr/traffic").status_code == 401
        assert c.delete("/v1/models/dplr/versions/x").status_code == 401
        auth = {"Authorization": "Bearer s3cret-0123456789abcdef"}
        assert c.get("/v1/models/dplr/traffic", headers=auth).status_code == 200


def test_a_shadow_never_changes_a_reply_and_reports_its_agreement(world):
    """The same bodies (fast path, generic path, keyed, top_k) give the same bytes with and without
    a shadow scoring every request; the shadow's metrics equal the oracle's agreement of the two
    versions on each request."""
    tmp, (a, pa), (b, pb), _ = world
    rng = np.random.default_rng(2)
    reqs = [random_request(rng, 8) for _ in range(6)]
    bodies = [msgspec.json.encode(r) for r in reqs]
    bodies += [msgspec.json.encode({**reqs[0], "routing_key": "u1"}), msgspec.json.encode({**reqs[1], "top_k": 3})]
    with TestClient(create_app(_settings(a, tmp / "state"), loader=ranker_loader()), headers=ADMIN) as c:
        v1, v2 = _two_versions(c, b)
        plain = [c.post("/v1/rank", content=x).content for x in bodies]
        labels = {"model": "dplr", "version": v1, "shadow": v2}
        before = c.get("/metrics").text
        r = c.put("/v1/models/dplr/traffic", json={"weights": {v1: 1}, "shadow": v2, "shadow_fraction": 1.0})
        assert r.status_code == 200 and r.json()["traffic"]["shadow"] == v2
        shadowed = [c.post("/v1/rank", content=x).content for x in bodies]
        assert shadowed == plain
        assert shadow.drain(30)
        after = c.get("/metrics").text

    def delta(name):
        return value(after, name, **labels) - (value(before, name, **labels) if f'shadow="{v2}"' in before else 0)

    assert delta("adrank_shadow_requests_total") == len(bodies)
    assert value(after, "adrank_shadow_requests_total", result="scored", **labels) == len(bodies)
    assert delta("adrank_shadow_topk_overlap_count") == len(bodies)
    diffs, overlaps = [], []
    for x in bodies:
        q = msgspec.json.decode(x)
        s1, s2 = reference_scores("dplr", pa, q), reference_scores("dplr", pb, q)
        k = q.get("top_k") or len(s1)
        top1 = sorted(s1, key=lambda i: -s1[i])[:k]
        top2 = sorted(s2, key=lambda i: -s2[i])[:k]
        common = set(top1) & set(top2)
        if common:  # no ad in both top-k: no score difference to observe
            diffs.append(np.mean([abs(s1[i] - s2[i]) for i in common]))
        overlaps.append(len(common) / k)
    assert delta("adrank_shadow_score_abs_diff_count") == len(diffs)
    assert delta("adrank_shadow_score_abs_diff_sum") == pytest.approx(sum(diffs), abs=1e-5)
    assert delta("adrank_shadow_topk_overlap_sum") == pytest.approx(sum(overlaps), abs=1e-9)


def test_split_and_kept_versions_survive_a_restart_and_reach_another_worker(world):
    """Two apps on one state directory stand for two workers; a third started after both stop is a
    restart (the real-process version: tests/service/test_versions_processes.py)."""
    tmp, (a, pa), (b, pb), _ = world
    state = tmp / "state"
    with TestClient(create_app(_settings(a, state), loader=ranker_loader()), headers=ADMIN) as w1, \
            TestClient(create_app(_settings(a, state), loader=ranker_loader()), headers=ADMIN) as w2:
        v1, v2 = _two_versions(w1, b)
        assert w1.put("/v1/models/dplr/traffic", json={"weights": {v1: 3, v2: 1}, "shadow": v2,
                                                       "shadow_fraction": 0.1}).status_code == 200
        want = w1.get("/v1/models/dplr/traffic").json()
        _eventually(lambda: w2.get("/v1/models/dplr/traffic").json()["traffic"] == want["traffic"])
        assert [v["version"] for v in w2.get("/v1/models/dplr/traffic").json()["versions"]] == [v1, v2]
        req = random_request(np.random.default_rng(3), 4)
        keyed = [w1.post("/v1/rank", json={**req, "routing_key": f"k{i}"}).json()["version"] for i in range(20)]
        assert [w2.post("/v1/rank", json={**req, "routing_key": f"k{i}"}).json()["version"]
                for i in range(20)] == keyed  # both workers place each key alike
    with TestClient(create_app(_settings(a, state), loader=ranker_loader()), headers=ADMIN) as again:
        got = again.get("/v1/models/dplr/traffic").json()
        assert got["traffic"] == want["traffic"] and got["current_version"] == v1
        assert [v["version"] for v in got["versions"]] == [v1, v2]
        assert [again.post("/v1/rank", json={**req, "routing_key": f"k{i}"}).json()["version"]
                for i in range(20)] == keyed
        _check(again.post("/v1/rank", json={**req, "version": v2}).json(), {v2: pb}, req)


def _eventually(check, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not converged in time"
        time.sleep(0.02)


def test_metric_labels_stay_bounded_by_loaded_versions(world):
    tmp, (a, _), (b, _), _ = world
    req = random_request(np.random.default_rng(4), 3)
    with TestClient(create_app(_settings(a, tmp / "state"), loader=ranker_loader()), headers=ADMIN) as c:
        v1, v2 = _two_versions(c, b)
        c.put("/v1/models/dplr/traffic", json={"weights": {v1: 1, v2: 1}})
        for i in range(30):
            c.post("/v1/rank", json={**req, "routing_key": f"user-{i}"})
            c.post("/v1/rank", json={**req, "version": f"bogus-{i}"})
        text = c.get("/metrics").text
    versions = {line.split('version="')[1].split('"')[0] for line in text.splitlines()
                if line.startswith("adrank_version_requests_total{")}
    assert not any(v.startswith("bogus") for v in versions)
    assert "user-" not in text
    assert metrics.VERSION_REQUESTS is not None


@pytest.mark.parametrize("engine", ["sqlite", "redis"])
def test_versions_and_splits_survive_compaction_and_restart_on_both_engines(world, engine):
    """The log's compaction folds kept versions, retirements and splits into its snapshot: a
    restart that reads only the snapshot serves the same versions and split."""
    from tests.service.state_helpers import RedisServer

    tmp, (a, _), (b, _), (c, _) = world
    redis = RedisServer(tmp / "redis") if engine == "redis" else None
    kw = {"log_url": redis.url} if redis else {}

    def start() -> ServingState:
        st = ServingState(_settings(a, tmp / "state", compact_entries=0, **kw), loader=ranker_loader())
        st.start(follow=False)
        return st

    try:
        st = start()
        v1 = st.snapshot.models["dplr"].version
        v2 = st.reload("dplr", str(b), keep=True)[0].version
        v3 = st.reload("dplr", str(c), keep=True)[0].version
        st.set_traffic("dplr", {"weights": {v1: 2, v2: 1}, "shadow": v3, "shadow_fraction": 0.25})
        st.set_traffic("dplr", {"weights": {v1: 2, v2: 1}})
        st.retire("dplr", v3)
        want = st.snapshot.traffic["dplr"]
        st.compact()
        assert st.log.backlog() == 0
        models = st.log.meta().models["dplr"]
        assert models["version"] == v1 and set(models["kept"]) == {v2} and models["traffic"] == want.to_dict()
        st.stop()
        again = start()
        assert list(again.snapshot.versions("dplr")) == [v1, v2]
        assert again.snapshot.traffic["dplr"] == want
        assert set(again.snapshot.catalog.models) == {f"dplr@{v1}", f"dplr@{v2}"}
        again.stop()
    finally:
        if redis:
            redis.stop()
