"""Benchmark of the artifact I/O: write, read (verified / not), and page sharing across workers.

    python -m benchmarks.artifact_io --n-features 1000000 --k 16 --out docs/results/artifact-io

writes ``<out>.json`` and ``<out>.md``.  A synthetic DPLR artifact of n features (dense float32
emb [n, k], vocab of n - 2m uint64 keys) is written to a temporary directory, read back with and
without SHA-256 verification, and then opened by ``--workers`` child processes that each touch
every embedding page; their proportional set size (Pss, /proc/self/smaps_rollup) shows whether
the pages are shared (Pss ~ Rss / workers) or copied (Pss ~ Rss).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from adrank.core.artifact import load_preprocessor, read_artifact
from adrank.core.preprocess import Preprocessor, Vocab
from adrank.core.schema import Field, Schema
from exporter.export import export_params


def synthetic(n_features: int, k: int, m: int = 20, rho: int = 2, seed: int = 0):
    rng = np.random.default_rng(seed)
    schema = Schema("bench", tuple(Field(f"f{i}", role="context" if i < m // 2 else "item") for i in range(m)))
    per = (n_features - 2 * m) // m
    kept = [rng.integers(0, 2**63, size=per, dtype=np.uint64) for _ in range(m)]
    pre = Preprocessor(schema, Vocab.from_kept(kept))
    n = pre.vocab.n_features
    params = {"bias": np.zeros(1, np.float32), "linear": rng.normal(size=n).astype(np.float32),
              "emb": rng.normal(size=(n, k)).astype(np.float32),
              "U": rng.normal(size=(rho, m)).astype(np.float32), "e": rng.normal(size=rho).astype(np.float32)}
    return params, pre


def _smaps(key: str) -> int:
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return -1


def _worker(path: str, barrier, q) -> None:
    art = read_artifact(path, verify=False)
    before = _smaps("Pss")
    total = float(art.arrays["emb"].sum(dtype=np.float64))  # touch every page, no copy
    barrier.wait()  # every worker has the pages mapped now: Pss splits shared pages
    q.put({"pss_delta": _smaps("Pss") - before, "rss": _smaps("Rss"), "checksum": total})
    barrier.wait()


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _encode_time(path, m: int, repeat: int) -> float:
    loaded = load_preprocessor(read_artifact(path))
    cols = {f"f{i}": [f"value{j}" for j in range(1000)] for i in range(m)}
    return _best(lambda: loaded.encode_columns(cols, n_rows=1000), repeat)


def run(n_features: int, k: int, workers: int, repeat: int) -> dict:
    params, pre = synthetic(n_features, k)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bench.adrk"
        write_s = _best(lambda: export_params(params, {"kind": "dplr"}, pre, path), repeat)
        nbytes = path.stat().st_size
        read_verify_s = _best(lambda: read_artifact(path, verify=True), repeat)
        read_fast_s = _best(lambda: read_artifact(path, verify=False), repeat)
        encode_s = _encode_time(path, pre.schema.m, repeat)  # unmaps on return: only workers share
        ctx = mp.get_context("spawn")
        barrier, q = ctx.Barrier(workers), ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(str(path), barrier, q)) for _ in range(workers)]
        for p in procs:
            p.start()
        shares = [q.get(timeout=300) for _ in procs]
        for p in procs:
            p.join()
    emb_bytes = params["emb"].nbytes
    return {
        "n_features": pre.vocab.n_features, "k": k, "file_bytes": nbytes, "emb_bytes": emb_bytes,
        "write_s": write_s, "write_MBps": nbytes / write_s / 1e6,
        "read_verify_s": read_verify_s, "verify_MBps": nbytes / read_verify_s / 1e6,
        "read_no_verify_s": read_fast_s,
        "encode_1000_rows_x_fields_s": encode_s, "fields": pre.schema.m,
        "workers": workers, "worker_pss_delta_bytes": [s["pss_delta"] for s in shares],
        "pss_over_emb": [round(s["pss_delta"] / emb_bytes, 3) for s in shares],
    }


def markdown(r: dict, command: str) -> str:
    mb = 1 / 1e6
    rows = [
        ("artifact size", f"{r['file_bytes'] * mb:.1f} MB (emb {r['emb_bytes'] * mb:.1f} MB)"),
        ("write (fold + validate + SHA-256 + fsync + rename)", f"{r['write_s'] * 1e3:.0f} ms "
                                                               f"({r['write_MBps']:.0f} MB/s)"),
        ("read, verify=True (SHA-256 of every byte)", f"{r['read_verify_s'] * 1e3:.0f} ms "
                                                      f"({r['verify_MBps']:.0f} MB/s)"),
        ("read, verify=False (mmap + header + checks)", f"{r['read_no_verify_s'] * 1e3:.2f} ms"),
        (f"encode 1000 rows x {r['fields']} fields via the mmapped vocab",
         f"{r['encode_1000_rows_x_fields_s'] * 1e3:.1f} ms"),
        (f"Pss added per worker after touching all of emb ({r['workers']} workers)",
         ", ".join(f"{x:.2f} x emb" for x in r["pss_over_emb"])),
    ]
    lines = [f"# Artifact I/O ({r['n_features']:,} features, k = {r['k']})", "",
             f"Command: `{command}`", "", f"Machine: {platform.machine()}, Python {platform.python_version()}, "
             "2 shared cores (timings are the best of the repeats).", "", "| what | result |", "| --- | --- |"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    lines += ["", "Pss (proportional set size) charges each shared page 1/N to each of the N processes "
              "mapping it: about 1/workers x emb per worker means the workers share one copy."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-features", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default="docs/results/artifact-io")
    args = ap.parse_args(argv)
    r = run(args.n_features, args.k, args.workers, args.repeat)
    command = "python -m benchmarks.artifact_io " + shlex.join(sys.argv[1:] if argv is None else argv)
    r["command"] = command
    Path(args.out + ".json").write_text(json.dumps(r, indent=1) + "\n")
    Path(args.out + ".md").write_text(markdown(r, command))
    print(markdown(r, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
