"""Prometheus rules and the Grafana dashboard (docker/prometheus, docker/grafana).

- `promtool check` / `promtool test rules` run the hand-worked rule unit tests in
  docker/prometheus/*_test.yml (skipped with a message when promtool is absent); every recording
  rule is tested and every alert is shown firing.
- The dashboard JSON is validated structurally, and every PromQL expression in it may reference
  only the metrics of DESIGN.md §6 or recording rules defined in rules.yml; promtool parses each
  expression for real.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
PROM = DOCKER / "prometheus"
GRAFANA = DOCKER / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "adrank.json"

# DESIGN.md §6: the service's metric families; histograms expose _bucket/_sum/_count series.
# Plus the per-version and shadow metrics of issue 18 (README, "Versions, traffic splits and shadows").
HISTOGRAMS = ("adrank_request_duration_seconds", "adrank_model_inference_duration_seconds",
              "adrank_request_candidates", "adrank_queue_wait_seconds", "adrank_version_inference_duration_seconds",
              "adrank_shadow_score_abs_diff", "adrank_shadow_topk_overlap")
SERIES = ("adrank_requests_total", "adrank_model_info", "adrank_shed_total", "adrank_inflight_requests",
          "adrank_process_cpu_seconds", "adrank_process_resident_memory_bytes", "adrank_process_open_fds",
          "adrank_version_requests_total", "adrank_shadow_requests_total")
BUILTIN = ("up",)  # written by Prometheus itself for every target
SERVICE_METRICS = frozenset(
    [f"{h}{s}" for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")] + list(SERIES) + list(BUILTIN)
)

PROMQL_WORDS = frozenset(
    "by without on ignoring group_left group_right bool and or unless offset inf nan".split()
)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not found (Debian: apt-get install prometheus; .ci/run installs it)")
    return path


RULE_FILES = ("rules.yml", "alerts.yml")


def rules_of(kind: str) -> dict[str, str]:
    """name -> expr of every "record" or "alert" rule in docker/prometheus/{rules,alerts}.yml."""
    out = {}
    for name in RULE_FILES:
        doc = yaml.safe_load((PROM / name).read_text())
        out.update({r[kind]: r["expr"] for g in doc["groups"] for r in g["rules"] if kind in r})
    return out


def recording_rules() -> dict[str, str]:
    return rules_of("record")


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_panels(dash: dict) -> list[dict]:
    """Every panel, including those nested in collapsed rows."""
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def dashboard_exprs(dash: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target."""
    return [(f"panel {p['id']} {p['title']!r} target {t['refId']}", t["expr"])
            for p in dashboard_panels(dash) for t in p.get("targets", [])]


def substitute_variables(expr: str) -> str:
    """Grafana variables -> plain PromQL (`$__rate_interval` -> a duration, `$model` -> regex)."""
    expr = re.sub(r"\$__(rate_)?interval|\$\{__(rate_)?interval\}", "1m", expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def metric_names(expr: str) -> set[str]:
    """Metric / recording-rule names referenced by a PromQL expression.

    Removes string literals, label matchers, ranges and label lists first; what remains that looks
    like an identifier, is not a keyword and is not called like a function, is a metric name.
    """
    s = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^{}]*\}", " ", s)
    s = re.sub(r"\[[^\[\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?", s):
        name, call = m.group(1), m.group(2)
        if call or name.lower() in PROMQL_WORDS:
            continue
        names.add(name)
    return names


# --- Prometheus rules --------------------------------------------------------------------------
def test_rules_and_config_pass_promtool_check():
    tool = promtool()
    for args in (["check", "rules", *(str(PROM / f) for f in RULE_FILES)],
                 ["check", "config", str(PROM / "prometheus.yml")]):
        r = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"promtool {' '.join(args)}:\n{r.stdout}\n{r.stderr}"


@pytest.mark.parametrize("test_file", sorted(PROM.glob("*_test.yml")), ids=lambda p: p.name)
def test_promtool_rule_unit_tests(test_file):
    tool = promtool()
    r = subprocess.run([tool, "test", "rules", test_file.name], cwd=PROM, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"promtool test rules {test_file.name}:\n{r.stdout}\n{r.stderr}"


def test_rule_unit_tests_cover_every_rule():
    tested, alerted = set(), set()
    for f in PROM.glob("*_test.yml"):
        doc = yaml.safe_load(f.read_text())
        assert set(doc["rule_files"]) <= set(RULE_FILES), f"{f.name} must test docker/prometheus's rule files"
        for t in doc["tests"]:
            tested |= {e["expr"] for e in t.get("promql_expr_test", [])}
            alerted |= {a["alertname"] for a in t.get("alert_rule_test", []) if a.get("exp_alerts")}
    missing = set(recording_rules()) - tested
    assert not missing, f"recording rules without a promtool unit test: {sorted(missing)}"
    missing = set(rules_of("alert")) - alerted
    assert not missing, f"alerts never shown firing by a promtool unit test: {sorted(missing)}"


def test_rules_use_only_service_metrics_and_required_quantiles():
    rules = recording_rules()
    for name, expr in rules.items():
        unknown = metric_names(expr) - SERVICE_METRICS
        assert not unknown, f"rule {name} references unknown metrics {sorted(unknown)}"
    for name, expr in rules_of("alert").items():
        unknown = metric_names(expr) - SERVICE_METRICS - set(rules)
        assert not unknown, f"alert {name} references unknown metrics {sorted(unknown)}"
    for q in ("p50", "p95", "p99"):
        assert f"endpoint_model:adrank_request_duration_seconds:{q}" in rules
        assert f"model:adrank_model_inference_duration_seconds:{q}" in rules
    # Quantiles must aggregate buckets over instances keeping `le`, and use rate() of the buckets.
    for name, expr in rules.items():
        if "histogram_quantile" in expr:
            assert re.search(r"sum by \([^)]*\ble\b[^)]*\) \(rate\(\w+_bucket\[", expr), name


# --- Grafana -------------------------------------------------------------------------------------
def test_metric_name_extraction():
    """The extractor itself, on the shapes of expression the dashboard uses."""
    e = ('histogram_quantile(0.99, sum by (le, model) (rate(foo_bucket{model=~"$model", a="x(y)"}[5m]))) '
         '/ on (model) group_left(version) bar_total offset 5m > bool 1e3 or rec:ord:rule')
    assert metric_names(e) == {"foo_bucket", "bar_total", "rec:ord:rule"}
    assert metric_names('sum(up{job="adrank"})') == {"up"}


def test_dashboard_structure():
    dash = load_dashboard()
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    panels = dashboard_panels(dash)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids {ids}"
    ds_doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    ds_uids = {d["uid"] for d in ds_doc["datasources"]}
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and 0 <= g["x"] and g["x"] + g["w"] <= 24, f"panel {p['id']} gridPos {g}"
        cover = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cover & cells, f"panel {p['id']} {p['title']!r} overlaps another panel"
        cells |= cover
        if p["type"] != "row":
            assert p["datasource"]["uid"] in ds_uids, f"panel {p['id']} uses an unprovisioned datasource"
            assert p["targets"], f"panel {p['id']} has no query"
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs)), f"panel {p['id']} duplicate refIds"
            for t in p["targets"]:
                assert t["datasource"]["uid"] in ds_uids


def test_dashboard_exprs_reference_only_existing_metrics_and_rules():
    known = SERVICE_METRICS | set(recording_rules())
    dash = load_dashboard()
    exprs = dashboard_exprs(dash)
    for var in dash["templating"]["list"]:
        q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", q)
        assert m, f"variable {var['name']}: unexpected query {q!r}"
        exprs.append((f"variable {var['name']}", m.group(1)))
    for where, expr in exprs:
        names = metric_names(substitute_variables(expr))
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - known
        assert not unknown, f"{where}: {expr!r} references {sorted(unknown)}, neither a metric nor a rule"


def test_dashboard_variables_are_defined():
    dash = load_dashboard()
    defined = {v["name"] for v in dash["templating"]["list"]}
    for where, expr in dashboard_exprs(dash):
        used = set(re.findall(r"\$\{?(\w+)\}?", expr)) - {"__rate_interval", "__interval", "__range"}
        assert used <= defined, f"{where}: undefined variables {sorted(used - defined)}"


def test_dashboard_shows_what_operations_needs():
    exprs = " ".join(e for _, e in dashboard_exprs(load_dashboard()))
    for needed in ("endpoint_model:adrank_request_duration_seconds:p95",
                   "endpoint_model:adrank_request_duration_seconds:p99",
                   "model:adrank_model_inference_duration_seconds:p99",
                   "adrank_requests:rate1m", "endpoint_model:adrank_request_errors:ratio_rate1m",
                   "model:adrank_request_candidates:", "adrank_model_info",
                   "model_version:adrank_version_requests:rate1m",
                   "model_version:adrank_version_inference_duration_seconds:p99",
                   "model_version_shadow:adrank_shadow_topk_overlap:mean_rate1m"):
        assert needed in exprs, f"dashboard lacks a panel on {needed}"


def test_dashboard_exprs_parse_with_promtool(tmp_path):
    """promtool parses every dashboard expression (written as recording rules of a scratch file)."""
    tool = promtool()
    rules = [{"record": f"dashboard:expr_{i}", "expr": substitute_variables(e)}
             for i, (_, e) in enumerate(dashboard_exprs(load_dashboard()))]
    f = tmp_path / "dashboard_rules.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = subprocess.run([tool, "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"a dashboard expression does not parse:\n{r.stdout}\n{r.stderr}"


def test_grafana_provisioning_points_at_the_dashboard():
    doc = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "adrank.yml").read_text())
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    # The provider's path must be where compose mounts docker/grafana/dashboards.
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts
