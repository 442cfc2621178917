"""What guards the admin routes (reload, /v1/state, the catalog's writes and reads): the bearer
token, the model directory a reload may read from, and the content types a request may have.

Policy (README, "Security"): every admin route needs ``Authorization: Bearer <token>``, always.
A server with no token configured answers them 401 to everyone; ``adrank serve`` never runs that
way: with no ``ADRANK_ADMIN_TOKEN`` it generates a token into a 0600 file in its state directory
and logs the file's path (adrank/cli/commands/serve.py).  ``--no-admin`` removes the routes.

A reload reads only inside the configured model directory (``--model-dir``/``ADRANK_MODEL_DIR``):
a name or relative path is taken inside it, ``..`` components and NUL bytes are refused, the
result is resolved (symlinks followed) and must still lie inside.  A refusal never says whether
the file outside exists: that would make the route a probe of the host's file system.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path, PurePosixPath

from service.errors import ApiError

TOKEN_BYTES = 32  # a generated token: 32 random bytes, URL-safe base64


def check_token(authorization: str | None, token: str | None) -> None:
    """Raise 401 unless ``authorization`` is ``Bearer <token>`` (constant-time comparison)."""
    if token is None:
        raise ApiError(401, "unauthorized", "admin routes need a bearer token and none is configured on this server "
                       "(set ADRANK_ADMIN_TOKEN or ADRANK_ADMIN_TOKEN_FILE; `adrank serve` generates one)",
                       headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest((authorization or "").encode("utf-8", "replace"), f"Bearer {token}".encode()):
        raise ApiError(401, "unauthorized", "admin routes need 'Authorization: Bearer <admin token>'",
                       headers={"WWW-Authenticate": "Bearer"})


def confine(path: str, model_dir: Path | None) -> Path:
    """The file ``path`` names inside ``model_dir``, resolved; ApiError (403/422) otherwise."""
    if model_dir is None:
        raise ApiError(403, "no_model_dir", "reload from a path needs a model directory (--model-dir, "
                       "ADRANK_MODEL_DIR); a reload without a path re-reads the model's own file")
    if not path or "\x00" in path:
        raise ApiError(422, "invalid_path", "path: must be a non-empty file name without NUL bytes")
    if ".." in PurePosixPath(path).parts:
        raise ApiError(403, "path_outside_model_dir", "path: '..' is not allowed; name a file inside the model directory")
    root = Path(os.path.realpath(model_dir))
    try:
        real = Path(os.path.realpath(root / path))  # an absolute path replaces root here, then must be inside
    except (OSError, ValueError):
        real = None
    if real is None or not real.is_relative_to(root):
        raise ApiError(403, "path_outside_model_dir", "path: must name a file inside the model directory")
    return real


def media_type(value: str | None) -> str | None:
    return None if value is None else value.split(";", 1)[0].strip().lower()


def check_body_headers(content_type: str | None, content_encoding: str | None, body_required: bool) -> None:
    """415 unless the body is ``application/json`` (absent allowed when ``body_required`` is false:
    an empty body, or /v1/rank's raw clients) and not compressed."""
    if content_encoding is not None and content_encoding.strip().lower() not in ("", "identity"):
        raise ApiError(415, "unsupported_encoding", f"Content-Encoding {content_encoding!r} is not accepted: "
                       "send the JSON body uncompressed")
    mt = media_type(content_type)
    if mt is None and not body_required:
        return
    if mt != "application/json":
        raise ApiError(415, "unsupported_media_type", f"Content-Type must be application/json, not {content_type!r}")
