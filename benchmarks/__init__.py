"""Benchmark scripts, one module each (``python -m benchmarks.NAME``): each writes its JSON +
Markdown (+PNG) report under docs/results/ with the exact command and the machine load.

The real data samples (``../shared/data`` beside the checkout; never committed) are found at
:data:`SHARED_DATA` unless a benchmark's ``--shared-data`` says otherwise; :data:`SAMPLES` names
each data set's file under it (the tests use the same names, tests/conftest.py).
"""

from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLES = {
    "criteo": "criteo/criteo_dac_train_head.txt.gz",
    "avazu": "avazu/avazu_train_head.csv.gz",
    "movielens": "movielens/ml-1m",
}
