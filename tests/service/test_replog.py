"""service/replog: both engines (SQLite, a real redis-server) keep every committed entry in order,
fold them into a snapshot on compaction, refuse a stale start-up intent, and hand back a corrupt
entry marked as such instead of failing."""

from __future__ import annotations

import sqlite3
import threading

import msgspec
import pytest

from service.replog import DELETE, LOAD, UPSERT, State, decode, encode, fold, open_log
from tests.service.state_helpers import RedisServer


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")) as srv:
        yield srv.url


@pytest.fixture(params=["sqlite", "redis"])
def make_log(request, tmp_path, redis_url):
    logs = []

    def make(key="t"):
        if request.param == "sqlite":
            lg = open_log(None, tmp_path / "state", poll=0.01)
        else:
            lg = open_log(redis_url, None, key=f"{request.node.name}-{key}")
        logs.append(lg)
        return lg

    yield make
    for lg in logs:
        lg.close()


def ads(prefix, n, v=0):
    return [{"id": f"{prefix}{i}", "features": {"f": f"v{v}-{i}"}} for i in range(n)]


def test_append_read_in_order_and_positions_survive_reopen(make_log):
    lg = make_log()
    assert lg.head() == 0 and lg.read(0) == []
    p = lg.append([(UPSERT, {"ads": ads("a", 3)}), (DELETE, {"ids": ["a1"]})])
    q = lg.append([(LOAD, {"name": "m", "path": "/x.adrk", "version": "abc", "force": False})])
    assert p == [1, 2] and q == [3] and lg.head() == 3
    got = lg.read(0)
    assert [(e.pos, e.kind) for e in got] == [(1, UPSERT), (2, DELETE), (3, LOAD)]
    assert got[1].data == {"ids": ["a1"]} and all(e.error is None for e in got)
    assert [e.pos for e in lg.read(1, limit=1)] == [2]
    again = make_log()  # a second process' connection sees the same log
    assert [e.pos for e in again.read(0)] == [1, 2, 3]


def test_concurrent_appenders_get_distinct_gapless_positions(make_log):
    logs = [make_log() for _ in range(3)]
    got, errors = [], []

    def writer(lg, w):
        try:
            for i in range(20):
                got.extend(lg.append([(UPSERT, {"ads": [{"id": f"w{w}-{i}", "features": {}}]})]))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(lg, w)) for w, lg in enumerate(logs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(got) == list(range(1, 61))
    assert [e.pos for e in logs[0].read(0, limit=100)] == list(range(1, 61))


def test_compaction_folds_into_the_snapshot_and_keeps_the_tail(make_log):
    lg = make_log()
    lg.append([(UPSERT, {"ads": ads("a", 5)})])
    lg.append([(DELETE, {"ids": ["a0", "nope"]}), (UPSERT, {"ads": ads("a", 2, v=1)})])
    lg.append([(LOAD, {"name": "m", "path": "/p1", "version": "v1", "force": False})])
    lg.append([(DELETE, {"ids": ["a1"]}), (UPSERT, {"ads": [{"id": "a1", "features": {"f": "back"}}]})])
    lg.append([(UPSERT, {"ads": ads("b", 1)}), (LOAD, {"name": "m", "path": "/p2", "version": None})])
    full = fold(State(), lg.read(0))
    assert lg.compact(max_entries=4) == 4 and lg.backlog() == 4
    state, it = lg.snapshot()
    assert state.pos == 4 and state.models == {"m": {"path": "/p1", "version": "v1"}}
    tail = lg.read(state.pos)
    assert [e.pos for e in tail] == [5, 6, 7, 8]
    state.ads = dict(it)
    assert fold(state, tail).ads == full.ads  # snapshot + tail == the whole history
    assert full.ads["a1"] == b'{"f":"back"}' and full.ads["a0"] == b'{"f":"v1-0"}' and full.models["m"]["path"] == "/p2"
    while lg.compact(max_entries=2):
        pass
    state, it = lg.snapshot()
    assert (state.pos, dict(it), state.models, lg.backlog()) == (8, full.ads, full.models, 0)
    assert lg.append([(UPSERT, {"ads": []})]) == [9]  # positions are never reused after compaction


def test_boot_intent_is_compare_and_set(make_log):
    lg = make_log()
    b1 = {"models": {"m": "/a"}, "catalog": None}
    assert lg.append([(LOAD, {"name": "m", "path": "/a"})], boot=(None, b1)) == [1]
    assert lg.append([(LOAD, {"name": "m", "path": "/b"})], boot=(None, b1)) is None  # stale: nothing written
    assert lg.head() == 1 and lg.snapshot()[0].boot == b1
    b2 = {"models": {"m": "/b"}, "catalog": None}
    assert lg.append([], boot=(b1, b2)) == [] and lg.snapshot()[0].boot == b2


def test_a_corrupt_entry_is_returned_marked_and_the_rest_reads(tmp_path):
    lg = open_log(None, tmp_path)
    lg.append([(UPSERT, {"ads": ads("a", 2)}), (UPSERT, {"ads": ads("b", 2)}), (DELETE, {"ids": ["a0"]})])
    con = sqlite3.connect(tmp_path / "state.db")
    con.execute("UPDATE log SET body = substr(body, 1, 10) WHERE pos = 2")  # torn: half of its bytes
    con.execute("INSERT INTO log (kind, body, crc, at) VALUES ('ads.upsert', x'00ff', 0, 0)")
    con.commit()
    con.close()
    got = lg.read(0)
    assert [(e.pos, e.error is None) for e in got] == [(1, True), (2, False), (3, True), (4, False)]
    assert got[1].error == "checksum mismatch" and got[1].data is None
    assert fold(State(), got).ads.keys() == {"a1"}
    while lg.compact():
        pass
    assert dict(lg.snapshot()[1]) == {"a1": msgspec.json.encode(ads("a", 2)[1]["features"])}


def test_decode_names_every_kind_of_damage():
    kind, body, crc = encode(UPSERT, {"ads": []})
    assert decode(1, kind, body, crc).data == {"ads": []}
    assert decode(1, kind, body + b" ", crc).error == "checksum mismatch"
    assert decode(1, "ads.other", body, crc).error == "checksum mismatch"
    bad = b"[1, 2]"
    from service.replog import checksum

    assert decode(1, kind, bad, checksum(kind, bad)).error == "body is not a JSON object"
    assert decode(1, kind, b"{", checksum(kind, b"{")).error.startswith("undecodable body")
    assert decode(1, "x", b"{}", checksum("x", b"{}")).error == "unknown kind 'x'"
    assert decode(1, kind, None, 0).error == "malformed entry"
    with pytest.raises(ValueError):
        encode("x", {})
