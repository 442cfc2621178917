"""deploy/kubernetes/*.yaml and docker/compose.fleet.yaml: how a fleet is run.

Every Kubernetes object is checked against the Kubernetes API's own schema (the model classes of
the official ``kubernetes`` client: no unknown field at any depth, every value of its declared
type, every required field present), then against the service: probes hit routes the app serves
on the port it listens on, the drain sequence fits the grace period, selectors select the pods,
every ``ADRANK_*`` variable is one the settings accept, and the replicas reach Redis, which fsyncs
every write.  The compose fleet gets the same service-level checks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
FLEET = REPO / "docker" / "compose.fleet.yaml"
UVICORN_GRACEFUL_SECONDS = 10  # adrank serve: uvicorn's timeout_graceful_shutdown


def docs() -> list[dict]:
    out = []
    for f in sorted(K8S.glob("*.yaml")):
        out += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return out


def by_kind(kind: str, name: str) -> dict:
    (doc,) = [d for d in docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


# --- the Kubernetes API schema ---------------------------------------------------------------------
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str, "date": str,
              "bytes": str}


def check_schema(value, type_name: str, where: str, errors: list) -> None:
    """``value`` (parsed YAML) against the client model ``type_name`` ("V1Deployment",
    "List[V1Container]", "Dict[str, str]", "object", ...); problems appended to ``errors``."""
    from kubernetes import client

    if type_name == "object":
        return
    if type_name in PRIMITIVES:
        ok = isinstance(value, PRIMITIVES[type_name]) and not (type_name != "bool" and isinstance(value, bool))
        if not ok:
            errors.append(f"{where}: expected {type_name}, got {value!r}")
        return
    if type_name.lower().startswith("list["):
        if not isinstance(value, list):
            errors.append(f"{where}: expected a list")
            return
        for i, v in enumerate(value):
            check_schema(v, type_name[5:-1], f"{where}[{i}]", errors)
        return
    if type_name.lower().startswith(("dict(", "dict[")):
        if not isinstance(value, dict):
            errors.append(f"{where}: expected a mapping")
            return
        inner = type_name[5:-1].split(", ", 1)[1]
        for k, v in value.items():
            check_schema(v, inner, f"{where}.{k}", errors)
        return
    cls = getattr(client, type_name)
    if not isinstance(value, dict):
        errors.append(f"{where}: expected a {type_name} mapping")
        return
    attrs = {json: attr for attr, json in cls.attribute_map.items()}
    for key, v in value.items():
        if key not in attrs:
            errors.append(f"{where}: unknown field {key!r} of {type_name}")
        else:
            check_schema(v, cls.openapi_types[attrs[key]], f"{where}.{key}", errors)
    try:  # required fields: the generated setters refuse None for them
        cls(**{attrs[k]: v for k, v in value.items() if k in attrs})
    except ValueError as exc:
        errors.append(f"{where}: {exc}")


def model_name(doc: dict) -> str:
    version = doc["apiVersion"].split("/")[-1]
    return version[0].upper() + version[1:] + doc["kind"]


def test_manifests_follow_the_kubernetes_api_schema():
    pytest.importorskip("kubernetes", reason="the Kubernetes API models (dev extra: kubernetes)")
    found = docs()
    assert {d["kind"] for d in found} >= {"Deployment", "Service", "PodDisruptionBudget", "StatefulSet"}
    for doc in found:
        errors: list = []
        check_schema(doc, model_name(doc), f"{doc['kind']}/{doc['metadata']['name']}", errors)
        assert not errors, errors


def test_the_schema_check_finds_mistakes():
    """The checker itself: a misspelt field, a wrong type and a missing required field are named."""
    pytest.importorskip("kubernetes")
    dep = by_kind("Deployment", "adrank")
    bad = yaml.safe_load(yaml.safe_dump(dep))
    container = bad["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    container["ports"][0]["containerPort"] = "8000"
    del bad["spec"]["selector"]
    errors: list = []
    check_schema(bad, "V1Deployment", "d", errors)
    text = "\n".join(errors)
    assert "unknown field 'paht'" in text and "containerPort: expected int" in text and "selector" in text


# --- the service's side ----------------------------------------------------------------------------
def app_paths() -> set[str]:
    from service.catalog.routes import router as catalog
    from service.routes import admin_router, router

    return {r.path for rt in (router, admin_router, catalog) for r in rt.routes}


def env_of(container: dict) -> dict:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def serve_port(argv: list[str]) -> int:
    assert argv[:2] == ["adrank", "serve"] and argv[argv.index("--host") + 1] == "0.0.0.0"
    return int(argv[argv.index("--port") + 1])


def test_deployment_probes_drain_resources_and_selectors():
    dep, svc, pdb = by_kind("Deployment", "adrank"), by_kind("Service", "adrank"), \
        by_kind("PodDisruptionBudget", "adrank")
    pod = dep["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    port = serve_port(c["args"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == port
    paths = app_paths()
    for probe, path in (("readinessProbe", "/readyz"), ("startupProbe", "/readyz"), ("livenessProbe", "/livez")):
        get = c[probe]["httpGet"]
        assert get["path"] == path and get["path"] in paths and get["port"] in ("http", port)
    assert pod["metadata"]["annotations"]["prometheus.io/path"] in paths
    # drain: preStop sleep, then SIGTERM -> readyz 503 for ADRANK_DRAIN_SECONDS, then in-flight requests
    sleep = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    drain = float(env_of(c).get("ADRANK_DRAIN_SECONDS", 0))
    assert pod["spec"]["terminationGracePeriodSeconds"] > float(sleep[1]) + drain + UVICORN_GRACEFUL_SECONDS
    req = c["resources"]["requests"]
    assert req.get("cpu") and req.get("memory") and c["resources"]["limits"].get("memory")
    labels = pod["metadata"]["labels"]
    for selector in (svc["spec"]["selector"], dep["spec"]["selector"]["matchLabels"], pdb["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] in ("http", port)
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert pdb["spec"]["maxUnavailable"] < dep["spec"]["replicas"]
    assert c["securityContext"]["readOnlyRootFilesystem"] and pod["spec"]["securityContext"]["runAsNonRoot"]
    writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
    assert "/var/lib/adrank" in writable and c["args"][c["args"].index("--run-dir") + 1].startswith("/var/lib/adrank")
    # one admin token for every replica, from a Secret (each would otherwise generate its own)
    token = next(e for e in c["env"] if e["name"] == "ADRANK_ADMIN_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "adrank-admin", "key": "token"}


def test_the_replicas_share_a_redis_log_that_fsyncs_every_write():
    (c,) = by_kind("Deployment", "adrank")["spec"]["template"]["spec"]["containers"]
    env = env_of(c)
    settings = Settings.from_env(env)  # every value is one the service accepts
    assert settings.models and settings.log_url.startswith("redis://")
    host, port = settings.log_url.split("//")[1].split("/")[0].split(":")
    redis_svc = by_kind("Service", host)
    assert int(port) == redis_svc["spec"]["ports"][0]["port"]
    sts = by_kind("StatefulSet", host)
    assert redis_svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    (r,) = sts["spec"]["template"]["spec"]["containers"]
    assert_fsync_always(r["args"])
    assert {m["mountPath"] for m in r["volumeMounts"]} >= {r["args"][r["args"].index("--dir") + 1]}


def assert_fsync_always(argv: list[str]) -> None:
    assert argv[argv.index("--appendonly") + 1] == "yes" and argv[argv.index("--appendfsync") + 1] == "always"


def test_compose_fleet_runs_two_replicas_on_one_redis():
    fleet = yaml.safe_load(FLEET.read_text())
    services = fleet["services"]
    replicas = {n: s for n, s in services.items() if n.startswith("adrank")}
    assert len(replicas) >= 2 and "redis" in services
    assert_fsync_always(services["redis"]["command"])
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    main = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())["services"]["adrank"]
    published = set()
    for name, s in replicas.items():
        settings = Settings.from_env({k: v for k, v in s["environment"].items() if v is not None})
        assert settings.log_url == "redis://redis:6379/0", name
        # one admin token for the fleet, passed through from the operator's shell (a key without a value)
        assert "ADRANK_ADMIN_TOKEN" in s["environment"] and s["environment"]["ADRANK_ADMIN_TOKEN"] is None, name
        assert s["depends_on"]["redis"]["condition"] == "service_healthy"
        assert s["image"] == main["image"] and s["build"] == main["build"]
        host_port = s["ports"][0].rsplit(":", 1)
        assert host_port[0].startswith("127.0.0.1:") and host_port[1] == "8000"
        published.add(s["ports"][0])
        src, dest, mode = s["volumes"][0].rsplit(":", 2)
        assert dest == "/models" and mode == "ro" and (FLEET.parent / src).resolve() == FLEET.parent / "models"
    assert len(published) == len(replicas)  # each replica on its own host port
    assert set(fleet["volumes"]) >= {"redis-data", "numba-cache"}
