"""Where a load test's requests come from, besides generated values files (loadtest/auctions.py).

* ``--requests BODIES.jsonl``: the user's own traffic, one ``/v1/rank`` body per line, replayed
  as recorded (a ``"model"`` key is dropped: the comparison names the model of every request);
* ``--rows DATA --dataset NAME``: raw rows of a data set (the formats ``adrank train`` reads):
  each request takes its context from one row and its candidates' item fields from other rows,
  the candidate count drawn like generated traffic (log-normal), so ads carry real value
  combinations;
* the embedded default models (adrank/cli/defaults): their generated data set is rebuilt from
  the recorded parameters (training.generate, no torch) and read like any ``adrank generate``
  directory.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import msgspec
import numpy as np

from loadtest.auctions import open_replacing


class TrafficError(ValueError):
    """Traffic that cannot be used; the message names the file and line."""


def locust_missing() -> str | None:
    """Why Locust cannot run here, or None."""
    try:
        found = importlib.util.find_spec("locust") is not None  # found, not imported (gevent patches on import)
    except (ImportError, ValueError):
        found = False
    if not found:
        return ("Locust (the load generator) is not installed in this Python environment; install it with "
                "`pip install -c constraints.txt -e '.[loadtest]'` (scripts/run installs the serving extra only)")
    return None


def _stats(sizes: list[int]) -> dict:
    s = np.asarray(sizes)
    return {"requests": len(sizes), "candidates_mean": float(s.mean()), "candidates_p50": float(np.median(s)),
            "candidates_p99": float(np.percentile(s, 99)), "candidates_max": int(s.max())}


def requests_pool(path, pool, limit: int | None = None, fields: dict[str, str] | None = None) -> dict:
    """Copy the /v1/rank bodies of ``path`` (JSONL) into ``pool`` without their ``model`` key; checks
    each line is an object with a non-empty ``ads`` array and, given ``fields`` (name -> role),
    that it names only those fields.  Returns the pool's stats."""
    path = Path(path)
    dec, enc, sizes = msgspec.json.Decoder(), msgspec.json.Encoder(), []
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise TrafficError(f"--requests {path}: cannot read it: {exc.strerror or exc}") from None
    with open_replacing(pool) as out:
        for no, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                body = dec.decode(line)
            except msgspec.DecodeError as exc:
                raise TrafficError(f"--requests {path} line {no}: not JSON ({exc})") from None
            if not isinstance(body, dict) or not isinstance(body.get("ads"), list) or not body["ads"]:
                raise TrafficError(f"--requests {path} line {no}: expected a /v1/rank body "
                                   '{"context": {...}, "ads": [...]} with at least one ad')
            body.pop("model", None)
            if fields is not None:
                _check_names(body, fields, f"--requests {path} line {no}")
            out.write(enc.encode(body) + b"\n")
            sizes.append(len(body["ads"]))
            if limit is not None and len(sizes) >= limit:
                break
    if not sizes:
        raise TrafficError(f"--requests {path}: no request bodies in it")
    return _stats(sizes)


def _check_names(body: dict, fields: dict[str, str], where: str) -> None:
    names = set(body.get("context") or {})
    for ad in body["ads"]:
        if isinstance(ad, dict) and isinstance(ad.get("features"), dict):
            names |= set(ad["features"])
    unknown = sorted(names - set(fields))
    if unknown:
        raise TrafficError(f"{where}: fields {', '.join(unknown)} are not the model's "
                           f"(its fields: {', '.join(fields)})")


def rows_pool(path, dataset: str, pool, count: int, fields: dict[str, str], seed: int = 0, median: float = 200,
              sigma: float = 1.0, max_candidates: int = 5000, max_rows: int = 100_000) -> dict:
    """``count`` requests from the raw rows of a data set: context from one row, each candidate's
    item fields from another (see the module docstring).  ``fields``: the model's field -> role;
    the data set must carry every one of them."""
    from training.data import read_raw, schema_for  # the raw readers: numpy only, no torch
    from training.datasets.io import DataError

    try:
        schema = schema_for(dataset, path)
        cols: dict[str, list] = {f.name: [] for f in schema.fields}
        for chunk, _labels in read_raw(dataset, path, max_rows=max_rows):
            for name in cols:
                cols[name].extend(chunk[name])
    except (DataError, OSError) as exc:
        raise TrafficError(f"--rows {path}: {exc}") from None
    missing = [f for f in fields if f not in cols]
    if missing:
        raise TrafficError(f"--rows {path} (--dataset {dataset}) has no fields {', '.join(missing)} of the model "
                           f"(the data set's fields: {', '.join(cols)})")
    n_rows = len(next(iter(cols.values()), []))
    if n_rows < 2:
        raise TrafficError(f"--rows {path}: {n_rows} rows; need at least 2")
    context = [f for f, role in fields.items() if role == "context"]
    items = [f for f, role in fields.items() if role == "item"]
    rng, enc, sizes = np.random.default_rng(seed), msgspec.json.Encoder(), []
    with open_replacing(pool) as out:
        for q in range(count):
            n = int(np.clip(round(median * np.exp(sigma * rng.standard_normal())), 1, max_candidates))
            r = int(rng.integers(n_rows))
            picks = rng.integers(0, n_rows, n).tolist()
            body = {"context": {f: cols[f][r] for f in context},
                    "ads": [{"id": f"row-{i}-{q}-{j}", "features": {f: cols[f][i] for f in items}}
                            for j, i in enumerate(picks)]}
            out.write(enc.encode(body) + b"\n")
            sizes.append(n)
    return _stats(sizes)


def default_models_values(work: Path, params: dict) -> Path:
    """Rebuild the embedded default models' data set under ``work`` from their generator parameters
    (adrank/cli/default_model.py PARAMS); returns the directory, a values source for
    :func:`loadtest.auctions.load_values`."""
    from training.generate import generate

    out = Path(work) / "default-models-data"
    generate(out, rows=params["rows"], seed=params["seed"], fields=params["fields"],
             context_fields=params["context_fields"], vocab=params["vocab"], embed_dim=params["embed_dim"],
             progress=False)
    return out


def model_fields(path, served: dict | None) -> dict[str, str]:
    """A model's field -> role, from its artifact or from the running server's /v1/models entry."""
    if path:
        from adrank.core.artifact import read_artifact

        return {f["name"]: f["role"] for f in read_artifact(path, verify=False).manifest["schema"]["fields"]}
    return {f["name"]: f["role"] for f in served["fields"]}


def model_version(path, served: dict | None) -> str:
    if path:
        from adrank.core.artifact import read_artifact

        return read_artifact(path, verify=False).version
    return served["version"]


def build_pool(work: Path, pool: Path, ads: Path, models: list[tuple], values_path, requests, rows, dataset,
               traffic: str, pool_size: int, catalog_ads: int, seed: int, median: float, sigma: float,
               max_candidates: int, defaults: dict | None, progress: bool) -> tuple[dict, str]:
    """Write the request pool (and with catalog traffic the catalog ``ads``) from the first traffic
    source given (module docstring); ``models``: (name, artifact path or None, the running server's
    /v1/models entry or None).  Returns (pool stats, where the traffic came from, for the report)."""
    from loadtest.auctions import AuctionGenerator, load_values, write_catalog, write_pool

    _, path, served = models[0]
    if requests:
        return requests_pool(requests, pool, pool_size, model_fields(path, served)), f"the request bodies of {requests}"
    if rows:
        stats = rows_pool(rows, dataset, pool, pool_size, model_fields(path, served), seed, median, sigma,
                          max_candidates)
        return stats, (f"raw rows of {rows} (--dataset {dataset}): each request's context from one row, its "
                       "ads' item fields from other rows")
    if values_path is None:
        if not defaults or any(model_version(p, s) not in defaults["versions"] for _, p, s in models):
            raise TrafficError("no traffic given: pass --requests BODIES.jsonl (your /v1/rank bodies, one per "
                               "line), --rows DATA --dataset NAME (raw rows of a data set), or --values "
                               "VALUES.json|GENERATED_DIR")
        values_path = default_models_values(work, defaults["params"])
        source = "the embedded default models' data set (rebuilt)"
    else:
        source = str(values_path)
    try:
        gen = AuctionGenerator(load_values(values_path), seed=seed, median=median, sigma=sigma,
                               max_candidates=max_candidates)
    except ValueError as exc:
        raise TrafficError(str(exc)) from None
    source = f"raw values Zipf-popular from {source}, 2% unseen, 1% missing"
    if traffic == "catalog":  # the catalog first: the pool's id draws then follow it in the generator
        write_catalog(gen, ads, catalog_ads, progress=progress)
        return write_pool(gen, pool, pool_size, progress=progress, catalog_size=catalog_ads), source
    return write_pool(gen, pool, pool_size, progress=progress), source
