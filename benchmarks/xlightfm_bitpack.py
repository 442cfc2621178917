"""Cost of one embedding lookup: dense row vs codebook decode (byte codes vs bit-packed codes).

Random feature ids over m fields; each lookup adds the feature's k-vector into an accumulator
(the gather pattern of the scoring kernels).  Three layouts of the same embedding:

* dense    float32 [n, k] table (n * k * 4 bytes: far larger than the caches),
* codes    uint16 [n, D] codes + float32 codebooks [m * D * K, k/D] (the codebooks fit in L2),
* packed   the same codes bit-packed at ceil(log2 K) bits (adrank.core.bitpack.pack, one stream per
           field and codebook: this benchmark's own layout variant, ``pack_fields``/``code_of`` below).

Writes <out>.json and <out>.md (ns per lookup, median of --repeats runs; the machine is shared,
so compare the rows with each other, not with other runs).

    python -m benchmarks.xlightfm_bitpack
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numba
import numpy as np

from adrank.core.bitpack import bits_for, pack


def pack_fields(codes, id_offsets, bits):
    """Pack an [n, D] code table field by field: field f's d-th codes at width ``bits[f]``.

    Returns (``stream`` uint32, ``word_base`` int64 [m, D]): the codes of field f, codebook d
    form the sub-stream starting at word ``word_base[f, d]``.  (The artifact instead packs a
    feature's D codes adjacent, one stream per field: exporter/codebook.py.)"""
    off = np.asarray(id_offsets, dtype=np.int64)
    word_base = np.zeros((off.size - 1, codes.shape[1]), dtype=np.int64)
    parts, n_words = [], 0
    for f in range(off.size - 1):
        for d in range(codes.shape[1]):
            word_base[f, d] = n_words
            parts.append(pack(codes[off[f]:off[f + 1], d], int(bits[f])))
            n_words += parts[-1].size
    return np.concatenate(parts), word_base


@numba.njit(cache=True, inline="always")
def unpack_one(buf, b, index):
    """Code ``index`` of a stream of b-bit codes in ``buf`` (uint32 words) -> int64: reads words
    w and w+1 (pack's padding word makes w+1 valid at the end), no bounds branch."""
    bit = np.uint64(index) * np.uint64(b)
    w = bit >> np.uint64(5)
    s = bit & np.uint64(31)
    lo = np.uint64(buf[w]) | (np.uint64(buf[w + np.uint64(1)]) << np.uint64(32))
    return np.int64((lo >> s) & ((np.uint64(1) << np.uint64(b)) - np.uint64(1)))


@numba.njit(cache=True, inline="always")
def code_of(stream, word_base, bits, id_offsets, f, d, i):
    """Code of feature i (of field f) in codebook d, from ``pack_fields`` output."""
    return unpack_one(stream[word_base[f, d]:], bits[f], i - id_offsets[f])


@numba.njit(cache=True)
def dense_sum(emb, ids):
    acc = np.zeros(emb.shape[1], np.float32)
    for t in range(ids.shape[0]):
        i = ids[t]
        for j in range(emb.shape[1]):
            acc[j] += emb[i, j]
    return acc


@numba.njit(cache=True)
def codes_sum(codes, books, base, fields, ids):
    D, kd = codes.shape[1], books.shape[1]
    acc = np.zeros(D * kd, np.float32)
    for t in range(ids.shape[0]):
        i, f = ids[t], fields[t]
        for d in range(D):
            r = base[f, d] + np.int64(codes[i, d])
            for j in range(kd):
                acc[d * kd + j] += books[r, j]
    return acc


@numba.njit(cache=True)
def packed_sum(stream, word_base, bits, off, books, base, D, fields, ids):
    kd = books.shape[1]
    acc = np.zeros(D * kd, np.float32)
    for t in range(ids.shape[0]):
        i, f = ids[t], fields[t]
        for d in range(D):
            r = base[f, d] + code_of(stream, word_base, bits, off, f, d, i)
            for j in range(kd):
                acc[d * kd + j] += books[r, j]
    return acc


def best_ns(fn, args, n, repeats):
    fn(*args)  # compile / warm
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        times.append((time.perf_counter() - t0) / n * 1e9)
    return float(np.median(times)), float(min(times))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fields", type=int, default=20)
    p.add_argument("--per-field", type=int, default=100_000, help="features per field")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--codebooks", type=int, default=4, help="D")
    p.add_argument("--codewords", type=int, default=1024, help="K")
    p.add_argument("--lookups", type=int, default=2_000_000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default="docs/results/xlightfm-bitpack")
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    m, n, k, D, K = a.fields, a.fields * a.per_field, a.k, a.codebooks, a.codewords
    off = np.arange(m + 1, dtype=np.int64) * a.per_field
    emb = rng.normal(size=(n, k)).astype(np.float32)
    books = rng.normal(size=(m * D * K, k // D)).astype(np.float32)
    base = (np.arange(m * D, dtype=np.int64) * K).reshape(m, D)
    codes = rng.integers(0, K, (n, D)).astype(np.uint16)
    bits = np.full(m, bits_for(K), np.int64)
    stream, word_base = pack_fields(codes, off, bits)
    fields = rng.integers(0, m, a.lookups)
    ids = off[fields] + rng.integers(0, a.per_field, a.lookups)
    # the three layouts decode the same vectors
    t = ids[:1000]
    want = emb[t].sum(0)
    dec = np.concatenate([books[base[fields[:1000], d] + codes[t, d]] for d in range(D)], 1).sum(0)
    assert np.allclose(dense_sum(emb, t), want, rtol=1e-4, atol=1e-3)
    assert np.allclose(codes_sum(codes, books, base, fields[:1000], t), dec, rtol=1e-4, atol=1e-3)
    assert np.allclose(packed_sum(stream, word_base, bits, off, books, base, D, fields[:1000], t), dec,
                       rtol=1e-4, atol=1e-3)
    rows = {
        "dense": (best_ns(dense_sum, (emb, ids), a.lookups, a.repeats), emb.nbytes),
        "codes uint16": (best_ns(codes_sum, (codes, books, base, fields, ids), a.lookups, a.repeats),
                         codes.nbytes + books.nbytes),
        f"packed {bits_for(K)}-bit": (best_ns(packed_sum, (stream, word_base, bits, off, books, base, D, fields, ids),
                                              a.lookups, a.repeats), stream.nbytes + books.nbytes),
    }
    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    out = {"command": command, "args": vars(a), "numba": numba.__version__, "machine": platform.machine(),
           "results": {name: {"median_ns": md, "min_ns": mn, "bytes": b} for name, ((md, mn), b) in rows.items()}}
    Path(a.out + ".json").write_text(json.dumps(out, indent=1))
    md = [f"# Embedding lookup: dense vs codebook decode (m = {m}, n = {n}, k = {k}, D = {D}, K = {K})", "",
          f"Command: `{command}`", "",
          f"{a.lookups} random lookups per run, median (min) of {a.repeats} runs on a shared 2-core machine; "
          "each lookup adds the decoded k-vector to an accumulator.", "",
          "| layout | ns / lookup (median) | ns / lookup (min) | bytes held |", "| --- | --- | --- | --- |"]
    md += [f"| {name} | {md_:.1f} | {mn:.1f} | {b / 2**20:.1f} MiB |" for name, ((md_, mn), b) in rows.items()]
    Path(a.out + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
