"""Wrong turns a newcomer took, each a clear one-line message (exit code 2) or a working command:
a busy port before any model work, a training run passed to `adrank serve`, a damaged artifact,
an artifact passed to `adrank export`; and what start-up says while it works."""

from __future__ import annotations

import json
import logging
import os
import shlex
import socket
import subprocess
import time

import numba
import numpy as np
import pytest

from adrank.cli.default_model import SHIPPED
from adrank.core.artifact import read_artifact
from tests.service.helpers import ADRANK, make_artifact


def adrank(*args, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([*ADRANK, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def one_error_line(r: subprocess.CompletedProcess, command: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith(f"adrank {command}: error: "), lines[0]
    return lines[0]


def test_busy_port_is_one_line_before_any_model_work():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        t0 = time.monotonic()
        r = adrank("serve", "--port", str(port), timeout=60)
        took = time.monotonic() - t0
    line = one_error_line(r, "serve")
    assert f"port {port} on 127.0.0.1 is already in use" in line and "--port" in line
    assert "loading" not in r.stderr and "embedded default" not in r.stderr
    assert took < 30, took  # nothing was loaded or compiled (a cold start compiles for a minute)


def test_port_bound_by_a_starting_server_is_busy_too():
    """Linux lets two SO_REUSEADDR sockets bind one port until one listens: a server still
    warming up must be found, so the port is listened on at once."""
    with socket.socket() as starting:
        starting.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        starting.bind(("127.0.0.1", 0))
        starting.listen()
        r = adrank("serve", "--port", str(starting.getsockname()[1]), timeout=60)
    assert "already in use" in one_error_line(r, "serve")


def fake_run_dir(path):
    """The files `adrank train --out RUN` writes (training/checkpoint.py); their contents are not read."""
    path.mkdir(parents=True)
    for name in ("model.pt", "vocab.npz"):
        (path / name).write_bytes(b"")
    for name in ("config.json", "preprocess.json", "metrics.json"):
        (path / name).write_text("{}")
    return path


def test_serve_a_training_run_shows_the_export_command(tmp_path):
    run = fake_run_dir(tmp_path / "runs" / "criteo-dplr2")
    for arg in (str(run), f"dplr={run}"):
        line = one_error_line(adrank("serve", arg, "--port", "0"), "serve")
        assert f"{run} is a training run directory, not an artifact" in line
        assert f"adrank export {run} --out criteo-dplr2.adrk" in line
    assert "is a directory, not an artifact" in one_error_line(adrank("serve", str(tmp_path), "--port", "0"), "serve")


def test_the_export_command_shown_for_a_run_works_verbatim(tmp_path):
    torch = pytest.importorskip("torch")
    from adrank.core.preprocess import Preprocessor, Vocab
    from tests.service.helpers import SCHEMA
    from training.checkpoint import save
    from training.models import build

    pre = Preprocessor(SCHEMA, Vocab.from_kept([np.arange(1, 4, dtype=np.uint64)] * SCHEMA.m))
    torch.manual_seed(0)
    run = save(tmp_path / "runs" / "toy", build("dplr", SCHEMA, pre.vocab.n_features, 4, rank=2).eval(),
               {"seed": 0}, pre, {"model": "dplr"})
    line = one_error_line(adrank("serve", "runs/toy", "--port", "0", cwd=tmp_path), "serve")
    export = line[line.index("adrank export"):line.index(" && ")]
    assert export == "adrank export runs/toy --out toy.adrk"
    r = adrank(*shlex.split(export)[1:], "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert read_artifact(tmp_path / "toy.adrk").kind == "dplr" and run.is_dir()


def test_bit_flipped_artifact_at_serve_is_one_line_naming_the_error(tmp_path):
    raw = bytearray((SHIPPED / "dplr.adrk").read_bytes())
    raw[-100] ^= 0x04  # one bit of the data region: the header checks still pass
    bad = tmp_path / "flipped.adrk"
    bad.write_bytes(bytes(raw))
    line = one_error_line(adrank("serve", str(bad), "--port", "0"), "serve")
    assert "[checksum_mismatch]" in line and str(bad) in line


def test_export_of_an_artifact_says_it_is_one(tmp_path):
    make_artifact(tmp_path / "x.adrk")
    line = one_error_line(adrank("export", str(tmp_path / "x.adrk"), "--out", str(tmp_path / "y.adrk")), "export")
    assert "x.adrk is already an artifact (kind dplr, version " in line and "adrank serve" in line
    assert not (tmp_path / "y.adrk").exists()
    (tmp_path / "notes.txt").write_text("hello")
    line = one_error_line(adrank("export", str(tmp_path / "notes.txt"), "--out", str(tmp_path / "y.adrk")), "export")
    assert "is a file, not a training run directory" in line


# --- what start-up says -------------------------------------------------------------------------
def test_warming_logs_each_compilation_and_the_total(caplog):
    from service import warmup

    @numba.njit  # a fresh function: compiled here, never from a cache
    def twice(x):
        return 2 * x

    with caplog.at_level(logging.INFO, logger="adrank.startup"), warmup.warming("m"):
        twice(3)
    text = caplog.text
    assert "m: warming kernels" in text and "test_warming_logs_each_compilation_and_the_total.twice in" in text
    assert "m: kernels ready in" in text and "(1 compiled, now in the cache)" in text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="adrank.startup"), warmup.warming("m"):
        twice(4)  # already compiled
    assert "(nothing to compile: all cached)" in caplog.text and "m: compiled" not in caplog.text


def test_start_up_says_what_it_loads_and_warms(tmp_path):
    from tests.service.helpers import Server

    with Server([], {**os.environ, "ADRANK_MODELS": ""}) as srv:
        log = srv.stop()
    for name in ("dplr", "pruned"):
        version = json.loads((SHIPPED / "default.json").read_text())["models"][name]["version"]
        assert f"{name}: loading {SHIPPED / (name + '.adrk')}" in log and "checking the SHA-256" in log
        assert f"{name}: version {version}" in log and f"{name}: kernels ready in" in log
    assert log.index("dplr: loading") < log.index("dplr: kernels ready") < log.index("ready: dplr=")
