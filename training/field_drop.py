"""Drop the least important fields: the training half of the drop-fields experiment.

The DPLR-FwFM paper (Sec. 6) leaves as future work that a field whose column of U is negligible
could be dropped.  :func:`train_without_fields` does it: train DPLR(rho) on all fields, rank the
fields by their importance (training/interactions.py: sqrt(sum_r |e_r| U_rf^2)), then for each N
in ``drops`` retrain on the data without the N least important fields (same options, same seed).
The serving half (export, time per candidate, the report) is benchmarks/drop_fields.py: the
trainer never imports the exporter or the service.

The retrained models read the same encoded rows: :class:`FieldSubset` keeps the chosen fields'
slots and renumbers their ids (each field keeps its own id layout), so no raw file is re-read.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from adrank.core.preprocess import Preprocessor, Vocab
from adrank.core.schema import Schema
from adrank.core.train_config import TrainConfig


class FieldSubset:
    """An encoded data set restricted to the fields ``keep`` (indices, in schema order)."""

    def __init__(self, data, keep):
        pre = data.preprocessor
        schema, vocab = pre.schema, pre.vocab
        self.keep = sorted(int(f) for f in keep)
        if not self.keep or not any(schema.fields[f].role == "item" for f in self.keep):
            raise ValueError("a field subset needs at least one item field")
        fields = tuple(schema.fields[f] for f in self.keep)
        sub = Schema(schema.name, fields, target=schema.target, label=schema.label)
        self.preprocessor = Preprocessor(sub, Vocab.from_kept([vocab.field_keys(f) for f in self.keep]))
        self.target = data.target
        self._data = data
        new_off = self.preprocessor.vocab.id_offsets
        self._map = [(schema.slot_offsets[f], schema.slot_offsets[f + 1], int(vocab.id_offsets[f]), int(new_off[i]))
                     for i, f in enumerate(self.keep)]
        self._cache: dict = {}

    @property
    def schema(self) -> Schema:
        return self.preprocessor.schema

    @property
    def n_features(self) -> int:
        return self.preprocessor.vocab.n_features

    def split(self, name: str):
        if name not in self._cache:
            X, y = self._data.split(name)
            cols = []
            for lo, hi, old, new in self._map:
                block = np.asarray(X[:, lo:hi])
                cols.append(np.where(block >= 0, block - old + new, block).astype(np.int32))
            self._cache[name] = (np.ascontiguousarray(np.concatenate(cols, axis=1)), y)
        return self._cache[name]


def train_without_fields(data, cfg: TrainConfig, runs: Path, drops=(0, 2, 4, 8)) -> tuple[list[str], dict, list[dict]]:
    """(field names least important first, importance by name, one record per N in ``drops``:
    the data it trained on, its run directory, the dropped fields and the metrics)."""
    from training import checkpoint
    from training.interactions import importance
    from training.train import fit

    schema = data.schema
    fit(cfg, data, runs / "all")
    model, _, _ = checkpoint.load(runs / "all")
    imp = importance("dplr", model.export_arrays(), schema.m)
    order = [int(f) for f in np.argsort(imp, kind="stable")]  # least important first
    out = []
    for n in sorted(set(drops)):
        dropped = order[:n]
        if n and not any(schema.fields[f].role == "item" for f in range(schema.m) if f not in dropped):
            raise ValueError(f"dropping {n} fields leaves no item field")
        sub = data if n == 0 else FieldSubset(data, [f for f in range(schema.m) if f not in dropped])
        run = runs / ("all" if n == 0 else f"drop-{n}")
        metrics = fit(cfg, sub, run) if n else json.loads((run / "metrics.json").read_text())
        out.append({"dropped": n, "dropped_fields": [schema.fields[f].name for f in dropped], "data": sub,
                    "run": run, "m": sub.schema.m, "item_fields": sub.schema.m - sub.schema.m_context,
                    "test": metrics["test"], "valid": metrics["valid"], "best_epoch": metrics["best_epoch"]})
    return ([schema.fields[f].name for f in order], {schema.fields[f].name: float(imp[f]) for f in range(schema.m)},
            out)
