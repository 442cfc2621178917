"""benchmarks/recovery_floor.py: the planted model it rebuilds is the generator's, its Fisher
information agrees with finite differences of the planted score, and the report is written.

No accuracy asserts here: the floor is a measurement (docs/results/recovery-floor.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import recovery_floor as rf
from training.generate import generate

TINY = dict(rows=3000, vocab=60, fields=6, context_fields=3, multi_max=3, embed_dim=4, rank=2, progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("rf") / "g"
    generate(d, seed=3, **TINY)
    return d


def test_rebuilt_planted_model_is_the_generators(tiny):
    planted, truth = rf.planted_model(tiny)
    arrays = np.load(tiny / "planted.npz")
    assert np.allclose(planted.R, arrays["R"], atol=1e-6)
    assert np.array_equal(planted.field_offsets, arrays["field_offsets"])
    assert truth["params"]["rows"] == TINY["rows"]


def test_fisher_matches_finite_differences_of_the_planted_score(tiny):
    planted, _ = rf.planted_model(tiny)
    rows, seed = 400, 5
    F_emb, F_lin = rf.fisher(planted, rows, seed)
    X = planted.sample(rows, np.random.default_rng([seed, 99]))  # the sample fisher() draws
    p = 1 / (1 + np.exp(-planted.score(X)))
    w = p * (1 - p)
    offs = planted.schema.slot_offsets
    last = planted.schema.m - 1  # the multi-valued field
    checked = [int(X[0, offs[0]]), int(X[0, offs[last]])]
    h = 1e-4
    for x in checked:
        for d in range(planted.k):
            keep = planted.emb[x, d]
            planted.emb[x, d] = keep + h
            up = planted.score(X)
            planted.emb[x, d] = keep - h
            down = planted.score(X)
            planted.emb[x, d] = keep
            g = (up - down) / (2 * h)  # the score is linear in one value's coordinate (R_ii = 0)
            assert F_emb[x, d] == pytest.approx(float((w * g**2).sum()), rel=1e-6)
        keep = planted.linear[x]
        planted.linear[x] = keep + h
        up = planted.score(X)
        planted.linear[x] = keep
        g = (up - planted.score(X)) / h
        assert F_lin[x] == pytest.approx(float((w * g**2).sum()), rel=1e-5)


def test_dof_runs_from_zero_to_the_informed_coordinates():
    F_emb, F_lin = np.array([[0.0, 2.0], [1.0, 0.0]]), np.array([3.0, 0.0])
    var = np.ones(2)
    assert rf.dof(F_emb, F_lin, var, var, 0.0) == 0.0
    assert rf.dof(F_emb, F_lin, var, var, 1e12) == pytest.approx(3.0)  # 3 coordinates with information
    assert rf.dof(F_emb, F_lin, var, var, 1.0) == pytest.approx(2 / 3 + 1 / 2 + 3 / 4)


def test_only_the_default_generator(tmp_path):
    generate(tmp_path / "b", seed=0, interactions="block", **{k: v for k, v in TINY.items() if k != "rank"})
    with pytest.raises(ValueError, match="default generator"):
        rf.planted_model(tmp_path / "b")


def test_report_without_training(tmp_path):
    out = tmp_path / "floor"
    assert rf.main(["--out", str(out), "--seeds", "0", "--signs", "positive", "--rows", "2000", "--fisher-rows",
                    "500", "--floor-rows", "20000", "--no-train"]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    (run,) = data["runs"]
    assert [f["rows"] for f in run["floor"]] == [2000, 20000]
    assert all(f["floor_ratio"] > 1 for f in run["floor"])
    assert "Laplace floor" in out.with_suffix(".md").read_text()
