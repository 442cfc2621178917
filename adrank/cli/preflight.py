"""Checks the CLI runs before long work, so a wrong turn costs one clear line, not minutes.

``listen`` takes the server's port before any model is loaded or kernel compiled (uvicorn binds
only after its start-up work); ``check_artifact`` tells an artifact from what a newcomer may pass
instead (a training run directory, a missing or damaged file); ``check_run_dir`` does the same
for `adrank export`. Every failure is a :class:`adrank.core.errors.UserError`: one line and exit
code 2.
"""

from __future__ import annotations

import errno
import shlex
import socket
from pathlib import Path

from adrank.core.errors import UserError

RUN_FILES = ("model.pt", "config.json")  # what `adrank train --out RUN` writes (training/checkpoint.py)


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (as uvicorn binds it), handed to uvicorn later."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UserError(_busy(host, port)) from None
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        # listening at once also finds a port that another server has bound but not yet opened
        # (Linux lets two SO_REUSEADDR sockets bind one port until one listens); connections
        # made during warm-up wait in the backlog and are answered once the app has started
        sock.listen(2048)
    except OSError:
        sock.close()
        raise UserError(_busy(host, port)) from None
    sock.set_inheritable(True)  # several workers: uvicorn's supervisor passes it to each
    return sock


def _busy(host: str, port: int) -> str:
    return (f"port {port} on {host} is already in use (another adrank serve?); stop that process or "
            "pick another port with --port")


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in RUN_FILES)


def check_artifact(name: str, path: Path) -> None:
    """Verify ``path`` (checksum included) as the artifact of model ``name``, or say what it is."""
    from adrank.core.artifact import ArtifactError, read_artifact

    if is_run_dir(path):
        out = f"{path.name or 'model'}.adrk"
        raise UserError(f"model {name!r}: {path} is a training run directory, not an artifact; export it "
                        f"first: adrank export {shlex.quote(str(path))} --out {shlex.quote(out)} "
                        f"&& adrank serve {shlex.quote(name + '=' + out)}")
    if path.is_dir():
        raise UserError(f"model {name!r}: {path} is a directory, not an artifact (an .adrk file "
                        "written by `adrank export`)")
    if not path.exists():
        raise UserError(f"model {name!r}: artifact {path} does not exist")
    try:
        read_artifact(path, verify=True)
    except ArtifactError as exc:
        raise UserError(f"model {name!r}: {exc} [{exc.code}]") from None
    except OSError as exc:
        raise UserError(f"model {name!r}: cannot read {path}: {exc.strerror or exc}") from None


def check_run_dir(path: Path) -> None:
    """`adrank export` takes a training run directory: say what ``path`` is when it is not one."""
    from adrank.core.artifact import ArtifactError, read_artifact

    if path.is_dir() or not path.exists():
        return  # the exporter names a missing directory or file inside it
    try:
        art = read_artifact(path, verify=False)
    except (ArtifactError, OSError):
        raise UserError(f"{path} is a file, not a training run directory (the directory "
                        "`adrank train --out RUN` writes)") from None
    raise UserError(f"{path} is already an artifact (kind {art.kind}, version {art.version}): nothing to "
                    f"export; serve it with: adrank serve {shlex.quote(str(path))}")
