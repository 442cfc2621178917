"""Property tests over the /v1/rank request grammar (hypothesis): generated and mutated bodies never
get a 5xx and never hang, and the compiled parser and the generic msgspec one answer every body
with the same status and the same bytes (the differential test: 0 disagreements)."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.app import create_app
from service.settings import ModelSpec, Settings
from tests.service.helpers import ADMIN, ADMIN_TOKEN, SCHEMA, make_artifact, ranker_loader, raw_values

EXAMPLES = 300
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    d = tmp_path_factory.mktemp("grammar")
    make_artifact(d / "dplr.adrk", "dplr", seed=1)
    make_artifact(d / "fm.adrk", "fm", seed=2)
    s = Settings(models=(ModelSpec("dplr", d / "dplr.adrk"), ModelSpec("fm", d / "fm.adrk")), gc_freeze=False,
                 admin_token=ADMIN_TOKEN, model_dir=d, max_candidates=64, max_body_bytes=256 * 1024,
                 max_top_k=10, queue_budget=60.0)
    with TestClient(create_app(s, loader=ranker_loader()), headers=ADMIN) as c:
        c.put("/v1/ads", json={"ads": [{"id": f"cat-{i}", "features": {"C14": f"c14-{i}"}} for i in range(5)]})
        yield c


def _values(f) -> st.SearchStrategy:
    known = st.sampled_from(raw_values(f))
    odd = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
                    st.text(max_size=12), st.just(""), st.just("\x00"))
    scalar = st.one_of(known, known, odd)
    return st.one_of(scalar, st.lists(scalar, max_size=4)) if f.type == "multi" else st.one_of(scalar, scalar,
                                                                                                  st.lists(scalar, max_size=2))


def _fields(fields) -> st.SearchStrategy:
    names = [f.name for f in fields]
    return st.fixed_dictionaries({}, optional={n: _values(f) for n, f in zip(names, fields, strict=True)} | {
        "bogus": st.integers()})


ID = st.one_of(st.text(max_size=8), st.integers(-(2**64), 2**64), st.sampled_from([f"cat-{i}" for i in range(7)]),
               st.none())
AD = st.one_of(
    st.fixed_dictionaries({"id": ID, "features": _fields(SCHEMA.item_fields)}),
    st.fixed_dictionaries({"id": ID, "values": st.lists(st.one_of(st.sampled_from(["c14-1", "c15-2"]), st.none(),
                                                                 st.integers(0, 9)), max_size=4)}),
    st.fixed_dictionaries({"id": ID}),
)
REQUEST = st.fixed_dictionaries({}, optional={
    "model": st.one_of(st.sampled_from(["dplr", "fm", "", "nope"]), st.none()),
    "top_k": st.one_of(st.integers(-2, 2**64), st.none(), st.just("3")),
    "context": _fields(SCHEMA.context_fields),
    "ads": st.one_of(st.lists(AD, max_size=8), st.none()),
    "all_ads": st.booleans(),
})


def _typical_fields(fields) -> st.SearchStrategy:
    return st.fixed_dictionaries({}, optional={f.name: (st.lists(st.sampled_from(raw_values(f)), max_size=3)
                                                        if f.type == "multi" else st.sampled_from(raw_values(f)))
                                               for f in fields})


@st.composite
def _typical(draw) -> dict:
    """A valid request of the common shape: unique ids, known values, catalog ads by id."""
    n = draw(st.integers(1, 12))
    ads: list = []
    for i in range(n):
        kind = draw(st.integers(0, 3))
        if kind == 0 and i < 5:
            ads.append({"id": f"cat-{i}"})
        elif kind == 1:
            ads.append({"id": i, "features": draw(_typical_fields(SCHEMA.item_fields))})
        else:
            ads.append({"id": f"ad-{i}", "features": draw(_typical_fields(SCHEMA.item_fields))})
    req: dict = {"context": draw(_typical_fields(SCHEMA.context_fields)), "ads": ads}
    if draw(st.booleans()):
        req["model"] = draw(st.sampled_from(["dplr", "fm"]))
    if draw(st.booleans()):
        req["top_k"] = draw(st.integers(1, 15))
    return req


@st.composite
def bodies(draw) -> bytes:
    """A request rendered as JSON (keys in any order, some whitespace), then sometimes mutated at
    the byte level: cut, a byte replaced, a span duplicated, deep nesting spliced in."""
    req = draw(st.one_of(_typical(), _typical(), REQUEST))
    if draw(st.integers(0, 7)) == 0 and req.get("ads"):
        req["ads"] = req["ads"] + req["ads"][:1]  # a duplicate id
    text = json.dumps(req, ensure_ascii=draw(st.booleans()), separators=draw(st.sampled_from(
        [(",", ":"), (", ", ": "), (" ,\n", " :\t")])))
    raw = text.encode()
    how = draw(st.integers(0, 9))
    if how == 1 and raw:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif how == 2 and raw:
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1:]
    elif how == 3 and raw:
        i, j = sorted(draw(st.tuples(st.integers(0, len(raw)), st.integers(0, len(raw)))))
        raw = raw[:j] + raw[i:j] + raw[j:]
    elif how == 4:
        depth = draw(st.integers(2, 3000))
        raw = raw.replace(b'"C1"', b'"C1": ' + b"[" * depth + b"]" * depth + b', "x"', 1)
    return raw


def _post(client, body: bytes):
    t = time.perf_counter()
    r = client.post("/v1/rank", content=body, headers=JSON)
    return r, time.perf_counter() - t


@given(bodies())
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
          database=None)
def test_no_5xx_and_no_hang(client, body):
    r, seconds = _post(client, body)
    assert r.status_code < 500, (body[:300], r.text)
    assert r.status_code in (200, 404, 413, 422), (body[:300], r.status_code, r.text)
    assert set(r.json()) >= ({"model", "version", "ads"} if r.status_code == 200 else {"error", "message"})
    assert seconds < 10, seconds  # a bound, not a timing assertion: a hang would be minutes


def _answer(client, body: bytes, fast: bool):
    svc = client.app.state.svc
    svc.settings = dataclasses.replace(svc.settings, fastpath=fast)
    try:
        r = client.post("/v1/rank", content=body, headers=JSON)
    finally:
        svc.settings = dataclasses.replace(svc.settings, fastpath=True)
    return r.status_code, r.content


@given(bodies())
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
          database=None)
def test_fast_and_generic_parsers_agree(client, body):
    """The differential test: same status, same bytes, on every generated or mutated body."""
    assert _answer(client, body, True) == _answer(client, body, False), body[:300]
