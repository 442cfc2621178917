"""The adrank artifact: one torch-free file holding a model, read by memory map.

The reader owns the format (spec: docs/artifact-format.md); the exporter writes through
:func:`write_artifact`, so writer and reader cannot drift.  Layout, little-endian::

    [0, 64)            prelude: magic "ADRKART\\0", u32 version, u32 flags, u64 header length H,
                       u64 data length D, 32-byte SHA-256 of bytes [64, 64 + H + D)
    [64, 64 + H)       UTF-8 JSON header {"arrays": {name: {dtype, shape, offset, nbytes}},
                       "manifest": {...}}, space-padded so the data region starts 64-aligned
    [64 + H, +D)       data region: arrays in name order, each at a 64-aligned offset, zero padding

What each model kind must carry is declared in the kinds table (``adrank.core.kinds``: a kind's
``arrays``), beside :data:`COMMON_ARRAYS` and, selected by the manifest's
``"embedding": {"type": ...}``, :data:`EMBEDDING_ARRAYS`.  Shapes name manifest dimensions
(``m`` = number of fields, ``k`` = ``embed_dim``, ``rank`` = rho, ...), so a new kind or embedding
type is one table entry.

Only numpy and the stdlib (plus the core's ``kinds``, ``schema`` and ``preprocess``) are imported here.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from adrank.core import kinds

MAGIC = b"ADRKART\x00"
FORMAT_VERSION = 1
FORMAT_NAME = "adrank-artifact"
ALIGN = 64
PRELUDE = struct.Struct("<8sIIQQ32s")  # 64 bytes
assert PRELUDE.size == ALIGN
DTYPES = ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
          "float32", "float64")
TARGETS = ("binary", "regression")

# --- what each kind needs: name -> (dtype, shape); a shape entry is an int, a dimension name
# resolved by `dimensions(manifest)`, or "*" (any length).
COMMON_ARRAYS: dict[str, tuple[str, kinds.Shape]] = {
    "bias": ("float32", (1,)),
    "linear": ("float32", ("n_features",)),  # w_j + folded 0.5 * c_f * ||emb_j||^2
    "vocab_keys": ("uint64", ("*",)),
    "vocab_key_offsets": ("int64", ("m+1",)),
    "vocab_id_offsets": ("int64", ("m+1",)),
}
EMBEDDING_ARRAYS: dict[str, dict[str, tuple[str, kinds.Shape]]] = {
    "none": {},  # no embedding table (a kind without embeddings: "lr"; embed_dim 0)
    "dense": {"emb": ("float32", ("n_features", "embed_dim"))},
    # xLightFM / LightFM (xlightfm.md Sec. 3): feature i of a quantized field f is the
    # concatenation of D codewords, codeword d = codebooks[codebook_base[f, d] + code]; code
    # (i, d) is number (i - off_f) D + d of the code_bits[f]-bit stream (adrank/core/bitpack.py layout)
    # starting at word code_word_base[f] of code_stream.  Fields kept dense (K_f = 0) read
    # dense_rows[dense_base[f] + i - off_f].
    "codebook": {
        "codebooks": ("float32", ("embedding.n_codewords", "embedding.sub_dim")),
        "code_stream": ("uint32", ("embedding.n_words",)),
        "code_word_base": ("int64", ("m",)),
        "codebook_base": ("int64", ("m", "embedding.D")),
        "codebook_sizes": ("int64", ("m",)),
        "code_bits": ("int64", ("m",)),
        "dense_rows": ("float32", ("embedding.n_dense", "embed_dim")),
        "dense_base": ("int64", ("m",)),
    },
}


# --- named errors ------------------------------------------------------------------------------
class ArtifactError(ValueError):
    """Base of every way an artifact can be bad; ``code`` is a stable machine-readable string."""

    code = "artifact_error"

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(f"{path}: {message}" if path is not None else message)
        self.path = path


class Truncated(ArtifactError):
    code = "truncated"


class TrailingBytes(ArtifactError):
    code = "trailing_bytes"


class BadMagic(ArtifactError):
    code = "bad_magic"


class UnsupportedVersion(ArtifactError):
    code = "unsupported_version"


class ChecksumMismatch(ArtifactError):
    code = "checksum_mismatch"


class BadHeader(ArtifactError):
    code = "bad_header"


class BadManifest(ArtifactError):
    code = "bad_manifest"


class UnknownKind(ArtifactError):
    code = "unknown_kind"


class UnknownEmbedding(UnknownKind):
    code = "unknown_embedding"


class MissingArray(ArtifactError):
    code = "missing_array"


class BadArray(ArtifactError):
    code = "bad_array"


# --- the in-memory view -----------------------------------------------------------------------
@dataclass
class WriteInfo:
    path: Path
    nbytes: int
    version: str


@dataclass
class Artifact:
    """A verified artifact: ``arrays`` are read-only views into one shared memory map."""

    path: Path
    manifest: dict
    arrays: dict[str, np.ndarray]
    version: str  # first 12 hex chars of the SHA-256
    nbytes: int
    _map: mmap.mmap | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def target(self) -> str:
        return self.manifest["target"]

    @property
    def schema(self):
        from adrank.core.schema import Schema

        return Schema.from_dict(self.manifest["schema"])


# --- validation: one function for writer and reader -------------------------------------------
def dimensions(manifest: dict) -> dict[str, int]:
    """Named sizes that shape rules may use: the manifest's integer fields (also those of its
    ``embedding`` section, prefixed ``embedding.``) plus ``m``/``m+1`` from the schema."""
    dims = {k: v for k, v in manifest.items() if type(v) is int}
    emb = manifest.get("embedding")
    if isinstance(emb, dict):
        dims.update({f"embedding.{k}": v for k, v in emb.items() if type(v) is int})
    m = len(manifest["schema"]["fields"])
    dims.update({"m": m, "m+1": m + 1})
    return dims


def required_arrays(manifest: dict) -> dict[str, tuple[str, tuple]]:
    """The (dtype, shape rule) of every array the manifest's kind and embedding require."""
    emb_type = manifest["embedding"]["type"]
    return {**COMMON_ARRAYS, **kinds.KINDS[manifest["kind"]].arrays, **EMBEDDING_ARRAYS[emb_type]}


def validate(manifest, table, arrays: dict[str, np.ndarray] | None = None, path=None) -> None:
    """Check a manifest and its array table (name -> {dtype, shape, ...}); with ``arrays``,
    also the cheap content rules (vocabulary offsets, pair indices).  Raises the named
    :class:`ArtifactError` subclass of the first problem found."""
    if not isinstance(manifest, dict):
        raise BadManifest("manifest is not a JSON object", path)
    for key, typ in (("format", str), ("kind", str), ("target", str), ("schema", dict),
                     ("preprocess", dict), ("embedding", dict), ("n_features", int),
                     ("embed_dim", int)):
        if not isinstance(manifest.get(key), typ) or isinstance(manifest.get(key), bool):
            raise BadManifest(f"manifest field {key!r} missing or not a {typ.__name__}", path)
    if manifest["format"] != FORMAT_NAME:
        raise BadManifest(f"manifest format is {manifest['format']!r}, expected {FORMAT_NAME!r}", path)
    if manifest["kind"] not in kinds.KINDS:
        raise UnknownKind(f"unknown model kind {manifest['kind']!r} (known: {sorted(kinds.NAMES)})", path)
    if manifest["embedding"].get("type") not in EMBEDDING_ARRAYS:
        raise UnknownEmbedding(f"unknown embedding type {manifest['embedding'].get('type')!r} "
                               f"(known: {sorted(EMBEDDING_ARRAYS)})", path)
    if manifest["target"] not in TARGETS:
        raise BadManifest(f"target must be one of {TARGETS}, got {manifest['target']!r}", path)
    if manifest["n_features"] < 1 or manifest["embed_dim"] < (manifest["embedding"]["type"] != "none"):
        raise BadManifest("n_features must be >= 1 and embed_dim >= 1 (0 without embeddings)", path)
    if kinds.KINDS[manifest["kind"]].embedded == (manifest["embedding"]["type"] == "none"):
        raise BadManifest(f"kind {manifest['kind']!r}: only a kind without embeddings (lr) has embedding type "
                          "'none', and such a kind has no other", path)
    from adrank.core.schema import Schema, SchemaError

    try:
        Schema.from_dict(manifest["schema"])
    except SchemaError as exc:
        raise BadManifest(f"bad schema: {exc}", path) from None
    if manifest["preprocess"].get("schema") != manifest["schema"]:
        raise BadManifest("preprocess.schema differs from the manifest's schema", path)
    if "calibration" in manifest:
        from adrank.core.calibration import CalibrationError, of_manifest

        if manifest["target"] != "binary":
            raise BadManifest("a calibration map needs target 'binary' (it maps scores to click probabilities)",
                              path)
        try:
            of_manifest(manifest)
        except CalibrationError as exc:
            raise BadManifest(f"bad calibration: {exc}", path) from None
    dims = dimensions(manifest)
    for name, (dtype, shape_rule) in required_arrays(manifest).items():
        if name not in table:
            raise MissingArray(f"kind {manifest['kind']!r} needs array {name!r}", path)
        entry = table[name]
        if entry["dtype"] != dtype:
            raise BadArray(f"array {name!r} has dtype {entry['dtype']}, expected {dtype}", path)
        want = []
        for s in shape_rule:
            if isinstance(s, str) and s != "*":
                if s not in dims or dims[s] < 0:
                    raise BadManifest(f"kind {manifest['kind']!r} needs a non-negative integer "
                                      f"manifest field {s!r} (shape of {name!r})", path)
                s = dims[s]
            want.append(s)
        got = list(entry["shape"])
        if len(got) != len(want) or any(w != "*" and w != g for w, g in zip(want, got, strict=False)):
            shown = [w if w != "*" else "any" for w in want]
            raise BadArray(f"array {name!r} has shape {tuple(got)}, expected {tuple(shown)}", path)
    if arrays is not None:
        _validate_contents(manifest, arrays, dims, path)


def _validate_contents(manifest, a, dims, path) -> None:
    ko, io = a["vocab_key_offsets"], a["vocab_id_offsets"]
    if (ko[0] != 0 or io[0] != 0 or np.any(np.diff(ko) < 0)
            or np.any(np.diff(io) != np.diff(ko) + 2)):
        raise BadArray("vocabulary offsets are inconsistent (each field owns 2 + its key count ids)", path)
    if ko[-1] != len(a["vocab_keys"]) or io[-1] != manifest["n_features"]:
        raise BadArray(f"vocabulary covers {int(io[-1])} ids / {int(ko[-1])} keys, but "
                       f"n_features = {manifest['n_features']} and {len(a['vocab_keys'])} keys are stored", path)
    if manifest["embedding"]["type"] == "codebook":
        _validate_codebook(manifest, a, path)
    if manifest["kind"] == "pruned":
        i, j = a["pair_i"], a["pair_j"]
        if len(i) and not (np.all(i >= 0) and np.all(i < j) and np.all(j < dims["m"])):
            raise BadArray("pruned pairs must satisfy 0 <= pair_i < pair_j < m", path)


def _validate_codebook(manifest, a, path) -> None:
    """Every index a codebook kernel follows stays inside its array (kernels do not bounds-check):
    code widths match the codebook sizes, codebook / word / dense bases fit, every packed code
    is below its codebook's size (the stream is unpacked with numpy, chunked)."""
    D, kd, k = manifest["embedding"].get("D"), manifest["embedding"].get("sub_dim"), manifest["embed_dim"]
    if type(D) is not int or type(kd) is not int or D < 1 or D * kd != k:
        raise BadManifest(f"codebook embedding: D={D!r} x sub_dim={kd!r} must equal embed_dim={k}", path)
    off = a["vocab_id_offsets"]
    sizes, bits, cb, wb, db = (a[n] for n in ("codebook_sizes", "code_bits", "codebook_base",
                                              "code_word_base", "dense_base"))
    W, n_words, n_dense = len(a["codebooks"]), len(a["code_stream"]), len(a["dense_rows"])
    stream = a["code_stream"]
    for f in range(len(sizes)):
        n_f, K, b = int(off[f + 1] - off[f]), int(sizes[f]), int(bits[f])
        if K == 0:
            if b != 0 or not 0 <= db[f] <= n_dense - n_f:
                raise BadArray(f"codebook embedding: dense-kept field {f} needs code_bits 0 and "
                               f"dense_base in [0, {n_dense - n_f}], got {b} / {int(db[f])}", path)
            continue
        if K < 1 or b != max(1, (K - 1).bit_length()) or b > 16:
            raise BadArray(f"codebook embedding: field {f} has {K} codewords but code_bits {b}", path)
        for d in range(D):
            if not (0 <= cb[f, d] <= W - K):
                raise BadArray(f"codebook embedding: codebook_base[{f}, {d}] = {int(cb[f, d])} leaves "
                               f"{K} codewords outside the {W} stored", path)
        n_codes = n_f * D
        if not (0 <= wb[f] and wb[f] + (n_codes * b + 31) // 32 + 1 <= n_words):
            raise BadArray(f"codebook embedding: code_word_base[{f}] = {int(wb[f])} puts "
                           f"{n_codes} codes of {b} bits outside the {n_words}-word code_stream", path)
        for lo in range(0, n_codes, 1 << 20):
            bit = np.arange(lo, min(n_codes, lo + (1 << 20)), dtype=np.uint64) * np.uint64(b) \
                + np.uint64(int(wb[f]) * 32)
            w = bit >> np.uint64(5)
            pair = stream[w].astype(np.uint64) | (stream[w + np.uint64(1)].astype(np.uint64) << np.uint64(32))
            codes = (pair >> (bit & np.uint64(31))) & np.uint64((1 << b) - 1)
            if codes.size and int(codes.max()) >= K:
                raise BadArray(f"codebook embedding: field {f} holds code {int(codes.max())} >= its "
                               f"{K} codewords", path)


# --- writing -----------------------------------------------------------------------------------
def _pad(n: int) -> int:
    return -n % ALIGN


def _layout(arrays: dict[str, np.ndarray]) -> tuple[dict, int]:
    """Array table (sorted names, 64-aligned offsets) and the data region's length."""
    table, off = {}, 0
    for name in sorted(arrays):
        a = arrays[name]
        table[name] = {"dtype": a.dtype.name, "shape": list(a.shape), "offset": off, "nbytes": a.nbytes}
        off += a.nbytes + _pad(a.nbytes)
    return table, off


def encode_header(manifest: dict, table: dict) -> bytes:
    """Canonical JSON (sorted keys, no spaces), space-padded so 64 + len is a multiple of 64."""
    try:
        raw = json.dumps({"arrays": table, "manifest": manifest}, sort_keys=True,
                         separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise BadManifest(f"manifest is not plain JSON: {exc}") from None
    return raw + b" " * _pad(PRELUDE.size + len(raw))


def _as_stored(name: str, a) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise BadArray(f"array {name!r} is a {type(a).__name__}, not a numpy array")
    if a.dtype.name not in DTYPES:
        raise BadArray(f"array {name!r} has unsupported dtype {a.dtype} (allowed: {DTYPES})")
    return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))


def _write_chunks(f, a: np.ndarray, h, progress) -> None:
    """Write one array's bytes (and feed the checksum) in bounded chunks."""
    flat = a.reshape(-1).view(np.uint8)
    step = 1 << 24
    for s in range(0, len(flat), step):
        chunk = flat[s : s + step]
        h.update(chunk)
        f.write(chunk)
        if progress is not None:
            progress(len(chunk))


def write_artifact(path, manifest: dict, arrays: dict[str, np.ndarray], progress=None) -> WriteInfo:
    """Validate, then write atomically: temp file in the same directory, fsync, os.replace.

    The old file is never modified in place (servers may have it memory-mapped); on any
    failure the temp file is removed and the old file is left intact.  ``progress``, if given,
    is called with the number of array bytes written after each chunk (e.g. ``tqdm.update``).
    """
    path = Path(path)
    arrays = {n: _as_stored(n, a) for n, a in arrays.items()}
    table, data_len = _layout(arrays)
    validate(manifest, table, arrays, path)
    header = encode_header(manifest, table)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            h = hashlib.sha256(header)
            f.write(b"\0" * PRELUDE.size)
            f.write(header)
            for name in sorted(arrays):
                _write_chunks(f, arrays[name], h, progress)
                pad = b"\0" * _pad(arrays[name].nbytes)
                h.update(pad)
                f.write(pad)
            digest = h.digest()
            f.seek(0)
            f.write(PRELUDE.pack(MAGIC, FORMAT_VERSION, 0, len(header), data_len, digest))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return WriteInfo(path, PRELUDE.size + len(header) + data_len, digest.hex()[:12])


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- reading -----------------------------------------------------------------------------------
def check_prelude(prelude: bytes, size: int, path) -> tuple[int, int, bytes]:
    """(header length, data length, SHA-256) of a file of ``size`` bytes that starts with
    ``prelude``, or the named error of what is wrong with it."""
    magic, version, flags, hlen, dlen, digest = PRELUDE.unpack(prelude)
    if magic != MAGIC:
        raise BadMagic(f"not an adrank artifact (magic {magic!r})", path)
    if version != FORMAT_VERSION or flags != 0:
        raise UnsupportedVersion(f"format version {version} flags {flags:#x}; this reader "
                                 f"supports version {FORMAT_VERSION} flags 0", path)
    if (PRELUDE.size + hlen) % ALIGN:
        raise BadHeader(f"header length {hlen} does not end on a {ALIGN}-byte boundary", path)
    end = PRELUDE.size + hlen + dlen
    if size < end:
        raise Truncated(f"file has {size} bytes, the prelude promises {end}", path)
    if size > end:
        raise TrailingBytes(f"file has {size - end} bytes after the data region", path)
    return hlen, dlen, digest


def read_artifact(path, verify: bool = True) -> Artifact:
    """Open, validate and memory-map an artifact.  ``verify`` also checks the SHA-256 (reads
    every byte once); structure, manifest and array rules are always checked."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < PRELUDE.size:
            raise Truncated(f"file has {size} bytes, shorter than the {PRELUDE.size}-byte prelude", path)
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    buf = np.frombuffer(mm, dtype=np.uint8)
    hlen, dlen, digest = check_prelude(bytes(buf[: PRELUDE.size]), size, path)
    if verify and hashlib.sha256(buf[PRELUDE.size :].data).digest() != digest:
        raise ChecksumMismatch("SHA-256 of header + data does not match the prelude", path)
    manifest, table = parse_header(bytes(buf[PRELUDE.size : PRELUDE.size + hlen]), dlen, path)
    base = PRELUDE.size + hlen
    arrays = {}
    for name, t in table.items():
        start = base + t["offset"]
        arrays[name] = buf[start : start + t["nbytes"]].view(np.dtype(t["dtype"]).newbyteorder("<")
                                                             ).reshape(t["shape"])
    validate(manifest, table, arrays, path)
    return Artifact(path, manifest, arrays, digest.hex()[:12], size, mm)


def parse_header(raw: bytes, data_len: int, path) -> tuple[dict, dict]:
    """Decode the JSON header and check the array table against the data region."""
    try:
        header = json.loads(raw.decode("utf-8"))
        manifest, table = header["manifest"], header["arrays"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BadHeader(f"header is not the expected JSON object: {exc}", path) from None
    if not isinstance(table, dict):
        raise BadHeader("array table is not a JSON object", path)
    spans = []
    for name, t in table.items():
        try:
            dtype, shape, off, nb = t["dtype"], t["shape"], t["offset"], t["nbytes"]
            ok = (dtype in DTYPES and all(type(s) is int and s >= 0 for s in shape)
                  and type(off) is int and type(nb) is int)
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise BadHeader(f"array {name!r}: malformed table entry {t!r}", path)
        if nb != int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize:
            raise BadHeader(f"array {name!r}: nbytes {nb} does not match dtype and shape", path)
        if off % ALIGN or off < 0 or off + nb > data_len:
            raise BadHeader(f"array {name!r}: offset {off} (+{nb}) misaligned or outside the data", path)
        spans.append((off, off + nb, name))
    spans.sort()
    for (_, e0, a), (s1, _, b) in zip(spans, spans[1:], strict=False):
        if s1 < e0:
            raise BadHeader(f"arrays {a!r} and {b!r} overlap", path)
    return manifest, table


def load_preprocessor(artifact: Artifact):
    """The artifact's own :class:`adrank.core.preprocess.Preprocessor`; vocab arrays stay mmapped."""
    from adrank.core.preprocess import Preprocessor

    return Preprocessor.from_state(artifact.manifest["preprocess"], artifact.arrays)
