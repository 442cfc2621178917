"""service/fastpath.py: on any body the scanner either falls back (None) or returns exactly what the
generic path (msgspec ``schemas.decode_rank`` + ``RequestEncoder``) gives; it never crashes or
hangs on malformed bytes, and typical requests never fall back."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from adrank.core.hashing import hash_tokens
from adrank.core.preprocess import EncodeError, Preprocessor, Vocab, field_tokens, numeric_token
from adrank.core.schema import Field, Schema
from service import schemas
from service.encode import RequestEncoder
from service.fastpath import FastPath, python_bin
from service.fastpath.lexer import bin_edges
from tests.service.helpers import use_fastpath

NAMES = ["C1", "C14", "user", "é-ctx", "日本", "price", "age", "tags", "genres", "ad", "flag", "x y", "k\"q", "n"]
STRINGS = ["x", "ab", "é", "日本", "emoji-🙂", "", "1", "2.5", "true", "a\"q", "back\\slash", "tab\there", "nul\x00",
           "\u2028", "line\nbreak", " 7 ", "15706", "-3", "x" * 40]
NUMBERS = [0, 1, 2, 3, -1, -7, 7, 42, 15706, 10**12, 10**15 - 1, 10**15, 10**17, 10**19, 2**63, 1.0, 2.5, -0.0,
           3.7, 1e20]


def random_schema(rng) -> Schema:
    names = list(rng.permutation(NAMES))[: int(rng.integers(2, 9))]
    n_ctx = int(rng.integers(0, len(names)))
    fields = []
    for j, name in enumerate(names):
        kind = ("categorical", "numeric", "multi")[int(rng.choice(3, p=[0.55, 0.25, 0.2]))]
        fields.append(Field(str(name), kind, "context" if j < n_ctx else "item",
                            max_values=int(rng.integers(1, 4)) if kind == "multi" else 1))
    return Schema("fp", tuple(fields))


def make_preprocessor(schema: Schema, rng) -> Preprocessor:
    """Keep about half of the tokens the value pools produce per field (the rest -> rare id)."""
    kept = []
    for f in schema.fields:
        toks = set()
        for v in STRINGS + NUMBERS + [True, False] + list(range(-3, 300)):
            try:
                t = field_tokens(f, [v])[0]
            except EncodeError:
                continue
            toks.update(t if isinstance(t, list) else [t] if t is not None else [])
        kept.append(hash_tokens([t for t in sorted(toks) if rng.random() < 0.5]))
    return Preprocessor(schema, Vocab.from_kept(kept))


def random_value(rng, f: Field, p_odd: float):
    """Typical (strings for categorical fields, integers for numeric ones, string lists for multi)
    except with probability ``p_odd``: anything (unicode, escapes, floats, bools, nulls, lists, ...)."""
    if rng.random() >= p_odd:
        if f.type == "numeric":
            return int(rng.integers(-5, 10**int(rng.integers(1, 10))))
        word = f"v{int(rng.integers(0, 60))}-é" if rng.random() < 0.5 else STRINGS[int(rng.integers(0, 5))]
        if f.type == "multi":
            return [f"t{int(rng.integers(0, 6))}" for _ in range(int(rng.integers(1, 5)))]
        return word
    r = rng.random()
    if f.type == "multi" and r < 0.5:
        return [random_value(rng, Field("s"), 1.0) for _ in range(int(rng.integers(0, 6)))]
    if r < 0.45:
        return STRINGS[int(rng.integers(len(STRINGS)))]
    if r < 0.8:
        return NUMBERS[int(rng.integers(len(NUMBERS)))] if rng.random() < 0.4 else int(rng.integers(-10, 2000))
    return [None, True, False, [1], {"a": 1}][int(rng.integers(5))] if rng.random() < 0.9 else []


def random_request(rng, schema: Schema, p_odd: float) -> dict:
    items = schema.item_fields
    req: dict = {}
    if rng.random() < 0.5:
        req["model"] = [None, "fp", "é-model"][int(rng.integers(3))]
    if rng.random() < 0.4:
        req["top_k"] = None if rng.random() < 0.2 else int(rng.integers(1, 20))
    if rng.random() < 0.8:
        req["context"] = {f.name: random_value(rng, f, p_odd) for f in schema.context_fields if rng.random() < 0.85}
    ads = []
    for i in range(int(rng.integers(1, 30))):
        feats = {f.name: random_value(rng, f, p_odd) for f in items if rng.random() < 0.85}
        ad_id = f"ad-{i}-é" if rng.random() < 0.6 else int(rng.integers(-(10**6), 10**12))
        if rng.random() < 0.5:
            vals = [feats.get(f.name) for f in items]
            ads.append({"values": vals[: len(vals) - int(rng.integers(0, 2))], "id": ad_id})
        else:
            ads.append({"id": ad_id, "features": feats})
    req["ads"] = ads
    return req


def dumps(rng, obj, ascii_: bool) -> str:
    """JSON with random key order and random JSON whitespace between tokens."""
    def ws():
        return "".join(rng.choice([" ", "\n", "\t", "\r"]) for _ in range(int(rng.integers(0, 3)))) \
            if rng.random() < 0.3 else ""

    if isinstance(obj, dict):
        keys = list(obj)
        if rng.random() < 0.5:
            keys = [keys[i] for i in rng.permutation(len(keys))]
        inner = ",".join(f"{ws()}{json.dumps(k, ensure_ascii=ascii_)}{ws()}:{ws()}{dumps(rng, obj[k], ascii_)}{ws()}"
                         for k in keys)
        return "{" + inner + ws() + "}"
    if isinstance(obj, list):
        return "[" + ",".join(f"{ws()}{dumps(rng, v, ascii_)}{ws()}" for v in obj) + ws() + "]"
    return json.dumps(obj, ensure_ascii=ascii_)


def mutate(rng, req: dict, schema: Schema) -> dict:
    """One random deviation from the supported subset (or from validity)."""
    req = json.loads(json.dumps(req))
    r = int(rng.integers(7))
    ad = req["ads"][int(rng.integers(len(req["ads"])))]
    if r == 0:
        req["all_ads"] = True
    elif r == 1:
        ad.pop("features", None)
        ad.pop("values", None)  # id-only: a catalog ad
    elif r == 2:
        ad["features"] = {"nope": 1}
    elif r == 3:
        req["context"] = {**req.get("context", {}), "ads": 1}
    elif r == 4:
        ad["id"] = [None, 1.5, True, ""][int(rng.integers(4))]
    elif r == 5:
        req["top_k"] = [0, -1, 1.0, "3"][int(rng.integers(4))]
    else:
        req["ads"] = []
    return req


def generic(enc: RequestEncoder, body: bytes):
    """(model, top_k, ctx, ids, X) of the generic path, or None where it raises (4xx)."""
    try:
        req = schemas.decode_rank(body)
        ctx = enc.encode_context(req.context)
        ids, X = enc.encode_ads(req.ads)
    except (schemas.BadRequest, EncodeError):
        return None
    return req.model, req.top_k, ctx, ids, X


def check(fp: FastPath, enc: RequestEncoder, body: bytes) -> bool:
    """Fallback, or exactly the generic answer; True if the fast path answered."""
    got = fp.scan(body)
    if got is None:
        return False
    want = generic(enc, body)
    assert want is not None, f"fast path accepted a body the generic path rejects: {body[:300]!r}"
    model, top_k, ctx, ids, X = want
    assert (got.model, got.top_k) == (model, top_k)
    np.testing.assert_array_equal(got.ctx, ctx)
    np.testing.assert_array_equal(got.X, X)
    assert got.ids(range(len(ids))) == ids and [type(i) for i in got.ids(range(len(ids)))] == [type(i) for i in ids]
    return True


@pytest.mark.parametrize("seed", range(6))
def test_random_requests_fall_back_or_equal_the_generic_path(seed):
    rng = np.random.default_rng(seed)
    answered = 0
    for _ in range(4):
        schema = random_schema(rng)
        enc = RequestEncoder(make_preprocessor(schema, rng))
        fp = FastPath(enc)
        for _ in range(40):
            req = random_request(rng, schema, p_odd=float(rng.choice([0.0, 0.01, 0.03, 0.2, 1.0])))
            if rng.random() < 0.2:
                req = mutate(rng, req, schema)
            answered += check(fp, enc, dumps(rng, req, ascii_=rng.random() < 0.2).encode())
    assert answered > 20  # the comparison really ran on many bodies


@pytest.mark.parametrize("seed", range(3))
def test_typical_requests_never_fall_back(seed):
    rng = np.random.default_rng(100 + seed)
    for _ in range(3):
        schema = random_schema(rng)
        while any(json.dumps(f.name, ensure_ascii=False)[1:-1] != f.name for f in schema.fields):
            schema = random_schema(rng)  # a field name JSON must escape is not typical
        enc = RequestEncoder(make_preprocessor(schema, rng))
        fp = FastPath(enc)
        for _ in range(20):
            body = dumps(rng, random_request(rng, schema, p_odd=0.0), ascii_=False).encode()
            assert check(fp, enc, body), body[:300]


def test_multi_values_and_tokens_that_coincide():
    schema = Schema("m", (Field("tags", "multi", "context", max_values=3), Field("flag", "categorical", "item"),
                          Field("n", "numeric", "item")))
    rng = np.random.default_rng(7)
    enc = RequestEncoder(make_preprocessor(schema, rng))
    fp = FastPath(enc)
    for tags in ['["1", 1, true, "true", "x", "y"]', '[]', '[null, ""]', '"solo"', '7', 'null', '[false, "false"]',
                 '["a", "a", "a", "b"]', '["a","b","c", 2.5]']:
        for flag in ['true', 'false', '15706', '-3', '"-3"', '""', 'null']:
            body = f'{{"context": {{"tags": {tags}}}, "ads": [{{"id": 1, "values": [{flag}, 3]}}]}}'.encode()
            answered = check(fp, enc, body)
            assert answered or "2.5" in tags


def test_numeric_bins_match_python_at_every_edge():
    """The integer bin table equals numeric_token's math.log bin on both sides of every edge."""
    edges, bins = bin_edges()
    assert np.all(np.diff(bins) == 1) and bins[0] == python_bin(3)
    for e, b in zip(edges.tolist(), bins.tolist(), strict=True):
        assert python_bin(e) == b
        if e > 3:
            assert python_bin(e - 1) == b - 1
            assert numeric_token(e) == f"b{b}" and numeric_token(e - 1) == f"b{b - 1}"
    schema = Schema("n", (Field("x", "numeric", "item"),))
    vals = sorted({int(v) for e in edges.tolist() for v in (e - 1, e, e + 1)} | set(range(-5, 40)))
    kept = hash_tokens(sorted({numeric_token(v) for v in vals}))
    enc = RequestEncoder(Preprocessor(schema, Vocab.from_kept([kept])))
    body = json.dumps({"ads": [{"id": i, "values": [v]} for i, v in enumerate(vals)]}).encode()
    assert check(FastPath(enc), enc, body)
    assert math.floor(math.log(10**15 - 1) ** 2) == python_bin(10**15 - 1)


def test_malformed_bytes_fall_back_and_never_crash():
    rng = np.random.default_rng(3)
    schema = random_schema(rng)
    enc = RequestEncoder(make_preprocessor(schema, rng))
    fp = FastPath(enc)
    body = dumps(rng, random_request(rng, schema, p_odd=0.0), ascii_=False).encode()
    assert check(fp, enc, body)
    for cut in range(len(body)):  # every truncation: fallback (the generic path gives the 422)
        assert fp.scan(body[:cut]) is None
        assert generic(enc, body[:cut]) is None
    for _ in range(300):
        junk = bytearray(body)
        for p in rng.integers(0, len(junk), int(rng.integers(1, 4))):
            junk[p] = int(rng.integers(0, 256))
        check(fp, enc, bytes(junk))
    for raw in [b"", b"{", b"[]", b"null", b'{"ads": [}', b"\xef\xbb\xbf{}", b'{"ads": [{"id": "\xff", "values": []}]}',
                b'{"ads": [{"id": "\xed\xa0\x80", "values": []}]}', bytes(rng.integers(0, 256, 500, dtype=np.uint8))]:
        check(fp, enc, raw)


# --- the /v1/rank route: whole HTTP responses with and without the fast path -------------------
@pytest.fixture(scope="module")
def app_client(tmp_path_factory):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import ModelSpec, Settings
    from tests.service.helpers import make_artifact, ranker_loader

    d = tmp_path_factory.mktemp("fastpath-app")
    specs = []
    for i, kind in enumerate(("dplr", "pruned", "fm", "fwfm")):
        make_artifact(d / f"{kind}.adrk", kind, seed=20 + i)
        specs.append(ModelSpec(kind, d / f"{kind}.adrk"))
    app = create_app(Settings(models=tuple(specs), gc_freeze=False, max_candidates=40), loader=ranker_loader())
    with TestClient(app) as c:
        yield c


def http_bodies(rng):
    """Typical requests (every model, both ad forms, top_k, duplicate ads = tied scores) and ones
    the fast path must leave to the generic path (errors included)."""
    from tests.service.helpers import random_request

    out = []
    for _ in range(12):
        req = random_request(rng, int(rng.integers(1, 30)), positional=bool(rng.random() < 0.5))
        req["ads"] += [{**ad, "id": f"{ad['id']}-twin"} for ad in req["ads"][:3]]  # equal scores
        if rng.random() < 0.7:
            req["model"] = ["dplr", "pruned", "fm", "fwfm", None][int(rng.integers(5))]
        if rng.random() < 0.4:
            req["top_k"] = int(rng.integers(1, 8))
        out.append(dumps(rng, req, ascii_=False).encode())
    base = out[0].decode()
    out += [b"", b"{", b'{"ads": []}', b'{"model": "nope", "ads": [{"id": 1, "values": []}]}',
            b'{"ads": [{"id": 1, "values": []}], "top_k": 0}', b'{"ads": [{"id": 1}]}',
            b'{"ads": [{"id": 1, "features": {"C1": "x"}}]}', b'{"all_ads": true}',
            json.dumps({"ads": [{"id": i, "values": []} for i in range(41)]}).encode(),  # > max_candidates
            base.replace('"ads"', '"ads"', 1).encode() + b" x"]
    return out


def test_http_responses_equal_with_and_without_the_fast_path(app_client, monkeypatch):
    from service import pipeline

    used = []
    real = pipeline.parse_fast
    monkeypatch.setattr(pipeline, "parse_fast", lambda *a: used.append(real(*a)) or used[-1])
    for body in http_bodies(np.random.default_rng(11)):
        use_fastpath(app_client, monkeypatch, True)
        fast = app_client.post("/v1/rank", content=body, headers={"content-type": "application/json"})
        use_fastpath(app_client, monkeypatch, False)
        slow = app_client.post("/v1/rank", content=body, headers={"content-type": "application/json"})
        assert (fast.status_code, fast.content) == (slow.status_code, slow.content), body[:200]
    assert sum(u is not None for u in used) >= 12  # every typical request took the fast path
