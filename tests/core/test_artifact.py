"""adrank/core/artifact.py: the bytes-level format, every named error, atomic writes, mmap reads.

Files with deliberate defects are built here by ``spec_bytes``, an independent encoder written
from docs/artifact-format.md (not from the writer), which also pins the golden bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from adrank.core import artifact as A
from adrank.core.hashing import hash_tokens
from adrank.core.preprocess import Preprocessor, Vocab, field_tokens
from adrank.core.schema import Field, Schema

# --- an independent encoder, straight from the spec -------------------------------------------


def spec_bytes(manifest: dict, arrays: dict, version: int = 1, magic: bytes = b"ADRKART\x00") -> bytes:
    """Prelude(64) + JSON header (sorted keys, ',' ':' separators, UTF-8, space-padded to a
    64-byte boundary) + data (arrays in name order, little-endian C order, each 64-aligned)."""
    table, data, off = {}, b"", 0
    for name in sorted(arrays):
        a = np.asarray(arrays[name])
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes(order="C")
        table[name] = {"dtype": a.dtype.name, "shape": list(a.shape), "offset": off, "nbytes": len(raw)}
        pad = (64 - len(raw) % 64) % 64
        data += raw + b"\x00" * pad
        off += len(raw) + pad
    header = json.dumps({"arrays": table, "manifest": manifest}, sort_keys=True, separators=(",", ":"),
                        ensure_ascii=False).encode("utf-8")
    header += b" " * ((64 - (64 + len(header)) % 64) % 64)
    digest = hashlib.sha256(header + data).digest()
    prelude = magic + struct.pack("<IIQQ", version, 0, len(header), len(data)) + digest
    assert len(prelude) == 64
    return prelude + header + data


def tiny(kind: str = "fm") -> tuple[dict, dict]:
    """The smallest meaningful artifact: one context field with one kept value, k = 2."""
    schema = Schema("tiny", (Field("a"),))
    pre = Preprocessor(schema, Vocab.from_kept([np.array([7], dtype=np.uint64)]))
    desc, vocab = pre.to_state()
    manifest = {"format": "adrank-artifact", "kind": kind, "rank": None, "embed_dim": 2,
                "target": "binary", "schema": schema.to_dict(), "preprocess": desc, "n_features": 3,
                "embedding": {"type": "dense"},
                "source": {"note": "tiny"}}
    arrays = {"bias": np.array([0.5], np.float32), "linear": np.array([1, 2, 3], np.float32),
              "emb": np.arange(6, dtype=np.float32).reshape(3, 2), "d": np.zeros(1, np.float32),
              **vocab}
    return manifest, arrays


def two_field(kind: str) -> tuple[dict, dict]:
    """A valid artifact of any kind: a context and an item field, k = 3."""
    schema = Schema("two", (Field("u"), Field("ad", role="item")))
    pre = Preprocessor(schema, Vocab.from_kept([np.array([1, 5], np.uint64), np.array([3], np.uint64)]))
    desc, vocab = pre.to_state()
    n, rng = 7, np.random.default_rng(1)
    manifest = {"format": "adrank-artifact", "kind": kind, "rank": 2 if kind == "dplr" else None,
                "embed_dim": 3, "target": "regression", "schema": schema.to_dict(), "preprocess": desc,
                "n_features": n, "embedding": {"type": "dense"}, "source": {}}
    arrays = {"bias": np.zeros(1, np.float32), "linear": rng.normal(size=n).astype(np.float32),
              "emb": rng.normal(size=(n, 3)).astype(np.float32), **vocab}
    if kind in ("fm", "dplr"):
        arrays["d"] = np.zeros(2, np.float32)
    if kind == "dplr":
        arrays.update(U=np.ones((2, 2), np.float32), e=np.ones(2, np.float32))
    if kind == "fwfm":
        arrays["R"] = np.array([[0, 1], [1, 0]], np.float32)
    if kind == "pruned":
        manifest.update(n_pairs=1, pair_blocks=[0, 1, 0])
        arrays.update(pair_i=np.array([0], np.int32), pair_j=np.array([1], np.int32),
                      pair_r=np.array([0.5], np.float32))
    return manifest, arrays


def _root(a):
    while isinstance(a, (np.ndarray, memoryview)):
        a = a.base if isinstance(a, np.ndarray) else a.obj
    return a


# --- round trip and golden bytes --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fm", "fwfm", "pruned", "dplr"])
def test_round_trip(tmp_path, kind):
    manifest, arrays = two_field(kind)
    info = A.write_artifact(tmp_path / "m.adrk", manifest, arrays)
    art = A.read_artifact(info.path)
    assert art.manifest == manifest and art.kind == kind and art.target == "regression"
    assert set(art.arrays) == set(arrays)
    for name, a in arrays.items():
        assert art.arrays[name].dtype == a.dtype and np.array_equal(art.arrays[name], a), name
    assert art.nbytes == info.nbytes == os.path.getsize(info.path)
    assert art.version == info.version == hashlib.sha256(info.path.read_bytes()[64:]).hexdigest()[:12]
    assert os.listdir(tmp_path) == ["m.adrk"]  # no temp litter


def test_golden_bytes(tmp_path):
    manifest, arrays = tiny()
    info = A.write_artifact(tmp_path / "tiny.adrk", manifest, arrays)
    got = info.path.read_bytes()
    assert got == spec_bytes(manifest, arrays)
    # the layout rules, spelled out: 64-byte prelude, data start and every offset 64-aligned
    hlen, dlen = struct.unpack_from("<QQ", got, 16)
    assert got[:12] == b"ADRKART\x00\x01\x00\x00\x00" and (64 + hlen) % 64 == 0
    table = json.loads(got[64 : 64 + hlen])["arrays"]
    assert [t["offset"] for _, t in sorted(table.items())] == [0, 64, 128, 192, 256, 320, 384]
    assert dlen == 448 and len(got) == 64 + hlen + dlen
    # the worked example of docs/artifact-format.md section 7: its bytes, hence its version, are
    # fixed by its content alone (any clock or path in the header would change them)
    assert info.version == hashlib.sha256(got[64:]).hexdigest()[:12] == "205f5ab639e9"


def test_golden_bytes_with_a_calibration_map(tmp_path):
    """A calibration member is plain manifest JSON (docs/artifact-format.md 4.1): the spec's
    encoder gives the writer's bytes, the reader returns it as written, and the core applies it as
    the section's formula says; a regression model cannot carry one."""
    from adrank.core.calibration import of_manifest

    for section, z, want in (({"method": "platt", "a": 2.0, "b": -1.0}, 0.5, 0.5),
                             ({"method": "isotonic", "x": [0.25, 0.75], "y": [0.125, 0.625]}, 0.0, 0.375)):
        manifest, arrays = tiny()
        manifest["calibration"] = section
        info = A.write_artifact(tmp_path / "cal.adrk", manifest, arrays)
        assert info.path.read_bytes() == spec_bytes(manifest, arrays)
        art = A.read_artifact(info.path)
        assert art.manifest["calibration"] == section
        assert of_manifest(art.manifest)(np.array([z]))[0] == want  # sigmoid(2 * 0.5 - 1) = 0.5; interp(0.5) = 0.375
    manifest, arrays = two_field("fm")
    manifest["calibration"] = {"method": "platt", "a": 1.0, "b": 0.0}
    with pytest.raises(A.BadManifest, match="needs target 'binary'"):
        A.write_artifact(tmp_path / "reg.adrk", manifest, arrays)


def test_arrays_are_readonly_views_of_one_map(tmp_path):
    manifest, arrays = two_field("dplr")
    art = A.read_artifact(A.write_artifact(tmp_path / "m.adrk", manifest, arrays).path)
    roots = {id(_root(a)) for a in art.arrays.values()}
    assert roots == {id(art._map)}  # every array is a view into the one mmap: no copies
    for a in art.arrays.values():
        assert not a.flags.writeable
    with pytest.raises(ValueError):
        art.arrays["emb"][0, 0] = 1.0
    assert art.arrays["emb"].ctypes.data % 64 == 0  # rows start cache-line aligned


def test_service_artifact_does_not_import_torch_or_training():
    code = ("import sys, adrank.core.artifact; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('training')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- every named error ------------------------------------------------------------------------


def _write_raw(tmp_path, data: bytes):
    p = tmp_path / "bad.adrk"
    p.write_bytes(data)
    return p


def _expect(path, cls, verify=True):
    with pytest.raises(cls) as info:
        A.read_artifact(path, verify=verify)
    assert isinstance(info.value, A.ArtifactError) and info.value.code == cls.code
    assert str(path) in str(info.value)
    return info.value


@pytest.mark.parametrize("cut", [0, 10, 63, 64, 100, -1])
def test_truncated(tmp_path, cut):
    good = spec_bytes(*tiny())
    _expect(_write_raw(tmp_path, good[:cut] if cut >= 0 else good[:-1]), A.Truncated)


def test_trailing_bytes(tmp_path):
    _expect(_write_raw(tmp_path, spec_bytes(*tiny()) + b"\x00"), A.TrailingBytes)


@pytest.mark.parametrize("where", ["header", "data"])
def test_flipped_byte_is_a_checksum_mismatch(tmp_path, where):
    raw = bytearray(spec_bytes(*tiny()))
    hlen = struct.unpack_from("<Q", raw, 16)[0]
    pos = 70 if where == "header" else 64 + hlen + 128  # a header byte / the first emb byte
    raw[pos] ^= 0x01
    p = _write_raw(tmp_path, bytes(raw))
    _expect(p, A.ChecksumMismatch)
    if where == "data":  # without verification the structure still reads, with the flipped value
        art = A.read_artifact(p, verify=False)
        assert art.arrays["emb"][0, 0] != 0.0


def test_bad_magic(tmp_path):
    _expect(_write_raw(tmp_path, spec_bytes(*tiny(), magic=b"PK\x03\x04\x00\x00\x00\x00")), A.BadMagic)


@pytest.mark.parametrize("version", [0, 2, 99])
def test_unsupported_version(tmp_path, version):
    _expect(_write_raw(tmp_path, spec_bytes(*tiny(), version=version)), A.UnsupportedVersion)


def test_unknown_flags_are_unsupported(tmp_path):
    raw = bytearray(spec_bytes(*tiny()))
    struct.pack_into("<I", raw, 12, 1)
    _expect(_write_raw(tmp_path, bytes(raw)), A.UnsupportedVersion)


def _defects():
    """(name, mutate(manifest, arrays), expected error)."""

    def kind(m, a):
        m["kind"] = "deepfm"

    def embedding(m, a):
        m["embedding"] = {"type": "hashing-trick"}  # not a known embedding type

    def drop(m, a):
        del a["d"]

    def drop_vocab(m, a):
        del a["vocab_keys"]

    def dtype(m, a):
        a["linear"] = a["linear"].astype(np.float64)

    def shape(m, a):
        a["emb"] = np.zeros((3, 3), np.float32)

    def shape_bias(m, a):
        a["bias"] = np.zeros((1, 1), np.float32)

    def n_features(m, a):
        m["n_features"] = 4
        a["linear"], a["emb"] = np.zeros(4, np.float32), np.zeros((4, 2), np.float32)

    def offsets(m, a):
        a["vocab_key_offsets"] = np.array([0, 2], np.int64)

    def no_target(m, a):
        del m["target"]

    def format_name(m, a):
        m["format"] = "safetensors"

    def schema(m, a):
        m["schema"] = {"name": "x"}

    def schemas_differ(m, a):
        m["preprocess"] = {"schema": {**m["schema"], "name": "other"}, "min_count": None}

    return [("kind", kind, A.UnknownKind), ("embedding", embedding, A.UnknownEmbedding),
            ("drop", drop, A.MissingArray), ("drop_vocab", drop_vocab, A.MissingArray),
            ("dtype", dtype, A.BadArray), ("shape", shape, A.BadArray),
            ("shape_bias", shape_bias, A.BadArray), ("n_features", n_features, A.BadArray),
            ("offsets", offsets, A.BadArray), ("no_target", no_target, A.BadManifest),
            ("format", format_name, A.BadManifest), ("schema", schema, A.BadManifest),
            ("schemas_differ", schemas_differ, A.BadManifest)]


@pytest.mark.parametrize("name,mutate,error", _defects(), ids=[d[0] for d in _defects()])
def test_reader_and_writer_name_each_defect(tmp_path, name, mutate, error):
    manifest, arrays = tiny()
    mutate(manifest, arrays)
    _expect(_write_raw(tmp_path, spec_bytes(manifest, arrays)), error)
    with pytest.raises(error):
        A.write_artifact(tmp_path / "out.adrk", manifest, arrays)
    assert sorted(os.listdir(tmp_path)) == ["bad.adrk"]  # the writer refused before creating anything


def test_pruned_rules_need_n_pairs_and_ordered_pairs(tmp_path):
    manifest, arrays = two_field("pruned")
    del manifest["n_pairs"]
    with pytest.raises(A.BadManifest, match="n_pairs"):
        A.write_artifact(tmp_path / "p.adrk", manifest, arrays)
    manifest, arrays = two_field("pruned")
    arrays.update(pair_i=np.array([1], np.int32), pair_j=np.array([0], np.int32))
    _expect(_write_raw(tmp_path, spec_bytes(manifest, arrays)), A.BadArray)


def test_bad_header_json_and_table(tmp_path):
    manifest, arrays = tiny()
    raw = bytearray(spec_bytes(manifest, arrays))
    raw[64] = ord("[")  # no longer the expected object; re-seal the checksum so only this is wrong
    hlen = struct.unpack_from("<Q", raw, 16)[0]
    raw[32:64] = hashlib.sha256(bytes(raw[64:])).digest()
    _expect(_write_raw(tmp_path, bytes(raw)), A.BadHeader)
    # an array table entry pointing past the data region
    good = spec_bytes(manifest, arrays)
    header = json.loads(good[64 : 64 + hlen])
    header["arrays"]["emb"]["offset"] = 10_000 * 64
    blob = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    blob += b" " * ((64 - (64 + len(blob)) % 64) % 64)
    data = good[64 + hlen :]
    prelude = good[:16] + struct.pack("<QQ", len(blob), len(data)) + hashlib.sha256(blob + data).digest()
    _expect(_write_raw(tmp_path, prelude + blob + data), A.BadHeader)


def test_writer_rejects_non_arrays_and_non_json(tmp_path):
    manifest, arrays = tiny()
    with pytest.raises(A.BadArray, match="linear"):
        A.write_artifact(tmp_path / "x", manifest, {**arrays, "linear": [1.0, 2.0, 3.0]})
    with pytest.raises(A.BadArray, match="complex"):
        A.write_artifact(tmp_path / "x", manifest, {**arrays, "extra": np.zeros(2, np.complex64)})
    with pytest.raises(A.BadManifest, match="JSON"):
        A.write_artifact(tmp_path / "x", {**manifest, "source": {"auc": float("nan")}}, arrays)
    assert os.listdir(tmp_path) == []


# --- atomic writes ----------------------------------------------------------------------------


def test_failure_mid_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    manifest, arrays = two_field("fm")
    path = A.write_artifact(tmp_path / "m.adrk", manifest, arrays).path
    before = path.read_bytes()
    calls = []

    def dying(f, a, h, progress):
        calls.append(1)
        f.write(a.reshape(-1).view(np.uint8)[: max(1, a.nbytes // 2)].tobytes())
        if len(calls) == 3:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(A, "_write_chunks", dying)
    manifest2, arrays2 = two_field("fm")
    arrays2["bias"] = np.ones(1, np.float32)
    with pytest.raises(OSError, match="No space"):
        A.write_artifact(path, manifest2, arrays2)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.adrk"]


def test_replace_never_touches_a_mapped_old_file(tmp_path):
    manifest, arrays = two_field("fm")
    path = A.write_artifact(tmp_path / "m.adrk", manifest, arrays).path
    old = A.read_artifact(path)
    old_emb = np.array(old.arrays["emb"])
    arrays["emb"] = arrays["emb"] + 1.0
    A.write_artifact(path, manifest, arrays)
    new = A.read_artifact(path)
    assert np.array_equal(old.arrays["emb"], old_emb)  # the server's mapping still sees the old model
    assert np.array_equal(new.arrays["emb"], arrays["emb"]) and new.version != old.version


# --- preprocessing travels inside ---------------------------------------------------------------


@pytest.mark.data
def test_load_preprocessor_encodes_real_criteo_like_the_original(tmp_path, criteo_path):
    with gzip.open(criteo_path, "rt") as fh:
        lines = [next(fh).rstrip("\n").split("\t") for _ in range(600)]
    fields = tuple(Field(f"I{i}", "numeric") for i in range(1, 14)) + tuple(
        Field(f"C{i}", role="item" if i > 20 else "context") for i in range(1, 27))
    schema = Schema("criteo", fields)
    rows = [dict(zip([f.name for f in fields], ln[1:], strict=True)) for ln in lines]
    train, test = rows[:400], rows[400:]
    hashes, counts = [], []
    for f in fields:
        toks = [t for t in field_tokens(f, [r[f.name] for r in train]) if t is not None]
        h, c = np.unique(hash_tokens(toks), return_counts=True)
        hashes.append(h)
        counts.append(c)
    pre = Preprocessor(schema, Vocab.from_counts(hashes, counts, min_count=2))
    n = pre.vocab.n_features
    desc, vocab = pre.to_state()
    manifest = {"format": "adrank-artifact", "kind": "fm", "rank": None, "embed_dim": 1,
                "target": "binary", "schema": schema.to_dict(), "preprocess": desc, "n_features": n,
                "embedding": {"type": "dense"}, "source": {}}
    arrays = {"bias": np.zeros(1, np.float32), "linear": np.zeros(n, np.float32),
              "emb": np.zeros((n, 1), np.float32), "d": np.zeros(schema.m, np.float32), **vocab}
    art = A.read_artifact(A.write_artifact(tmp_path / "c.adrk", manifest, arrays).path)
    loaded = A.load_preprocessor(art)
    assert np.shares_memory(loaded.vocab.keys, art.arrays["vocab_keys"])  # no per-worker copy
    X = loaded.encode_rows(test)
    assert np.array_equal(X, pre.encode_rows(test))
    assert (X == np.array([int(o) + 1 for o in pre.vocab.id_offsets[:-1]])).any()  # unseen -> rare


def _resealed(header: bytes, data: bytes) -> bytes:
    header += b" " * ((64 - (64 + len(header)) % 64) % 64)
    digest = hashlib.sha256(header + data).digest()
    return b"ADRKART\x00" + struct.pack("<IIQQ", 1, 0, len(header), len(data)) + digest + header + data


def test_fuzzed_headers_fail_only_with_named_errors(tmp_path):
    """Random edits of the JSON header (checksum re-sealed, so the checks behind it run): the
    reader either accepts the file or raises an ArtifactError - never KeyError/TypeError/..."""
    manifest, arrays = two_field("pruned")
    good = spec_bytes(manifest, arrays)
    hlen = struct.unpack_from("<Q", good, 16)[0]
    header, data = good[64 : 64 + hlen].rstrip(b" "), good[64 + hlen :]
    rng = np.random.default_rng(0)
    alphabet = b'{}[]":,0123456789-.aeflnrstu '
    codes = set()
    for trial in range(300):
        h = bytearray(header)
        for _ in range(rng.integers(1, 4)):
            pos = int(rng.integers(len(h)))
            if rng.random() < 0.5:
                h[pos] = alphabet[rng.integers(len(alphabet))]
            else:
                del h[pos]
        p = tmp_path / f"f{trial}.adrk"
        p.write_bytes(_resealed(bytes(h), data))
        try:
            A.read_artifact(p)
        except A.ArtifactError as exc:
            codes.add(exc.code)
        p.unlink()
    assert {"bad_header", "bad_manifest"} <= codes  # the checks behind the JSON parser ran


def test_header_must_end_on_the_alignment_boundary(tmp_path):
    manifest, arrays = tiny()
    good = spec_bytes(manifest, arrays)
    hlen = struct.unpack_from("<Q", good, 16)[0]
    header, data = good[64 : 64 + hlen], good[64 + hlen :]
    short = header[:-1]  # one space less: data would start misaligned
    raw = (b"ADRKART\x00" + struct.pack("<IIQQ", 1, 0, len(short), len(data))
           + hashlib.sha256(short + data).digest() + short + data)
    _expect(_write_raw(tmp_path, raw), A.BadHeader)


def test_extra_arrays_and_manifest_members_are_kept_and_ignored(tmp_path):
    manifest, arrays = tiny()
    manifest["future_member"] = {"x": 1}
    extra = {"ad_cache": np.arange(5, dtype=np.float64), "flags": np.array([True, False, True])}
    art = A.read_artifact(A.write_artifact(tmp_path / "m.adrk", manifest, {**arrays, **extra}).path)
    assert art.manifest["future_member"] == {"x": 1}
    for name, a in extra.items():
        assert art.arrays[name].dtype == a.dtype and np.array_equal(art.arrays[name], a)
