"""Benchmark of the data pipeline: generator and two-pass encoder throughput.

    python -m benchmarks.data_pipeline --out docs/results/data_pipeline

writes ``OUT.json`` and ``OUT.md`` (timings, sizes, the command, the machine).  Wall-clock
times on a shared machine: read them as orders of magnitude, with the load average noted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import SAMPLES, SHARED_DATA


def _timed(fn):
    """(result, wall seconds, CPU seconds of this process)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, round(time.perf_counter() - t, 2), round(time.process_time() - c, 2)


def run(out: Path, shared_data: Path, big_rows: int, big_vocab: int) -> dict:
    from training.data import prepare
    from training.generate import generate

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, kw in (("default (150k rows, 20k features, 16 fields)", {}),
                         (f"large ({big_rows} rows, {big_vocab} features, clusters=64)",
                          dict(rows=big_rows, vocab=big_vocab, clusters=64))):
            d = tmp / f"gen{len(rows)}"
            truth, sec, cpu = _timed(lambda d=d, kw=kw: generate(d, progress=False, **kw))
            size = (d / "data.tsv.gz").stat().st_size
            rows.append({"step": f"generate {name}", "rows": truth["rows"], "seconds": sec, "cpu_seconds": cpu,
                         "rows_per_s": round(truth["rows"] / sec), "file_mb": round(size / 2**20, 1),
                         "planted_test_auc": round(truth["test"]["auc"], 4)})
            if not kw:
                enc, sec, cpu = _timed(lambda d=d: prepare("synthetic", d, cache_dir=tmp / "cache", progress=False))
                n = sum(len(enc.split(s)[1]) for s in ("train", "valid", "test"))
                rows.append({"step": "prepare synthetic default (2 passes)", "rows": n, "seconds": sec,
                             "cpu_seconds": cpu,
                             "rows_per_s": round(n / sec), "n_features": enc.n_features})
        for ds, rel in SAMPLES.items():
            p = shared_data / rel
            if not p.exists():
                continue
            enc, sec, cpu = _timed(lambda ds=ds, p=p: prepare(ds, p, cache_dir=tmp / "cache", progress=False))
            n = sum(len(enc.split(s)[1]) for s in ("train", "valid", "test"))
            rows.append({"step": f"prepare {ds} sample (2 passes)", "rows": n, "seconds": sec, "cpu_seconds": cpu,
                         "rows_per_s": round(n / sec), "n_features": enc.n_features})
    result = {"command": "python -m benchmarks.data_pipeline " + shlex.join(sys.argv[1:]),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_avg_1m_at_end": round(os.getloadavg()[0], 2)},
              "results": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    keys = ["step", "rows", "seconds", "cpu_seconds", "rows_per_s", "file_mb", "n_features", "planted_test_auc"]
    md = [f"# Data pipeline throughput\n\nCommand: `{result['command']}`  ",
          f"Machine: {result['machine']} (shared with other jobs: wall-clock `seconds` include waiting for the CPU; `cpu_seconds` is this process's CPU time; rows_per_s uses wall time)\n",
          "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    md += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/results/data_pipeline", help="output path without suffix")
    ap.add_argument("--shared-data", default=str(SHARED_DATA), help="the real samples (default: %(default)s)")
    ap.add_argument("--big-rows", type=int, default=1_000_000)
    ap.add_argument("--big-vocab", type=int, default=1_000_000)
    a = ap.parse_args(argv)
    res = run(Path(a.out), Path(a.shared_data), a.big_rows, a.big_vocab)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
