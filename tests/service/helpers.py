"""Helpers for the service tests: real artifacts from random parameters + the naive reference.

``make_artifact`` writes a real artifact (exporter.export.export_params -> adrank.core.artifact) for
a small schema with context/item, numeric and multi-valued fields; ``reference_scores`` encodes
a request with adrank's Preprocessor and scores it with tests/naive.py (click probability for
binary targets), independently of the Ranker and its kernels.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from adrank.core.hashing import hash_tokens
from adrank.core.preprocess import Preprocessor, Vocab, numeric_token
from adrank.core.schema import Field, Schema
from tests import naive

SCHEMA = Schema("svc-test", (
    Field("C1", "categorical", "context"),
    Field("I1", "numeric", "context"),
    Field("genres", "multi", "context", max_values=3),
    Field("C14", "categorical", "item"),
    Field("C15", "categorical", "item"),
    Field("tags", "multi", "item", max_values=2),
))
ITEM_FIELDS = [f.name for f in SCHEMA.item_fields]
#: the admin token the tests' servers are given, and the header that carries it (service/admin.py)
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
#: the `adrank` command (its entry point, not `-m adrank.cli`: that would load the CLI twice)
ADRANK = [sys.executable, "-c", "import sys; from adrank.cli import main; sys.exit(main())"]


def raw_values(field: Field) -> list:
    if field.type == "numeric":
        return list(range(0, 30, 3))
    return [f"{field.name.lower()}-{j}" for j in range(8)]


def preprocessor() -> Preprocessor:
    kept = []
    for f in SCHEMA.fields:
        vals = raw_values(f)
        toks = [numeric_token(v) for v in vals] if f.type == "numeric" else [str(v) for v in vals]
        kept.append(hash_tokens(sorted(set(toks))[:-1]))  # leave one value unseen (-> rare id)
    return Preprocessor(SCHEMA, Vocab.from_kept(kept))


def random_params(kind: str, n: int, m: int, k: int = 4, rho: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    p = {"bias": np.array([rng.normal(0, 0.2)], dtype=np.float32),
         "linear": rng.normal(0, 0.2, n).astype(np.float32),
         "emb": rng.normal(0, 0.3, (n, k)).astype(np.float32)}
    if kind in ("fwfm", "pruned"):
        R = rng.normal(0, 0.5, (m, m))
        R = np.triu(R, 1)
        R = (R + R.T).astype(np.float32)
        if kind == "pruned":
            p["mask"] = naive.prune_mask(R, rho)
            R = np.where(p["mask"], R, 0).astype(np.float32)
        p["R"] = R
    if kind == "dplr":
        p["U"] = rng.normal(0, 0.5, (rho, m)).astype(np.float32)
        p["e"] = rng.normal(0, 1.0, rho).astype(np.float32)
    return p


def make_artifact(path: Path, kind: str = "dplr", seed: int = 0, rho: int = 2) -> dict:
    """Write a real artifact; returns the unfolded params (the reference's input)."""
    from exporter.export import export_params

    pre = preprocessor()
    params = random_params(kind, pre.vocab.n_features, SCHEMA.m, rho=rho, seed=seed)
    config = {"kind": kind, "rank": rho if kind in ("dplr", "pruned") else None}
    export_params(params, config, pre, path)
    return params


def random_request(rng: np.random.Generator, n_ads: int = 5, positional: bool = False) -> dict:
    def value(f: Field):
        vals = raw_values(f) + [None]
        if f.type == "multi":
            return [vals[i] for i in rng.choice(len(vals) - 1, rng.integers(0, 4))]
        return vals[rng.integers(len(vals))]

    ctx = {f.name: value(f) for f in SCHEMA.context_fields if rng.random() < 0.9}
    ads = []
    for i in range(n_ads):
        feats = {f.name: value(f) for f in SCHEMA.item_fields if rng.random() < 0.9}
        if positional:
            ads.append({"id": f"ad-{i}", "values": [feats.get(n) for n in ITEM_FIELDS]})
        else:
            ads.append({"id": f"ad-{i}", "features": feats})
    return {"context": ctx, "ads": ads}


def reference_scores(kind: str, params: dict, request: dict, target: str = "binary") -> dict[str, float]:
    """id -> score by tests/naive.py on rows encoded by adrank's Preprocessor."""
    pre = preprocessor()
    rows = []
    for ad in request["ads"]:
        feats = ad.get("features") or dict(zip(ITEM_FIELDS, ad.get("values", []), strict=False))
        rows.append({**request.get("context", {}), **feats})
    X = pre.encode_rows(rows)
    raw = naive.scores(kind, X, SCHEMA.slot_offsets, params)
    out = 1 / (1 + np.exp(-raw)) if target == "binary" else raw
    return {ad["id"]: float(s) for ad, s in zip(request["ads"], out, strict=True)}


# --- a real server in a subprocess ---------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`adrank serve ...` on loopback; waits for /readyz; always killed on exit.  Its state (the
    replication log) lives in ``state_dir``, a fresh temp dir unless given (restarts pass theirs)."""

    def __init__(self, args: list[str], env: dict, timeout: float = 90, command: list[str] = ADRANK,
                 state_dir=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._temp = None if state_dir is not None else tempfile.TemporaryDirectory(prefix="adrank-test-state-")
        self.state_dir = Path(state_dir if state_dir is not None else self._temp.name)
        env = dict(env)
        env.setdefault("ADRANK_ADMIN_TOKEN", ADMIN_TOKEN)  # admin routes always need one (service/admin.py)
        # tests share 2 busy cores: a request is shed for its queueing only where a test asks for it
        env.setdefault("ADRANK_QUEUE_BUDGET", "10")
        first = next((a.partition("=")[2] or a for a in args if a.endswith(".adrk")), None)
        if first and "ADRANK_MODEL_DIR" not in env:  # reloads may read beside the first artifact
            env["ADRANK_MODEL_DIR"] = str(Path(first).resolve().parent)
        self.proc = subprocess.Popen(
            [*command, "serve", *args, "--port", str(self.port), "--no-access-log", "--state-dir",
             str(self.state_dir), "--log-level", "warning"], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("server not ready in time")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        out = self.proc.stdout.read() if self.proc.stdout else ""
        if self._temp is not None:
            self._temp.cleanup()
        return out

    def kill(self) -> None:
        """kill -9 of the server and its workers (its own process group)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# --- loader: the real Ranker (service/ranker.py) -------------------------------------------
def ranker_loader():
    """``loader(path, name)`` for create_app: the real Ranker (service/ranker.py)."""
    from service.ranker import Ranker

    return lambda path, name: Ranker.load(path, name=name)


def use_fastpath(client, monkeypatch, on: bool) -> None:
    """The served app's ``fastpath`` setting (ADRANK_FASTPATH), switched between two requests."""
    svc = client.app.state.svc
    monkeypatch.setattr(svc, "settings", dataclasses.replace(svc.settings, fastpath=on))
