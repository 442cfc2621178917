"""`adrank serve`: the FastAPI ranking service on uvicorn (one or several workers).

    adrank serve [NAME=]ARTIFACT [...] [--host H] [--port P] [--workers N]

Artifacts come from the arguments, else ``ADRANK_MODELS``, else the embedded default (small
DPLR + pruned models shipped in adrank/cli/defaults, adrank/cli/default_model.py).

State (service/state.py): catalog writes and reloads go through a replication log — SQLite in
``--state-dir`` (``ADRANK_STATE_DIR``; default ``$XDG_STATE_HOME/adrank/port-PORT``, i.e. one
state per port; with ``--port 0`` a temp dir removed at exit, announced as not durable), or Redis
with ``ADRANK_LOG=redis://...`` (a fleet).  Everything acknowledged survives kill -9 and restart;
start-up arguments that changed since the last start are recorded as new intents.  The command
also owns a run directory (``--run-dir``, default a temp dir) for ``PROMETHEUS_MULTIPROC_DIR``.
Every setting reaches the workers as ``ADRANK_*`` environment variables (service/settings.py).
With several workers SIGHUP to this process logs a reload of every model, which every worker
applies.
Kernels compile once into Numba's on-disk cache (``NUMBA_CACHE_DIR`` moves it, e.g. for a
read-only install); every worker loads and warms them before it accepts a request.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
from pathlib import Path

HELP = "serve ranking models over HTTP (POST /v1/rank); no artifact = the embedded default models"


def add_arguments(p) -> None:
    p.add_argument("artifacts", nargs="*", metavar="[NAME=]ARTIFACT",
                   help="artifact files; NAME defaults to the file stem; the first is the default model")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    p.add_argument("--max-candidates", type=int, help="ads per request (default 10000; ADRANK_MAX_CANDIDATES)")
    p.add_argument("--max-body-bytes", type=int, help="largest body (default 16 MiB; ADRANK_MAX_BODY_BYTES)")
    p.add_argument("--max-inflight", type=int, help="requests in flight per worker before 503 (default 64)")
    p.add_argument("--no-admin", action="store_true",
                   help="remove every admin route: reload, state, catalog writes and reads (ADRANK_ADMIN=0)")
    p.add_argument("--model-dir", help="the directory reload may read artifacts from (ADRANK_MODEL_DIR; "
                   "default: none, reload re-reads a model's own file only)")
    p.add_argument("--access-log", choices=["text", "json", "off"], default="text",
                   help="one line per request with its id, model, status, latency, queue wait (default text)")
    p.add_argument("--catalog", metavar="ADS.jsonl",
                   help="ads to record at start, one {\"id\": ..., \"features\": {...}} per line (ADRANK_CATALOG)")
    p.add_argument("--state-dir", help="durable state: the SQLite replication log (default ADRANK_STATE_DIR, else "
                   "$XDG_STATE_HOME/adrank/port-PORT; unused with ADRANK_LOG=redis://...)")
    p.add_argument("--run-dir", help="directory for the workers' metrics files (default: a temp dir)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--no-access-log", action="store_true", help="do not log every request (= --access-log off)")


def _default_models() -> tuple[list[str], dict]:
    """The embedded default models shipped with the package: NAME=PATH specs + default.json."""
    from adrank.cli.default_model import MissingDefaults, shipped
    from adrank.core.errors import UserError

    try:
        info = shipped()
    except MissingDefaults as exc:
        raise UserError(str(exc)) from None
    print("adrank serve: no artifact given; serving the embedded default models "
          f"({', '.join(info['models'])}, built by `{info['command']}`)", file=sys.stderr, flush=True)
    return [f"{name}={path}" for name, path in info["models"].items()], info


def _check_artifacts(specs) -> None:
    """Fail before starting the server on anything but a sound artifact: missing, a directory (a
    training run: the export command is shown), damaged (the named error, checksum included)."""
    from adrank.cli.preflight import check_artifact

    for s in specs:
        check_artifact(s.name, s.path)


def _example_curl(host: str, port: int, body: dict | None) -> str:
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    body = body or {"context": {}, "ads": [{"id": "ad-1", "features": {}}]}
    return (f"curl -s http://{host}:{port}/v1/rank -H 'content-type: application/json' "
            f"-d {shlex.quote(json.dumps(body))}")


def _prepare_run_dir(path: str | None) -> tuple[Path, bool]:
    run_dir = Path(path) if path else Path(tempfile.mkdtemp(prefix="adrank-run-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    prom = run_dir / "prometheus"
    shutil.rmtree(prom, ignore_errors=True)  # counters of an earlier run must not leak in
    prom.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prom)
    return run_dir, path is None


def _state_dir(arg: str | None, configured: Path | None, port: int) -> tuple[Path, bool]:
    """(state directory, whether it is a temp dir removed at exit): --state-dir, else
    ADRANK_STATE_DIR (``configured``), else one per port under $XDG_STATE_HOME."""
    if arg or configured:
        return Path(arg or str(configured)).expanduser().resolve(), False
    if port == 0:
        return Path(tempfile.mkdtemp(prefix="adrank-state-")), True
    base = Path(os.environ.get("XDG_STATE_HOME") or "~/.local/state").expanduser()
    return (base / "adrank" / f"port-{port}").resolve(), False


def _admin_token_file(state_dir: Path) -> Path:
    """``state_dir``/admin-token: reused if it exists (owner-only), else written with a fresh token,
    created 0600 (never readable by others, not even for an instant)."""
    import secrets

    from adrank.core.errors import UserError
    from service.admin import TOKEN_BYTES

    path = state_dir / "admin-token"
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        st = path.lstat()
        if not path.is_file() or path.is_symlink() or st.st_mode & 0o077:
            raise UserError(f"{path}: the admin token file must be a regular file readable by its owner only "
                            f"(chmod 600), not mode {oct(st.st_mode & 0o777)}") from None
        return path
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(TOKEN_BYTES) + "\n")
    return path


def run(args) -> int:
    from adrank.cli.preflight import listen
    from adrank.core.errors import UserError
    from service.settings import Settings, SettingsError, parse_model_specs

    if args.workers < 1:
        raise UserError("--workers must be >= 1")
    sock = listen(args.host, args.port)  # a busy port is one line now, not after minutes of warm-up
    port = sock.getsockname()[1]  # --port 0: the port the system chose
    try:
        info = None
        specs = parse_model_specs(args.artifacts) if args.artifacts else list(Settings.from_env().models)
        if not specs:
            items, info = _default_models()
            specs = parse_model_specs(items)
        _check_artifacts(specs)
        overrides = {"ADRANK_MODELS": " ".join(f"{s.name}={s.path.resolve()}" for s in specs)}
        for flag, key in (("max_candidates", "ADRANK_MAX_CANDIDATES"), ("max_body_bytes", "ADRANK_MAX_BODY_BYTES"),
                          ("max_inflight", "ADRANK_MAX_INFLIGHT")):
            if getattr(args, flag) is not None:
                overrides[key] = str(getattr(args, flag))
        if args.no_admin:
            overrides["ADRANK_ADMIN"] = "0"
        if args.model_dir:
            if not Path(args.model_dir).is_dir():
                raise UserError(f"--model-dir: {args.model_dir} is not a directory")
            overrides["ADRANK_MODEL_DIR"] = str(Path(args.model_dir).resolve())
        overrides["ADRANK_ACCESS_LOG"] = "off" if args.no_access_log else args.access_log
        if args.catalog:
            if not Path(args.catalog).is_file():
                raise UserError(f"--catalog: {args.catalog} does not exist")
            overrides["ADRANK_CATALOG"] = str(Path(args.catalog).resolve())
        run_dir, is_temp = _prepare_run_dir(args.run_dir)
        state_dir, state_temp = _state_dir(args.state_dir, Settings.from_env().state_dir, args.port)
        overrides["ADRANK_STATE_DIR"] = str(state_dir)
        settings = Settings.from_env({**os.environ, **overrides})
        token_note = None
        if settings.admin_enabled and settings.admin_token is None:
            token_file = _admin_token_file(state_dir)
            settings = Settings.from_env({**os.environ, **overrides, "ADRANK_ADMIN_TOKEN_FILE": str(token_file)})
            token_note = token_file
    except SettingsError as exc:
        raise UserError(str(exc)) from None
    os.environ.update(settings.to_env())
    print(f"adrank serve: models {', '.join(f'{s.name}={s.path}' for s in settings.models)} "
          f"(default {settings.models[0].name}); {args.workers} worker(s); run dir {run_dir}", file=sys.stderr)
    if settings.log_url:
        print(f"adrank serve: state in the replication log {settings.log_url} (keys {settings.log_key}:*)",
              file=sys.stderr)
    else:
        print(f"adrank serve: state in {state_dir}"
              + (" (a temp dir: NOT durable, removed at exit; pass --state-dir)" if state_temp else ""), file=sys.stderr)
    if not settings.admin_enabled:
        print("adrank serve: admin routes off (--no-admin): no reload, state or catalog writes", file=sys.stderr)
    elif token_note is not None:
        print(f"adrank serve: admin routes need 'Authorization: Bearer <token>'; the token is in {token_note} "
              "(mode 0600; set ADRANK_ADMIN_TOKEN to choose one)", file=sys.stderr)
    else:
        print("adrank serve: admin routes need 'Authorization: Bearer <ADRANK_ADMIN_TOKEN>'", file=sys.stderr)
    print(f"adrank serve: listening on {args.host}:{port}; requests are answered once every model is loaded, "
          "verified and its kernels warm (GET /readyz)", file=sys.stderr)
    print(f"try:\n  {_example_curl(args.host, port, info and info.get('example'))}\n", file=sys.stderr, flush=True)
    # uvicorn re-raises SIGTERM after its graceful shutdown; exiting through SystemExit instead
    # lets the run directory below be removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        return _run_uvicorn(args, settings, sock)
    finally:
        if is_temp:
            shutil.rmtree(run_dir, ignore_errors=True)
        if state_temp:
            shutil.rmtree(state_dir, ignore_errors=True)


def _run_uvicorn(args, settings, sock) -> int:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    class Supervisor(Multiprocess):
        def handle_hup(self) -> None:  # reload models in every worker instead of restarting them
            from service.state import request_reload_all

            try:
                request_reload_all(settings)
            except Exception as exc:  # noqa: BLE001 - a failed SIGHUP never stops the server
                print(f"adrank serve: SIGHUP: could not log the reload: {exc}", file=sys.stderr, flush=True)

    # the service writes its own access line (service/trace.py: request id, model, latency, queue wait)
    config = uvicorn.Config("service.app:create_app", factory=True, host=args.host, port=args.port,
                            workers=args.workers, log_level=args.log_level, http="service.protocol:EdgeProtocol",
                            access_log=False, timeout_graceful_shutdown=10)
    if args.workers == 1:
        server = uvicorn.Server(config)
        server.run(sockets=[sock])
        return 0 if server.started else 3
    Supervisor(config, sockets=[sock]).run()
    return 0
