"""Load-test pieces: the auction generator against the real app, histogram arithmetic, and a
slow end-to-end `adrank loadtest compare` on loopback (a few seconds per model)."""

from __future__ import annotations

import gzip
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from adrank.cli import main
from adrank.core.artifact import load_preprocessor, read_artifact
from adrank.core.preprocess import MISSING, RARE
from loadtest.auctions import (
    AuctionGenerator,
    load_values,
    values_from_data,
    with_model,
    write_catalog,
    write_pool,
)
from loadtest.compare import (
    LoadTestError,
    cpu_breakdown,
    cpu_breakdown_catalog,
    histogram_delta,
    histogram_quantile,
    histograms,
    round_order,
    split_cpus,
)
from loadtest.models import build_models
from service.app import create_app
from service.metrics import LATENCY_BUCKETS
from service.settings import ModelSpec, Settings
from tests.service.helpers import ranker_loader


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = tmp_path_factory.mktemp("lt-models")
    return build_models(out, ranks=(1,), embed_dim=4, values_per_field=60, seed=3)


def test_generated_requests_are_accepted_by_the_service(models, tmp_path):
    gen = AuctionGenerator(load_values(models["values"]), seed=1, median=20, sigma=1.0, max_candidates=300)
    pool = tmp_path / "pool.jsonl"
    stats = write_pool(gen, pool, 25)
    assert stats["requests"] == 25 and 1 <= stats["candidates_max"] <= 300
    settings = Settings(models=(ModelSpec("dplr-1", Path(models["dplr-1"])),
                                ModelSpec("pruned-1", Path(models["pruned-1"]))), gc_freeze=False,
                        queue_budget=60.0)  # every request answered, however busy the machine (no shedding)
    with TestClient(create_app(settings, loader=ranker_loader())) as client:
        for line in pool.read_bytes().splitlines():
            sent = json.loads(line)
            for model in ("dplr-1", "pruned-1"):
                r = client.post("/v1/rank", content=with_model(line, model),
                                headers={"content-type": "application/json"})
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["model"] == model
                assert sorted(a["id"] for a in body["ads"]) == sorted(a["id"] for a in sent["ads"])


def test_catalog_traffic_ranks_the_catalog_ads_as_if_sent_inline(models, tmp_path):
    gen = AuctionGenerator(load_values(models["values"]), seed=4, median=15, sigma=1.0, max_candidates=60)
    ads, pool = tmp_path / "ads.jsonl", tmp_path / "pool.jsonl"
    write_catalog(gen, ads, 80)
    catalog = {a["id"]: a["features"] for a in map(json.loads, ads.read_text().splitlines())}
    item_fields = {f["name"] for f in load_values(models["values"])["schema"]["fields"] if f["role"] == "item"}
    assert list(catalog) == [f"ad-{i}" for i in range(80)]
    assert all(set(f) == item_fields for f in catalog.values())
    write_pool(gen, pool, 10, catalog_size=80)
    sent = [json.loads(line) for line in pool.read_bytes().splitlines()]
    for q in sent:
        ids = [a["id"] for a in q["ads"]]
        assert all(a.keys() == {"id"} for a in q["ads"]) and len(set(ids)) == len(ids) and set(ids) <= set(catalog)
    settings = Settings(models=(ModelSpec("dplr-1", Path(models["dplr-1"])),), gc_freeze=False, catalog=ads)
    with TestClient(create_app(settings, loader=ranker_loader())) as client:
        for line, q in zip(pool.read_bytes().splitlines(), sent, strict=True):
            by_id = client.post("/v1/rank", content=with_model(line, "dplr-1"),
                                headers={"content-type": "application/json"})
            inline = client.post("/v1/rank", json={"model": "dplr-1", "context": q["context"], "ads": [
                {"id": a["id"], "features": catalog[a["id"]]} for a in q["ads"]]})
            assert by_id.status_code == 200 and inline.status_code == 200, (by_id.text, inline.text)
            got = {a["id"]: a["score"] for a in by_id.json()["ads"]}
            want = {a["id"]: a["score"] for a in inline.json()["ads"]}
            assert got.keys() == want.keys()
            np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-5, atol=1e-6)
    cpu = cpu_breakdown_catalog({"dplr-1": models["dplr-1"], "pruned-1": models["pruned-1"]}, pool, ads)
    assert all(cpu[n]["cpu_catalog_ms"] > 0 and cpu[n]["cpu_catalog_p50_ms"] > 0 for n in ("dplr-1", "pruned-1"))


def test_cpu_placement_and_round_order():
    usable = sorted(os.sched_getaffinity(0))
    placement = split_cpus("auto")
    if len(usable) < 2:
        assert placement is None
    else:
        server, client = placement
        assert server and client and not server & client and server | client == set(usable)
        assert split_cpus(f"{usable[1]}/{usable[0]}") == (frozenset({usable[1]}), frozenset({usable[0]}))
    assert split_cpus("none") is None
    for bad in ("1", "a/b", "999/0", "/0"):
        with pytest.raises(LoadTestError, match="--pin"):
            split_cpus(bad)
    names = ["a", "b", "c"]
    assert [round_order(names, r) for r in range(4)] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"],
                                                         ["a", "b", "c"]]


def test_values_encode_as_kept_unseen_as_rare_and_nulls_as_missing(models):
    art = read_artifact(models["dplr-1"])
    pre = load_preprocessor(art)
    doc = load_values(models["values"])
    gen = AuctionGenerator(doc, seed=2, median=3000, sigma=0.0, max_candidates=3000, unseen=0.05, missing=0.02)
    req = gen.request()
    assert len(req["ads"]) == 3000
    rows = [{**req["context"], **ad["features"]} for ad in req["ads"]]
    X = pre.encode_rows(rows)
    offs = pre.vocab.id_offsets
    for f, fld in enumerate(pre.schema.fields):
        if fld.role != "item":
            continue
        ids = X[:, f] - offs[f]
        raw = [ad["features"][fld.name] for ad in req["ads"]]
        known = set(doc["values"][fld.name])
        expect = np.array([MISSING if v is None else (RARE if v not in known else -1) for v in raw])
        assert np.array_equal(ids[expect == MISSING], np.full((expect == MISSING).sum(), MISSING))
        assert np.array_equal(ids[expect == RARE], np.full((expect == RARE).sum(), RARE))
        if fld.type == "categorical":  # numeric values share bins; categorical ones are all kept
            assert np.all(ids[expect == -1] >= 2)
        assert 0.02 < (expect == RARE).mean() < 0.09 and 0.003 < (expect == MISSING).mean() < 0.05


def test_candidate_counts_have_a_long_tail(models):
    gen = AuctionGenerator(load_values(models["values"]), seed=0, median=100, sigma=1.0, max_candidates=10_000)
    n = np.array([gen.n_candidates() for _ in range(4000)])
    assert 80 < np.median(n) < 125
    assert np.percentile(n, 99) > 5 * np.median(n)  # log-normal sigma=1: P99 ~ 10x the median
    assert n.min() >= 1 and n.max() <= 10_000


def test_zipf_popularity_and_values_from_generated_data(tmp_path):
    schema = {"name": "g", "target": "binary", "label": "label", "meta": {},
              "fields": [{"name": "f0", "type": "categorical", "role": "context", "max_values": 1},
                         {"name": "f1", "type": "multi", "role": "item", "max_values": 2}]}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    lines = ["label\tf0\tf1"] + ["0\ta\tx|y"] * 5 + ["1\tb\ty"] * 3 + ["0\t\tz"] * 1
    with gzip.open(tmp_path / "data.tsv.gz", "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    doc = values_from_data(tmp_path)
    assert doc["values"] == {"f0": ["a", "b"], "f1": ["y", "x", "z"]}
    gen = AuctionGenerator(load_values(tmp_path), seed=0, median=5000, sigma=0, max_candidates=5000,
                           unseen=0, missing=0)
    col = gen.column(schema["fields"][0], 5000)
    share_a = col.count("a") / len(col)  # Zipf(1.1) over 2 values: 1 / (1 + 2^-1.1) = 0.68
    assert 0.64 < share_a < 0.72
    multi = gen.column(schema["fields"][1], 200)
    assert all(isinstance(v, list) and 1 <= len(v) <= 2 and len(set(v)) == len(v) for v in multi)


def test_with_model_prefixes_the_body():
    body = json.dumps({"context": {"a": 1}, "ads": [{"id": "x"}]}).encode()
    assert json.loads(with_model(body, 'm"1')) == {"model": 'm"1', "context": {"a": 1}, "ads": [{"id": "x"}]}


def test_histogram_quantile_interpolates_like_promql():
    assert histogram_quantile(0.5, {1.0: 2, 2.0: 6, float("inf"): 6}) == pytest.approx(1.25)
    assert histogram_quantile(0.99, {1.0: 0, float("inf"): 0}) is None
    assert histogram_quantile(0.99, {1.0: 1, float("inf"): 10}) == 1.0  # rank in +Inf: the last finite bound


def test_histograms_from_exposition_and_deltas():
    reg = CollectorRegistry()
    h = Histogram("adrank_request_duration_seconds", "t", ["endpoint", "model"], buckets=LATENCY_BUCKETS,
                  registry=reg)
    rng = np.random.default_rng(0)
    first = rng.lognormal(np.log(0.002), 0.5, 500)
    for x in first:
        h.labels("/v1/rank", "a").observe(x)
    h.labels("/v1/other", "a").observe(0.5)
    h.labels("/v1/rank", "b").observe(0.9)
    before = histograms(generate_latest(reg).decode(), "adrank_request_duration_seconds", "a")
    second = rng.lognormal(np.log(0.004), 0.5, 1000)
    for x in second:
        h.labels("/v1/rank", "a").observe(x)
    after = histograms(generate_latest(reg).decode(), "adrank_request_duration_seconds", "a")
    delta = histogram_delta(before, after)
    assert delta[float("inf")] == 1000  # the other endpoint and model are not counted
    edges = [0.0, *LATENCY_BUCKETS]
    for q in (0.5, 0.95, 0.99):
        est = histogram_quantile(q, delta)
        exact = float(np.quantile(second, q))
        b = np.searchsorted(edges, exact)  # the bucket (edges[b-1], edges[b]] holding the exact quantile
        assert edges[b - 1] <= est <= edges[b]


def test_cpu_breakdown_times_generic_and_fast_paths(models, tmp_path):
    gen = AuctionGenerator(load_values(models["values"]), seed=2, median=20, sigma=1.0, max_candidates=200)
    pool = tmp_path / "pool.jsonl"
    write_pool(gen, pool, 12)
    cpu = cpu_breakdown(models["dplr-1"], pool)
    for key in ("cpu_encode_ms", "cpu_score_ms", "cpu_rank_ms", "cpu_fast_scan_ms", "cpu_fast_ms"):
        assert cpu[key] > 0, key  # the generated requests all take service.fastpath


def test_compare_rejects_bad_arguments(models, capsys):
    assert main(["loadtest", "compare", "--models", models["dplr-1"]]) == 2
    assert "--models needs at least two artifacts" in capsys.readouterr().err
    assert main(["loadtest", "compare", "--models", models["dplr-1"], "/nonexistent.adrk", "--rps", "0"]) == 2
    err = capsys.readouterr().err
    assert "artifact /nonexistent.adrk does not exist" in err and "--rps must be >= 0.1" in err


@pytest.mark.slow
def test_compare_end_to_end_on_loopback(models, tmp_path):
    out = tmp_path / "out"
    code = main(["loadtest", "compare", "--models", f"d1={models['dplr-1']}", f"p1={models['pruned-1']}",
                 "--rps", "8", "--duration", "6", "--warmup", "1", "--repeats", "1", "--pool", "20",
                 "--candidates", "20", "--out", str(out), "--name", "tiny", "--quiet"])
    assert code == 0
    result = json.loads((out / "loadtest-tiny.json").read_text())
    assert [r["model"] for r in result["runs"]] == ["d1", "p1"]
    for m in result["summary"]:
        assert m["requests"] > 5 and m["error_rate"] == 0
        assert m["server_requests"] >= m["requests"]  # every client request reached the histogram
        assert m["client_p50_ms"] <= m["client_p99_ms"] and m["server_p99_ms"] is not None
        assert m["cpu_encode_ms"] > 0 and m["cpu_score_ms"] > 0 and m["cpu_rank_ms"] > 0
    text = (out / "loadtest-tiny.md").read_text()
    assert "| d1 |" in text and "| p1 |" in text and "adrank loadtest compare" in text and "In process" in text
    assert all(m["cpu_fast_ms"] > 0 for m in result["summary"]) and "fast path whole" in text
    assert (out / "loadtest-tiny.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_compare_catalog_traffic_with_an_aa_control(models, tmp_path):
    out = tmp_path / "out"
    code = main(["loadtest", "compare", "--models", f"d1={models['dplr-1']}", f"p1={models['pruned-1']}",
                 "--traffic", "catalog", "--catalog-ads", "500", "--control", "d1", "--rps", "8", "--duration",
                 "6", "--warmup", "1", "--repeats", "2", "--pool", "20", "--candidates", "20", "--out", str(out),
                 "--name", "cat", "--quiet"])
    assert code == 0
    result = json.loads((out / "loadtest-cat.json").read_text())
    assert [r["model"] for r in result["runs"]] == ["d1", "p1", "d1-again", "p1", "d1-again", "d1"]
    for m in result["summary"]:
        assert m["requests"] > 5 and m["error_rate"] == 0 and m["server_requests"] >= m["requests"]
        assert m["cpu_catalog_ms"] > 0
    text = (out / "loadtest-cat.md").read_text()
    assert "server-side catalog of 500 generated ads" in text and "--traffic catalog" in text
    assert "| d1-again vs d1 (A/A control) |" in text


def test_compare_rejects_a_control_that_is_not_a_model(models, capsys):
    assert main(["loadtest", "compare", "--models", models["dplr-1"], models["pruned-1"], "--control", "x",
                 "--out", "/nonexistent-never-written"]) == 2
    assert "--control 'x' is not one of the models" in capsys.readouterr().err


def test_per_round_counts_rounds_where_dplr_is_lower():
    from loadtest.report import _per_round

    runs = [{"repeat": r, "model": m, "server_p99_ms": v}
            for r, (d, p) in enumerate([(8.0, 10.0), (9.0, 6.0), (5.0, 5.5)])
            for m, v in (("dplr-2", d), ("pruned-2", p))]
    assert _per_round(runs, {"model": "dplr-2"}, {"model": "pruned-2"}) == "2 of 3, 0.80-1.50"
    assert _per_round([], {"model": "dplr-2"}, {"model": "pruned-2"}) == "-"


@pytest.mark.parametrize("kind", ["poisson", "uniform"])
def test_arrival_schedules_merge_into_one_stream_at_the_offered_rate(kind):
    from loadtest.arrivals import Schedule

    rps, users, horizon = 50.0, 7, 400.0
    times = []
    for i in range(users):
        s = Schedule(kind, rps, users, i, seed=1)
        while s.t < horizon:
            times.append(s.t)
            s.next()
    gaps = np.diff(np.sort(times))
    assert len(times) == pytest.approx(rps * horizon, rel=0.03)
    assert gaps.mean() == pytest.approx(1 / rps, rel=0.03)
    if kind == "uniform":  # an evenly spaced comb: never two arrivals closer than 1 / rps
        np.testing.assert_allclose(gaps, 1 / rps, rtol=1e-6)
    else:  # exponential gaps: coefficient of variation 1, P(gap < mean / 10) = 1 - e^-0.1
        assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)
        assert (gaps < 0.1 / rps).mean() == pytest.approx(1 - np.exp(-0.1), abs=0.01)
    late = Schedule(kind, rps, users, 3, seed=1)
    assert late.skip_to(10.0) >= 10.0 and late.t - 10.0 < (users / rps if kind == "uniform" else 5.0)
    with pytest.raises(ValueError, match="arrivals must be one of"):
        Schedule("bursty", rps, users, 0)


def test_the_locust_side_imports_without_the_adrank_packages(tmp_path):
    """The locustfile and the modules it imports run in the Locust image (docker/locust.Dockerfile:
    locust, msgspec, numpy, tqdm and the mounted loadtest/ only): they must not import adrank,
    service, training, exporter or torch.  Its pool writer still replaces files whole."""
    import subprocess

    code = r"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("adrank", "service", "training", "exporter", "torch"):
            raise ImportError(f"the Locust image has no {name}")
sys.meta_path.insert(0, Block())
import loadtest.locustfile
from loadtest.auctions import open_replacing
out = sys.argv[1]
with open_replacing(out, "w") as fh:
    fh.write("start_unix,seconds,status,candidates\n")
try:
    with open_replacing(out, "w") as fh:
        fh.write("half")
        raise RuntimeError("stop")
except RuntimeError:
    pass
print(open(out).read().strip())
"""
    out = tmp_path / "timings.csv"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "ADRANK_LT_ARRIVALS": "poisson"}
    res = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, env=env, timeout=120,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "start_unix,seconds,status,candidates"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timings.csv"]
