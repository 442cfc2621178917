"""Kernel benchmark: the DPLR-FwFM paper's Figure 1 protocol (Sec. 5.2) on the serving scorers.

    adrank bench kernels [--quick] [--json OUT] [--plot PNG] [--markdown MD]
    python -m benchmarks.kernels --quick     # same thing without the CLI

Protocol (paper Sec. 5.2, adapted):

* m = 40 fields, ``c`` of them context (10, 15, 20, 25, 30), the rest item fields;
* DPLR-FwFM of rank rho in {1, 2, 3} (``U`` [rho, m], ``e`` [rho]: rho(m + 1) interaction
  parameters, Eq. 10) beside a pruned FwFM keeping the rho(m + 1) largest |R_ij| of a random R
  (matched parameter count; for i.i.d. R these are uniformly random pairs), plus the full
  FwFM (Eq. 3) and FM (Eq. 1) as references;
* auctions of N = 10 .. 10,000 candidates, embedding dimension k in {8, 16};
* one embedding table of ``--table-mib`` MiB per k (default 128 MiB, 4x this machine's L3), so
  candidate rows come from memory; ids drawn uniformly or with Zipf popularity (s = 1.1, the
  popular rows scattered through the table by a random permutation).

Every scorer is ``service.kernels.registry.make_scorer`` on arrays folded by
``exporter.fold.fold`` — the serving code, never a copy — single-threaded (``parallel_min``
disabled), prefetch as served.  A timed *block* scores ``auctions`` fresh auctions (new context,
new candidates, drawn outside the timer, shared by no other block so no model inherits another's
warm cache) through ``Scorer.score`` (id validation included, as in serving).  Blocks are timed
with the thread's CPU clock (``time.thread_time``): on this shared 2-core machine the wall clock
also counts the time other processes held the core (kept per row as ``us_per_auction_wall``).  Models run
interleaved in a shuffled order within each repeat; rows report the median over repeats and the
spread (25th/75th percentiles, standard error of the mean).

The random-gather floor is the time to fetch one random k-float row of the same table (a tight
numba loop of independent loads); a candidate with |I| item fields must touch |I| rows, so
``x_floor = ns_per_candidate / (|I| * floor)`` and ``x_fm`` is the ratio to FM's median at the same
(c, k, popularity, N).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numba
import numpy as np

from adrank.core.errors import UserError
from adrank.core.files import replacing
from adrank.core.schema import Field, Schema
from benchmarks.kernels_cli import DESCRIPTION, add_arguments, command_line
from exporter.fold import fold
from service.kernels.memory import aligned
from service.kernels.registry import make_scorer

ROOT = Path(__file__).resolve().parents[1]

FULL = dict(fields=40, contexts=(10, 15, 20, 25, 30), ranks=(1, 2, 3), dims=(8, 16),
            candidates=(10, 100, 1000, 3000, 10000), popularity=("uniform", "zipf"),
            repeats=5, target=10_000, table_mib=128)
QUICK = dict(FULL, contexts=(20,), dims=(16,), candidates=(10, 100, 1000), repeats=5, target=3_000)
ZIPF_S = 1.1
REQUIRED = ("model", "rank", "context_fields", "item_fields", "embed_dim", "candidates", "ns_per_candidate")
TARGET = dict(context_fields=20, embed_dim=16, candidates=1000)  # the target configuration


# --- the machine's floor ---------------------------------------------------------------------
@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _gather(table, rows):
    s = np.float32(0.0)
    for n in range(rows.shape[0]):
        for t in range(table.shape[1]):
            s += table[rows[n], t]
    return s


def gather_floor(table: np.ndarray, rng, repeats: int = 5, n: int = 1_000_000) -> float:
    """Median ns to fetch one random row of ``table`` (independent loads, as a candidate's rows)."""
    rows = rng.integers(0, table.shape[0], n)
    _gather(table, rows[:16])
    times = []
    for _ in range(repeats):
        rows = rng.integers(0, table.shape[0], n)
        t0 = time.thread_time()
        _gather(table, rows)
        times.append(time.thread_time() - t0)
    return float(np.median(times)) / n * 1e9


# --- models ----------------------------------------------------------------------------------
def schema_for(m: int, c: int) -> Schema:
    return Schema("bench", tuple(Field(f"f{f}", "categorical", "context" if f < c else "item")
                                 for f in range(m)))


def base_params(rng, m: int, k: int, V: int) -> dict:
    """Shared bias/linear/emb (one 64-byte-aligned table per k) and a random symmetric R."""
    n = m * V
    emb = aligned(np.empty((n, k), np.float32))
    for lo in range(0, n, 1 << 20):  # chunked: no float64 temporary of the whole table
        emb[lo:lo + (1 << 20)] = rng.normal(0, 0.1, (min(1 << 20, n - lo), k))
    R = np.triu(rng.normal(0, 0.5, (m, m)), 1)
    return {"bias": np.zeros(1, np.float32), "linear": rng.normal(0, 0.1, n).astype(np.float32),
            "emb": emb, "R": (R + R.T).astype(np.float32)}


def top_pairs_mask(R: np.ndarray, keep: int) -> np.ndarray:
    """The ``keep`` largest |R_ij| above the diagonal, as a symmetric bool mask."""
    i, j = np.triu_indices(R.shape[0], 1)
    top = np.argsort(-np.abs(R[i, j]), kind="stable")[:keep]
    mask = np.zeros(R.shape, bool)
    mask[i[top], j[top]] = mask[j[top], i[top]] = True
    return mask


def model_params(rng, base: dict, ranks) -> dict[str, tuple[str, int | None, dict]]:
    """name -> (kind, rho, unfolded parameters) of every benchmarked model."""
    m = base["R"].shape[0]
    out = {"fm": ("fm", None, base), "fwfm": ("fwfm", None, base)}
    for rho in ranks:
        U = rng.normal(0, 0.5, (rho, m)).astype(np.float32)
        e = rng.choice([-1.0, 1.0], rho).astype(np.float32)
        out[f"dplr-{rho}"] = ("dplr", rho, {**base, "U": U, "e": e})
        out[f"pruned-{rho}"] = ("pruned", rho, {**base, "mask": top_pairs_mask(base["R"], rho * (m + 1))})
    return out


def folded(models: dict, m: int, V: int) -> dict[str, tuple[str, int | None, dict]]:
    """Fold once per model (the diagonal fold does not depend on the context split)."""
    ids = np.arange(m + 1, dtype=np.int64) * V
    return {name: (kind, rho, p if kind == "pruned" else fold(kind, p, schema_for(m, 0), ids)[0])
            for name, (kind, rho, p) in models.items()}


def scorers_for(models: dict, m: int, c: int, V: int) -> dict:
    """name -> (Scorer, meta) for context split c; pruned pairs re-folded in block order."""
    schema, ids = schema_for(m, c), np.arange(m + 1, dtype=np.int64) * V
    out = {}
    for name, (kind, rho, arrays) in models.items():
        meta = {"model": kind, "rank": rho, "interaction_params": None}
        if kind == "pruned":
            arrays, extra = fold(kind, arrays, schema, ids)
            meta.update(n_pairs=extra["n_pairs"], pair_blocks=extra["pair_blocks"])
        meta["interaction_params"] = {"fm": 0, "fwfm": m * (m - 1) // 2}.get(kind, (rho or 0) * (m + 1))
        manifest = {"kind": kind, "schema": schema.to_dict(), "n_features": m * V}
        scorer = make_scorer(manifest, arrays, parallel_min=1 << 62)
        scorer.warm()
        out[name] = (scorer, meta)
    return out


# --- traffic ---------------------------------------------------------------------------------
class Traffic:
    """Random auctions over fields of V ids each: uniform or Zipf(s) popularity."""

    def __init__(self, rng, m: int, V: int, popularity: str):
        self.rng, self.m, self.V, self.popularity = rng, m, V, popularity
        if popularity == "zipf":
            w = 1.0 / np.arange(1, V + 1) ** ZIPF_S
            self.cdf = np.cumsum(w) / w.sum()
            self.perm = np.stack([rng.permutation(V) for _ in range(m)])  # rank -> id per field
        elif popularity != "uniform":
            raise ValueError(f"popularity must be 'uniform' or 'zipf', got {popularity!r}")

    def ids(self, fields: range, n: int) -> np.ndarray:
        f = np.asarray(fields)
        if self.popularity == "uniform":
            local = self.rng.integers(0, self.V, (n, len(f)))
        else:
            ranks = np.minimum(np.searchsorted(self.cdf, self.rng.random((n, len(f)))), self.V - 1)
            local = self.perm[f[None, :], ranks]
        return (local + f[None, :] * self.V).astype(np.int32)

    def auctions(self, c: int, N: int, count: int) -> list:
        ctx = self.ids(range(c), count)
        items = self.ids(range(c, self.m), N * count).reshape(count, N, self.m - c)
        return [(ctx[a], items[a]) for a in range(count)]


def time_block(scorer, auctions) -> tuple[float, float]:
    """(thread CPU seconds, wall seconds) to score ``auctions`` one after another."""
    w0, t0 = time.perf_counter(), time.thread_time()
    for ctx, items in auctions:
        scorer.score(ctx, items)
    return time.thread_time() - t0, time.perf_counter() - w0


# --- the grid --------------------------------------------------------------------------------
def run(grid: dict, seed: int = 0, progress: bool = True, command: str | None = None) -> dict:
    """Measure every cell of ``grid``; returns {"meta": ..., "floors": ..., "rows": [...]}."""
    from tqdm import tqdm

    m, rng = grid["fields"], np.random.default_rng(seed)
    for c in grid["contexts"]:
        if not 0 < c < m:
            raise ValueError(f"context field count {c} must lie in [1, {m - 1}]")
    n_models = 2 + 2 * len(grid["ranks"])
    total = (len(grid["dims"]) * len(grid["popularity"]) * len(grid["contexts"]) * len(grid["candidates"])
             * grid["repeats"] * n_models)
    rows, floors = [], {}
    gc_was = gc.isenabled()
    bar = tqdm(total=total, desc="bench kernels", unit="block", disable=not progress)
    try:
        for k in grid["dims"]:
            V = max(16, int(grid["table_mib"] * 2**20 // (m * k * 4)))
            base = base_params(rng, m, k, V)
            floors[k] = {"ns_per_row": gather_floor(base["emb"], rng), "rows": m * V,
                         "table_mib": round(base["emb"].nbytes / 2**20, 1)}
            models = folded(model_params(rng, base, grid["ranks"]), m, V)
            for pop in grid["popularity"]:
                traffic = Traffic(rng, m, V, pop)
                for c in grid["contexts"]:
                    scorers = scorers_for(models, m, c, V)
                    for N in grid["candidates"]:
                        count = max(1, min(100, math.ceil(grid["target"] / N)))
                        cell = dict(context_fields=c, item_fields=m - c, embed_dim=k, candidates=N,
                                    popularity=pop, auctions_per_block=count)
                        rows += measure_cell(scorers, traffic, cell, grid["repeats"], floors[k], bar)
    finally:
        bar.close()
        if gc_was:
            gc.enable()
    return {"meta": machine_meta(grid, seed, command), "floors": floors, "rows": rows}


def measure_cell(scorers: dict, traffic: Traffic, cell: dict, repeats: int, floor: dict, bar) -> list:
    c, N, count = cell["context_fields"], cell["candidates"], cell["auctions_per_block"]
    names = list(scorers)
    for name in names:  # one untimed block each: warm code paths and allocator
        time_block(scorers[name][0], traffic.auctions(c, N, 1))
    times = {name: [] for name in names}
    walls = {name: [] for name in names}
    for _ in range(repeats):
        for i in traffic.rng.permutation(len(names)):
            auctions = traffic.auctions(c, N, count)
            gc.collect()
            gc.disable()
            cpu, wall = time_block(scorers[names[i]][0], auctions)
            gc.enable()
            times[names[i]].append(cpu / count)
            walls[names[i]].append(wall / count)
            bar.update()
    fm_ns = float(np.median(times["fm"])) / N * 1e9
    floor_ns = floor["ns_per_row"] * cell["item_fields"]
    out = []
    for name in names:
        t = np.asarray(times[name])
        ns = float(np.median(t)) / N * 1e9
        out.append({**scorers[name][1], **cell, "name": name, "ns_per_candidate": round(ns, 2),
                    "us_per_auction": round(float(np.median(t)) * 1e6, 3),
                    "us_per_auction_p25": round(float(np.percentile(t, 25)) * 1e6, 3),
                    "us_per_auction_p75": round(float(np.percentile(t, 75)) * 1e6, 3),
                    "us_per_auction_stderr": round(float(t.std(ddof=1) / math.sqrt(len(t))) * 1e6, 3),
                    "us_per_auction_wall": round(float(np.median(walls[name])) * 1e6, 3),
                    "repeats": len(t), "x_fm": round(ns / fm_ns, 3), "x_floor": round(ns / floor_ns, 3),
                    "floor_ns_per_candidate": round(floor_ns, 2)})
    return out


def kernels_version() -> str:
    """Last commit touching service/kernels (+ "-dirty" when the tree differs): what was measured."""
    import subprocess

    try:
        git = ["git", "-C", str(ROOT)]
        rev = subprocess.run([*git, "log", "-1", "--format=%h", "--", "service/kernels"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "service/kernels"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return (rev or "unknown") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_meta(grid: dict, seed: int, command: str | None = None) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"command": command or " ".join(sys.argv), "grid": grid, "kernels_version": kernels_version(), "seed": seed, "cpu": cpu, "cpus": os.cpu_count(),
            "load_average": os.getloadavg(), "numba": numba.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "threads": 1, "zipf_s": ZIPF_S,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


# --- reports ---------------------------------------------------------------------------------
def pick(rows, name, **where):
    for r in rows:
        if r["name"] == name and all(r[k] == v for k, v in where.items()):
            return r
    return None


def target_checks(rows: list) -> list[dict]:
    """The issue's targets at 20 context / 20 item fields, k = 16, 1,000 candidates."""
    out = []
    for pop in sorted({r["popularity"] for r in rows}):
        w = dict(TARGET, popularity=pop)
        fm, dplr, pruned = pick(rows, "fm", **w), pick(rows, "dplr-2", **w), pick(rows, "pruned-2", **w)
        if not (fm and dplr and pruned):
            continue
        for what, num, den, limit in (("DPLR rho=2 / FM", dplr, fm, 1.1), ("DPLR rho=2 / pruned rho=2", dplr, pruned, 0.8),
                                      ("pruned rho=2 / FM", pruned, fm, 1.6)):
            ratio = num["ns_per_candidate"] / den["ns_per_candidate"]
            out.append({"popularity": pop, "check": what, "measured": round(ratio, 3), "target": f"<= {limit}",
                        "met": bool(ratio <= limit)})
    return out


def target_run(path) -> dict:
    """The target-cell summary of a separate ``--json`` result: its command, machine state,
    the rows of the target cell and the three checks per popularity.  ValueError if the file is
    not such a result or has no target cell."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or "rows" not in data or "meta" not in data:
        raise ValueError("not an `adrank bench kernels --json` result")
    rows = [r for r in data["rows"] if all(r.get(k) == v for k, v in TARGET.items())]
    checks = target_checks(rows)
    if not checks:
        raise ValueError("no fm / dplr-2 / pruned-2 rows at 20 context fields, k = 16, 1,000 candidates")
    meta = data["meta"]
    return {"file": str(path), "command": meta.get("command"), "seed": meta.get("seed"), "time": meta.get("time"),
            "load_average": meta.get("load_average"), "kernels_version": meta.get("kernels_version"),
            "rows": [{k: r[k] for k in ("name", "popularity", "ns_per_candidate", "us_per_auction_p25",
                                         "us_per_auction_p75", "repeats")} for r in rows],
            "checks": checks}


def target_runs_markdown(runs: list) -> list[str]:
    lines = ["", "## Target runs (20 context / 20 item fields, k = 16, 1,000 candidates, separate runs)", "",
             "Each run is its own process (fresh tables and models from its seed), models interleaved in a shuffled "
             "order per repeat; ns per candidate = median over repeats (in brackets: 25th-75th percentile of the "
             "repeats); load average at the end of the run; time = end of the run (UTC).", "",
             "| seed | time | load average (1/5/15 min) | popularity | FM | DPLR rho=2 | pruned rho=2 | DPLR / FM (<= 1.1) "
             "| DPLR / pruned (<= 0.8) | pruned / FM (<= 1.6) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for run in runs:
        for pop in sorted({r["popularity"] for r in run["rows"]}):
            rows = {r["name"]: r for r in run["rows"] if r["popularity"] == pop}
            checks = {c["check"]: c for c in run["checks"] if c["popularity"] == pop}
            cells = [f"{c['measured']:.2f} {'met' if c['met'] else 'MISSED'}" for c in checks.values()]
            load = "/".join(f"{x:.1f}" for x in run["load_average"] or ())
            when = (run.get("time") or "")[11:19]

            def ns(name, rows=rows):
                r = rows.get(name)
                if r is None:
                    return ""
                per = 1e3 / TARGET["candidates"]  # us per auction -> ns per candidate
                return (f"{r['ns_per_candidate']:.0f} ({r['us_per_auction_p25'] * per:.0f}-"
                        f"{r['us_per_auction_p75'] * per:.0f})")
            lines.append(f"| {run['seed']} | {when} | {load} | {pop} | {ns('fm')} | {ns('dplr-2')} | {ns('pruned-2')} | "
                         + " | ".join(cells) + " |")
    lines += ["", "Commands: " + "; ".join(f"`{r['command']}`" for r in runs)]
    return lines


def markdown(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]
    names = list(dict.fromkeys(r["name"] for r in rows))
    lines = ["# Kernel benchmark (DPLR-FwFM paper, Figure 1 protocol)", "",
             f"Command: `{meta['command']}`  ", f"Machine: {meta['cpu']}, {meta['cpus']} CPUs (shared), "
             f"load average at the end {tuple(round(x, 2) for x in meta['load_average'])}; numba {meta['numba']}, "
             f"one thread; {meta['time']}; service/kernels at {meta.get('kernels_version', 'unknown')}.", "",
             "Time per candidate = median over repeats of (block thread-CPU time / auctions / candidates), through "
             "`Scorer.score` of `service/kernels` (id validation included). `xFM` = ratio to FM, "
             "`xfloor` = ratio to |I| x the random-gather floor.", "", "## Random-gather floor", "",
             "| k | table | ns per random row |", "| --- | --- | --- |"]
    for k, f in result["floors"].items():
        lines.append(f"| {k} | {f['rows']:,} rows, {f['table_mib']} MiB | {f['ns_per_row']:.2f} |")
    checks = target_checks(rows)
    if checks:
        lines += ["", "## Targets (20 context / 20 item fields, k = 16, 1,000 candidates)", "",
                  "| popularity | ratio | measured | target | met |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {c['popularity']} | {c['check']} | {c['measured']:.2f} | {c['target']} | "
                  f"{'yes' if c['met'] else 'NO'} |" for c in checks]
    if result.get("target_runs"):
        lines += target_runs_markdown(result["target_runs"])
    ranks = sorted({r["rank"] for r in rows if r["model"] == "dplr"})
    if ranks:
        lines += ["", "## DPLR vs pruned at matched parameters, every cell with >= 1,000 candidates", "",
                  "| rho | cells | DPLR faster in | median ratio DPLR / pruned | min | max |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for rho in ranks:
            ratios = [r["ns_per_candidate"] / p["ns_per_candidate"] for r in rows
                      if r["name"] == f"dplr-{rho}" and r["candidates"] >= 1000
                      for p in [pick(rows, f"pruned-{rho}", popularity=r["popularity"], embed_dim=r["embed_dim"],
                                     context_fields=r["context_fields"], candidates=r["candidates"])] if p]
            if ratios:
                lines.append(f"| {rho} | {len(ratios)} | {sum(x < 1 for x in ratios)} | {np.median(ratios):.2f} "
                             f"| {min(ratios):.2f} | {max(ratios):.2f} |")
    for N in sorted({r["candidates"] for r in rows}):
        if N not in (10, 1000, 10000) and len({r["candidates"] for r in rows}) > 3:
            continue
        lines += ["", f"## {N:,} candidates: ns per candidate (xFM, xfloor)", "",
                  "| k | popularity | context/item | " + " | ".join(names) + " |",
                  "| --- | --- | --- | " + " | ".join("---" for _ in names) + " |"]
        for k, pop, c in sorted({(r["embed_dim"], r["popularity"], r["context_fields"]) for r in rows}):
            cells = []
            for name in names:
                r = pick(rows, name, embed_dim=k, popularity=pop, context_fields=c, candidates=N)
                cells.append(f"{r['ns_per_candidate']:.0f} ({r['x_fm']:.2f}, {r['x_floor']:.1f})" if r else "-")
            lines.append(f"| {k} | {pop} | {c}/{r['item_fields'] if r else '?'} | " + " | ".join(cells) + " |")
    pr = [r for r in rows if r["model"] == "pruned"]
    if pr:
        keys = sorted({(r["embed_dim"], r["context_fields"], r["rank"], tuple(r["pair_blocks"])) for r in pr})
        lines += ["", "Pruned pairs kept (context x context, context x item, item x item); one random R per k: "
                  + "; ".join(f"k={k} c={c} rho={rho}: {list(b)}" for k, c, rho, b in keys)]
    return "\n".join(lines) + "\n"


def plot(result: dict, path) -> None:
    """Figure 1 layout: time per auction vs auction size, one line per model, a panel per c."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    panels = sorted({(r["embed_dim"], r["popularity"]) for r in rows})
    contexts = sorted({r["context_fields"] for r in rows})
    names = list(dict.fromkeys(r["name"] for r in rows))
    fig, axes = plt.subplots(len(panels), len(contexts), figsize=(4.2 * len(contexts), 3.6 * len(panels)),
                             squeeze=False, sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (pi, (k, pop)), (ci, c) in ((p, q) for p in enumerate(panels) for q in enumerate(contexts)):
        ax = axes[pi][ci]
        for ni, name in enumerate(names):
            sel = sorted((r for r in rows if r["name"] == name and r["embed_dim"] == k
                          and r["popularity"] == pop and r["context_fields"] == c), key=lambda r: r["candidates"])
            if not sel:
                continue
            x = [r["candidates"] for r in sel]
            style = "-" if name.startswith("dplr") else "--" if name.startswith("pruned") else ":"
            ax.plot(x, [r["us_per_auction"] for r in sel], style, marker="o", ms=3, label=name,
                    color=colors[ni % len(colors)])
            ax.fill_between(x, [r["us_per_auction_p25"] for r in sel], [r["us_per_auction_p75"] for r in sel],
                            alpha=0.2, color=colors[ni % len(colors)])
        n_items = next(r["item_fields"] for r in rows if r["context_fields"] == c)
        ax.set(xscale="log", yscale="log", title=f"k={k}, {pop}, {c} context / {n_items} item fields")
        ax.grid(True, which="both", alpha=0.3)
        if ci == 0:
            ax.set_ylabel("µs per auction (median, IQR band)")
        if pi == len(panels) - 1:
            ax.set_xlabel("candidates per auction")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_outputs(result: dict, json_path=None, plot_path=None, md_path=None) -> None:
    """Write each requested file atomically (adrank.core.files): never a half-written report."""
    for path, render in ((json_path, lambda p: p.write_text(json.dumps(result, indent=1) + "\n")),
                         (md_path, lambda p: p.write_text(markdown(result))),
                         (plot_path, lambda p: plot(result, p))):
        if path is not None:
            with replacing(path) as tmp:
                render(tmp)


# --- the command line ---------------------------------------------------------------------------
def run_command(args) -> int:
    """Validate the options (benchmarks/kernels_cli.py), run, write and print; UserError names what is wrong."""
    grid = dict(QUICK if args.quick else FULL)
    for key in ("contexts", "ranks", "dims", "candidates", "popularity", "repeats", "table_mib", "target"):
        value = getattr(args, key)
        if value is not None:
            grid[key] = tuple(value) if isinstance(value, (list, tuple)) else value
    problems = [f"--{key.replace('_', '-')} needs at least one value" for key in
                ("contexts", "ranks", "dims", "candidates") if not grid[key]]
    problems += [f"--{key.replace('_', '-')} values must be positive" for key in ("ranks", "dims", "candidates")
                 if any(v < 1 for v in grid[key])]
    problems += [f"--{key.replace('_', '-')} must be >= {lo}" for key, lo in
                 (("repeats", 2), ("table_mib", 1), ("target", 1)) if grid[key] < lo]
    problems += [f"--contexts: {c} is not in [1, {grid['fields'] - 1}]" for c in grid["contexts"]
                 if not 0 < c < grid["fields"]]
    for path in (args.json, args.plot, args.markdown):
        if path and not Path(path).resolve().parent.is_dir():
            problems.append(f"output directory of {path} does not exist")
    target_runs = []
    for path in args.target_runs or ():
        try:
            target_runs.append(target_run(path))
        except (OSError, ValueError) as exc:
            problems.append(f"--target-runs {path}: {exc}")
    if problems:
        raise UserError("; ".join(problems))
    result = run(grid, seed=args.seed, progress=not args.quiet, command=command_line(args))
    if target_runs:
        result["target_runs"] = target_runs
    write_outputs(result, args.json, args.plot, args.markdown)
    checks = target_checks(result["rows"])
    for f_k, f in result["floors"].items():
        print(f"random-gather floor k={f_k}: {f['ns_per_row']:.2f} ns per row ({f['table_mib']} MiB table)")
    for c in checks:
        print(f"target [{c['popularity']}] {c['check']}: {c['measured']:.2f} (target {c['target']}) "
              f"{'met' if c['met'] else 'NOT met'}")
    if not (args.json or args.markdown):
        print(markdown(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.kernels``: the same as ``adrank bench kernels``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=DESCRIPTION)
    add_arguments(p)
    try:
        return run_command(p.parse_args(argv))
    except UserError as exc:
        print(f"benchmarks.kernels: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
