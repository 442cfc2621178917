"""Explanations (service/explain.py) against tests/naive.py's per-pair terms, for every kind and
both embedding types: the bias and per-field values equal the oracle's split of its own pair terms
and sum to the raw score the scorers compute."""

from __future__ import annotations

import numpy as np
import pytest

from adrank.core import kinds
from exporter.synthetic import random_features, synthetic_model
from service.catalog import kernels
from service.catalog.precompute import ad_parts, context_part
from service.catalog.store import Model
from service.explain import explain
from tests import naive
from tests.service.test_catalog import SCHEMAS, VALUES, encode

RTOL, ATOL = 1e-5, 1e-5  # float32 arrays (folded linear terms) vs the float64 oracle


def check(model, params, cx, items, offsets, kind, rho):
    got = explain(model, cx, items)
    X = np.concatenate([np.repeat(cx[None, :], len(items), 0), items], axis=1)
    names = [f.name for f in model.preprocessor.schema.fields]
    plan = model.plan
    W, c = ad_parts(plan, items, model.arrays["emb"], model.arrays["linear"])
    z, const = context_part(plan, cx, model.arrays["emb"], model.arrays["linear"])
    raw = kernels.score_all(z, const, W, c)
    for n, x in enumerate(X):
        bias, fields = naive.explain(kind, x, offsets, params, rho=rho)
        assert list(got[n]["fields"]) == names
        assert got[n]["bias"] == pytest.approx(bias, rel=1e-7)
        np.testing.assert_allclose(list(got[n]["fields"].values()), fields, rtol=RTOL, atol=ATOL)
        total = got[n]["bias"] + sum(got[n]["fields"].values())
        # the oracle's parts sum to its score, and ours to the served raw score
        assert bias + fields.sum() == pytest.approx(naive.score(kind, x, offsets, params, rho=rho), rel=1e-9, abs=1e-9)
        assert total == pytest.approx(raw[n], rel=RTOL, abs=ATOL)


@pytest.mark.parametrize("kind", kinds.NAMES)
@pytest.mark.parametrize("schema", SCHEMAS.values(), ids=SCHEMAS.keys())
def test_explanations_equal_the_oracles_pair_split_for_every_kind(kind, schema):
    sm = synthetic_model(kind, schema, values_per_field=VALUES, seed=4, rho=2)
    rng = np.random.default_rng(7)
    ads = random_features(schema, range(schema.m_context, schema.m), VALUES, rng, 12)
    ctx = random_features(schema, range(schema.m_context), VALUES, rng, 1)[0]
    cx, items = encode(sm, ctx, ads)
    model = Model(kind, kind, sm.preprocessor, sm.arrays, sm.target)
    check(model, sm.naive, cx, items, schema.slot_offsets, kind, sm.rho)


def test_a_pair_term_is_split_evenly_between_its_two_fields():
    """One pair's term moves both fields' values by half of it: explain with R zeroed but one pair."""
    schema = SCHEMAS["single"]
    sm = synthetic_model("fwfm", schema, values_per_field=VALUES, seed=1)
    rng = np.random.default_rng(2)
    ads = random_features(schema, range(schema.m_context, schema.m), VALUES, rng, 3)
    cx, items = encode(sm, random_features(schema, range(schema.m_context), VALUES, rng, 1)[0], ads)
    x = np.concatenate([cx, items[0]])
    terms = naive.pair_terms("fwfm", x, schema.slot_offsets, sm.naive)
    _, fields = naive.explain("fwfm", x, schema.slot_offsets, sm.naive)
    for f in range(schema.m):
        first = naive.explain("lr", x, schema.slot_offsets, sm.naive)[1][f]
        half = sum(t for (i, j), t in terms.items() if f in (i, j)) / 2
        assert fields[f] == pytest.approx(first + half, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("kind", kinds.EMBEDDED)
def test_explanations_of_codebook_models_equal_the_oracle_on_the_decoded_table(tmp_path, kind):
    cbs = pytest.importorskip("tests.service.test_codebook_serving")
    from tests.exporter.test_export import SCHEMA, random_rows

    art, _, params, pre = cbs.model(kind, tmp_path, seed=2)
    model = Model(kind, kind, pre, art.arrays)
    assert model.arrays["emb"] is None  # decoded by the plan, as the catalog does
    X = random_rows(pre, n_rows=10, seed=5)
    cx, items = cbs.split(X)
    check(model, params, cx, items, SCHEMA.slot_offsets, kind, 2)
