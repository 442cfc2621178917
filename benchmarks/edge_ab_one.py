"""One side of docs/results/edge-latency.md: the whole app in process (serve_latency.asgi_in_process)
at 10 / 100 / 1,000 candidates on the tree this runs in (PYTHONPATH), for a model built by
edge_ab_build.py; prints one JSON line.  Run it alternately in two trees to compare them."""

from __future__ import annotations

import json
import pathlib
import pickle
import sys

from benchmarks.serve_latency import asgi_in_process, make_bodies

if __name__ == "__main__":
    path = pathlib.Path(sys.argv[1])
    with open(sys.argv[2], "rb") as f:
        schema = pickle.load(f)  # noqa: S301 - our own file from edge_ab_build.py
    out = {n: asgi_in_process(path, make_bodies(schema, n, 16, False, seed=3), reps)
           for n, reps in ((10, 400), (100, 300), (1000, 60))}
    print(json.dumps(out))
