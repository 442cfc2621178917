"""service/state.py in one process: what a restart keeps and what a changed start-up argument
changes, compaction, and entries that cannot be applied (skipped and reported, never fatal)."""

from __future__ import annotations

import sqlite3

import msgspec
import numpy as np
import pytest

from service.settings import ModelSpec, Settings
from service.state import ServingState, StartupError
from tests.service.helpers import make_artifact, random_request, ranker_loader
from tests.service.state_helpers import synthetic_artifact


def start(tmp_path, path, catalog=None, **kw) -> ServingState:
    s = Settings(models=(ModelSpec("m", path),), state_dir=tmp_path / "state", gc_freeze=False, catalog=catalog,
                 **kw)
    st = ServingState(s, loader=ranker_loader())
    st.start(follow=False)
    return st


def ads_file(path, ads) -> None:
    path.write_bytes(b"\n".join(msgspec.json.encode(a) for a in ads) + b"\n")


def features(st, ad_id):
    return st.snapshot.catalog.get(ad_id)


@pytest.fixture
def world(tmp_path):
    a, b = tmp_path / "a.adrk", tmp_path / "b.adrk"
    make_artifact(a, "dplr", seed=1)
    make_artifact(b, "dplr", seed=2)
    req = random_request(np.random.default_rng(0), 6)
    ads_file(tmp_path / "ads.jsonl", req["ads"])
    return a, b, req["ads"]


def test_a_restart_keeps_what_was_acknowledged_when_the_arguments_did_not_change(tmp_path, world):
    a, b, ads = world
    st = start(tmp_path, a, tmp_path / "ads.jsonl")
    v_a = st.snapshot.models["m"].version
    st.upsert([{"id": ads[0]["id"], "features": {"C14": "c14-7"}}, {"id": "new", "features": {}}])
    st.delete(ads[1]["id"])
    new, _ = st.reload("m", str(b))
    st.stop()
    again = start(tmp_path, a, tmp_path / "ads.jsonl")  # the same command line
    assert again.snapshot.models["m"].version == new.version != v_a  # the reload survives
    assert features(again, ads[0]["id"]) == {"C14": "c14-7"}  # the file is not applied again
    assert features(again, ads[1]["id"]) is None and features(again, "new") == {}
    assert again.snapshot.catalog.size == len(ads)
    again.stop()


def test_a_changed_argument_is_a_new_intent_after_everything_acknowledged(tmp_path, world):
    a, b, ads = world
    st = start(tmp_path, a, tmp_path / "ads.jsonl")
    st.upsert([{"id": ads[0]["id"], "features": {"C14": "c14-7"}}, {"id": "kept", "features": {"C15": "c15-1"}}])
    st.stop()
    changed = [{**ads[0], "features": {"C14": "c14-3"}}, {"id": "extra", "features": {}}]
    ads_file(tmp_path / "ads.jsonl", changed)  # new content: recorded and upserted again
    again = start(tmp_path, b, tmp_path / "ads.jsonl")  # and another artifact for m
    assert again.snapshot.models["m"].path == b.resolve()
    assert features(again, ads[0]["id"]) == {"C14": "c14-3"}  # the new file wins over the earlier write
    assert features(again, "kept") == {"C15": "c15-1"} and features(again, "extra") == {}
    assert features(again, ads[2]["id"]) == ads[2]["features"]  # ads not in the new file stay
    again.stop()
    third = start(tmp_path, b, tmp_path / "ads.jsonl")
    assert third.snapshot.position == again.snapshot.position  # nothing new to record
    third.stop()


def test_a_model_of_another_schema_keeps_the_catalog_it_can_encode(tmp_path, world):
    """A forced switch to another schema (here: a changed start-up argument) keeps every ad: fields
    the new model lacks are ignored, as in a reload; only values it cannot encode leave an ad out."""
    a, _, ads = world
    st = start(tmp_path, a)
    st.upsert([{"id": "x", "features": {"C14": "c14-1"}}])
    st.stop()
    other = tmp_path / "other.adrk"
    synthetic_artifact(other, "dplr")  # fields c0.., i0..
    again = start(tmp_path, other)
    assert features(again, "x") == {"C14": "c14-1"} and again.snapshot.catalog.size == 1
    again.stop()


def test_a_corrupt_entry_is_skipped_and_reported_at_start_and_while_following(tmp_path, world):
    a, _, _ = world
    st = start(tmp_path, a)
    st.upsert([{"id": "one", "features": {}}])
    con = sqlite3.connect(tmp_path / "state" / "state.db")
    con.execute("INSERT INTO log (kind, body, crc, at) VALUES ('ads.upsert', x'7b', 0, 0)")
    con.commit()
    con.close()
    st.upsert([{"id": "two", "features": {}}])  # catches up over the corrupt entry first
    assert [s[2] for s in st.skipped] == ["checksum mismatch"]
    assert features(st, "two") == {} and features(st, "one") == {}
    st.stop()
    again = start(tmp_path, a)
    assert [s[2] for s in again.skipped] == ["checksum mismatch"]
    assert features(again, "two") == {} and again.snapshot.catalog.size == 2
    again.stop()


def test_compaction_keeps_the_state_and_bounds_what_a_restart_reads(tmp_path, world):
    a, _, _ = world
    st = start(tmp_path, a, compact_entries=5)
    for i in range(30):
        st.upsert([{"id": f"ad-{i % 12}", "features": {"C14": f"c14-{i % 8}"}}])
        if i % 7 == 0:
            st.delete(f"ad-{i % 12}")
    want = {i: st.snapshot.catalog.get(i) for i in st.snapshot.catalog.all_ids()}
    assert st.compact() > 0 and st.log.backlog() <= 5
    st.stop()
    again = start(tmp_path, a)
    assert {i: again.snapshot.catalog.get(i) for i in again.snapshot.catalog.all_ids()} == want
    again.stop()


def test_an_unloadable_start_up_model_is_a_clear_start_up_error(tmp_path):
    bad = tmp_path / "bad.adrk"
    bad.write_bytes(b"garbage" * 20)
    with pytest.raises(StartupError, match="bad_magic"):
        start(tmp_path, bad)
    make_artifact(tmp_path / "m.adrk", "dplr")
    (tmp_path / "ads.jsonl").write_text('{"id": "a", "features": {"nope": 1}}\n')
    with pytest.raises(StartupError, match=r"ads.jsonl line 1 \(id 'a'\): \['nope'\]"):
        start(tmp_path, tmp_path / "m.adrk", tmp_path / "ads.jsonl")


def test_a_write_lets_ranking_requests_in_flight_go_first(tmp_path, world, monkeypatch):
    """Before each slice of a write's CPU work the state waits while ranking requests are in
    flight (its idle event cleared), up to a bound in all: a write is delayed, never lost."""
    import threading

    import service.state as state_mod

    a, _, ads = world
    st = start(tmp_path, a)
    monkeypatch.setattr(state_mod, "WRITE_SLICE", 4)
    monkeypatch.setattr(state_mod, "WRITE_YIELD_MAX", 30.0)
    st.idle = threading.Event()  # a request in flight
    batch = [{"id": f"y{i}", "features": dict(ad["features"])} for i, ad in enumerate(ads * 3)]
    writer = threading.Thread(target=st.upsert, args=(batch,))
    writer.start()
    writer.join(0.5)
    assert writer.is_alive() and st.snapshot.catalog.get("y0") is None  # waiting for the request
    st.idle.set()  # the request answered
    writer.join(10)
    assert not writer.is_alive()
    assert all(st.snapshot.catalog.get(ad["id"]) == ad["features"] for ad in batch)

    monkeypatch.setattr(state_mod, "WRITE_YIELD_MAX", 0.05)
    st.idle.clear()  # never free: the write waits its bound, then goes on
    st.upsert([{"id": "z", "features": {}}])
    assert st.snapshot.catalog.get("z") == {}
    st.stop()
