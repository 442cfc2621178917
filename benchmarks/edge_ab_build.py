"""The model of docs/results/edge-latency.md: serve_latency's DPLR artifact + its schema (pickled)."""

from __future__ import annotations

import pathlib
import pickle
import sys

from benchmarks.serve_latency import build_model

if __name__ == "__main__":
    schema = build_model(pathlib.Path(sys.argv[1]))
    with open(sys.argv[2], "wb") as f:
        pickle.dump(schema, f)
