"""`adrank loadtest compare` after `scripts/run`: Locust missing said up front, the user's own
traffic (request bodies, raw data rows), a running server (--port), logs kept when a run fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from adrank.cli.default_model import PARAMS, SHIPPED, shipped
from loadtest import compare as C
from loadtest.traffic import TrafficError, build_pool, requests_pool, rows_pool
from service.ranker import Ranker
from tests.service.helpers import ADRANK, Server

EXAMPLE = json.loads((SHIPPED / "default.json").read_text())["example"]
FIELDS = {f["name"]: f["role"] for f in Ranker.load(SHIPPED / "dplr.adrk").info()["fields"]}

# `adrank` with Locust hidden, as after scripts/run (the serving extra only)
WITHOUT_LOCUST = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "locust":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Hide())
from adrank.cli import main
sys.exit(main(sys.argv[1:]))
"""


def bodies_file(path, n=6):
    with open(path, "w") as fh:
        for i in range(n):
            body = {**EXAMPLE, "ads": EXAMPLE["ads"][: 1 + i % 3]}  # "model": "dplr" is in the example
            fh.write(json.dumps(body) + "\n")
    return path


def test_locust_missing_is_said_up_front():
    r = subprocess.run([sys.executable, "-c", WITHOUT_LOCUST, "loadtest", "compare", "--port", "8000", "--models",
                        "dplr", "pruned"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Locust (the load generator) is not installed" in r.stderr and ".[loadtest]" in r.stderr


def test_request_bodies_become_the_pool_without_their_model(tmp_path):
    pool = tmp_path / "pool.jsonl"
    stats = requests_pool(bodies_file(tmp_path / "bodies.jsonl"), pool, fields=FIELDS)
    lines = [json.loads(line) for line in pool.read_text().splitlines()]
    assert len(lines) == stats["requests"] == 6 and stats["candidates_max"] == 3
    assert all("model" not in b and b["context"] == EXAMPLE["context"] for b in lines)
    assert requests_pool(tmp_path / "bodies.jsonl", pool, limit=2)["requests"] == 2
    (tmp_path / "bad.jsonl").write_text(json.dumps(EXAMPLE) + "\n{not json\n")
    with pytest.raises(TrafficError, match="bad.jsonl line 2: not JSON"):
        requests_pool(tmp_path / "bad.jsonl", pool)
    (tmp_path / "alien.jsonl").write_text(json.dumps({"context": {"C1": "x"}, "ads": [{"id": "a"}]}) + "\n")
    with pytest.raises(TrafficError, match="fields C1 are not the model's"):
        requests_pool(tmp_path / "alien.jsonl", pool, fields=FIELDS)


def test_raw_rows_become_requests_the_model_ranks(tmp_path):
    from training.generate import generate

    p = PARAMS  # the default models' data-set shape, 300 rows of it
    generate(tmp_path / "data", rows=300, seed=5, fields=p["fields"], context_fields=p["context_fields"],
             vocab=p["vocab"], embed_dim=p["embed_dim"], progress=False)
    pool = tmp_path / "pool.jsonl"
    stats = rows_pool(tmp_path / "data", "synthetic", pool, 20, FIELDS, seed=1, median=10, max_candidates=40)
    bodies = [json.loads(line) for line in pool.read_text().splitlines()]
    assert stats["requests"] == len(bodies) == 20 and 1 <= stats["candidates_max"] <= 40
    context = {f for f, role in FIELDS.items() if role == "context"}
    ranker = Ranker.load(SHIPPED / "dplr.adrk")
    for body in bodies:
        assert set(body["context"]) == context
        assert all(set(ad["features"]) == set(FIELDS) - context for ad in body["ads"])
        assert len(ranker.rank(body["context"], body["ads"])) == len(body["ads"])
    with pytest.raises(TrafficError, match="has no fields C1"):
        rows_pool(tmp_path / "data", "synthetic", pool, 2, {"C1": "context"})


def test_no_traffic_is_named_unless_the_models_are_the_defaults(tmp_path):
    args = (None, None, None, None, "inline", 5, 10, 0, 10, 1.0, 50)
    alien = [("dplr", None, {"version": "not-a-default", "fields": []})]
    with pytest.raises(TrafficError, match="no traffic given: pass --requests"):
        build_pool(tmp_path, tmp_path / "pool", tmp_path / "ads", alien, *args, None, False)
    versions = shipped()["versions"]
    defaults = {"versions": set(versions.values()), "params": {**PARAMS, "rows": 2000}}  # a smaller rebuild
    with pytest.raises(TrafficError, match="no traffic given"):
        build_pool(tmp_path, tmp_path / "pool", tmp_path / "ads", alien, *args, defaults, False)
    served = [(name, None, {"version": v, "fields": []}) for name, v in versions.items()]
    stats, source = build_pool(tmp_path, tmp_path / "pool", tmp_path / "ads", served, *args, defaults, False)
    assert stats["requests"] == 5 and "the embedded default models' data set" in source
    ranker = Ranker.load(SHIPPED / "dplr.adrk")
    for line in (tmp_path / "pool").read_text().splitlines():
        body = json.loads(line)
        assert set(body["context"]) <= set(FIELDS) and len(ranker.rank(body["context"], body["ads"])) == len(body["ads"])


def test_a_failed_locust_run_keeps_the_log_it_names(tmp_path, monkeypatch):
    broken = tmp_path / "locustfile.py"
    broken.write_text("raise SystemExit('the locustfile failed on purpose')\n")
    monkeypatch.setattr(C, "LOCUSTFILE", broken)
    env = {k: v for k, v in os.environ.items() if k != "ADRANK_MODELS"}
    with Server([], env) as srv:
        with pytest.raises(C.LoadTestError) as err:
            C.compare(["dplr", "pruned"], None, tmp_path / "out", port=srv.port, requests=bodies_file(
                tmp_path / "b.jsonl"), rps=4, duration=1, warmup=1, repeats=1, progress=False)
    message = str(err.value)
    assert "the locustfile failed on purpose" in message
    log = message.rsplit("the whole log: ", 1)[1]
    assert os.path.isfile(log) and "failed on purpose" in open(log).read()


@pytest.mark.slow
def test_compare_against_a_running_server_with_own_traffic(tmp_path):
    """What a newcomer types after scripts/run, with their own request bodies."""
    env = {k: v for k, v in os.environ.items() if k != "ADRANK_MODELS"}
    with Server([], env) as srv:
        r = subprocess.run([*ADRANK, "loadtest", "compare", "--port", str(srv.port), "--models", "dplr", "pruned",
                            "--requests", str(bodies_file(tmp_path / "b.jsonl")), "--rps", "10", "--duration", "6",
                            "--warmup", "1", "--repeats", "1", "--out", str(tmp_path), "--name", "own", "--quiet"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert srv.proc.poll() is None  # measured, not stopped
    result = json.loads((tmp_path / "loadtest-own.json").read_text())
    assert result["settings"]["server"] == f"running on 127.0.0.1:{srv.port}"
    assert result["settings"]["pool"]["requests"] == 6 and "--requests" in result["command"]
    assert [r["model"] for r in result["runs"]] == ["dplr", "pruned"]
    for m in result["summary"]:
        assert m["requests"] > 5 and m["error_rate"] == 0 and m["server_requests"] >= m["requests"]
    text = (tmp_path / "loadtest-own.md").read_text()
    assert "the request bodies of" in text and "as recorded" in text and "(its own workers and settings)" in text
