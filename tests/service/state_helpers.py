"""Helpers for the state tests: a real redis-server on loopback in a temp dir."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``redis-server`` on a free loopback port with ``appendonly yes`` + ``appendfsync always``
    (every acknowledged write fsync'd), data in ``directory``; ``restart()`` keeps the data."""

    def __init__(self, directory: Path):
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server not installed (Debian package redis-server)")
        self.exe, self.dir, self.port = exe, Path(directory), _free_port()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "yes", "--daemonize", "no",
             "--logfile", str(self.dir / "redis.log")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def synthetic_artifact(path: Path, kind: str = "dplr", schema=None, values_per_field: int = 20, seed: int = 0,
                       **kw):
    """Write a real artifact of exporter.synthetic's random model; returns the SyntheticModel."""
    from adrank.core.artifact import FORMAT_NAME, write_artifact
    from exporter.synthetic import make_schema, synthetic_model

    sm = synthetic_model(kind, schema or make_schema(), values_per_field=values_per_field, seed=seed, **kw)
    manifest, arrays = sm.artifact_parts()
    write_artifact(path, {**manifest, "format": FORMAT_NAME}, arrays)
    return sm
