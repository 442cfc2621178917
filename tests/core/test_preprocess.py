import numpy as np
import pytest

from adrank.core.hashing import hash_tokens
from adrank.core.preprocess import (
    MISSING,
    N_SPECIAL,
    PAD,
    RARE,
    EncodeError,
    Preprocessor,
    Vocab,
    numeric_token,
)
from adrank.core.schema import Field, Schema, SchemaError


def _fnv1a_mix(token: str) -> int:
    """Independent pure-Python FNV-1a-64 + splitmix64, to pin the compiled hash."""
    M = (1 << 64) - 1
    h = 0xCBF29CE484222325
    for b in token.encode():
        h = ((h ^ b) * 0x100000001B3) & M
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & M
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & M
    h ^= h >> 31
    return h


def test_hash_is_stable_and_matches_reference():
    toks = ["", "a", "68fd1e64", "héllo", "x" * 100, "a\x00b"]
    got = hash_tokens(toks)
    assert [int(g) for g in got] == [_fnv1a_mix(t) for t in toks]
    assert len(set(got.tolist())) == len(toks)


def test_numeric_binning_follows_ln_squared():
    assert numeric_token(1) == "v1"
    assert numeric_token(-1) == "v-1"
    assert numeric_token(2) == "v2"
    assert numeric_token(3) == "b1"  # floor(ln(3)^2) = floor(1.207)
    assert numeric_token(1382) == f"b{int(np.floor(np.log(1382) ** 2))}"
    assert numeric_token("15") == numeric_token(15.0)
    assert numeric_token(None) is None and numeric_token("") is None
    with pytest.raises(EncodeError, match="'I1'"):
        numeric_token("abc", "I1")


def _toy():
    schema = Schema("toy", (
        Field("user", "categorical", "context"),
        Field("age", "numeric", "context"),
        Field("genres", "multi", "item", max_values=3),
    ))
    kept = [hash_tokens(["u1", "u2"]), hash_tokens([numeric_token(30)]), hash_tokens(["Drama", "War"])]
    return Preprocessor(schema, Vocab.from_kept(kept))


def test_encode_ids_rare_missing_and_multi():
    pp = _toy()
    off = pp.vocab.id_offsets
    X = pp.encode_rows([
        {"user": "u1", "age": 30, "genres": ["War", "Drama", "War"]},
        {"user": "nobody", "genres": []},
        {"user": None, "age": "31", "genres": "Comedy"},
    ])
    assert X.shape == (3, 5) and X.dtype == np.int32
    u1 = off[0] + N_SPECIAL + int(np.searchsorted(pp.vocab.field_keys(0), hash_tokens(["u1"])[0]))
    assert X[0, 0] == u1
    assert X[1, 0] == off[0] + RARE and X[2, 0] == off[0] + MISSING
    assert X[1, 1] == off[1] + MISSING and X[2, 1] == X[0, 1]  # 31 and 30 share a bin
    assert set(X[0, 2:4]) <= set(range(off[2] + N_SPECIAL, off[3])) and X[0, 4] == PAD
    assert X[1, 2] == off[2] + MISSING and X[1, 3] == PAD
    assert X[2, 2] == off[2] + RARE


def test_schema_requires_context_before_items():
    with pytest.raises(SchemaError, match="context fields must come before"):
        Schema("bad", (Field("a", role="item"), Field("b", role="context")))
