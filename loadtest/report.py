"""Markdown table, JSON and PNG plots of a `loadtest compare` result (written atomically)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from adrank.core.files import replacing

AGAIN = "-again"  # name suffix of the --control copy (loadtest.compare)


def _fmt(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(result: dict) -> str:
    s = result["settings"]
    catalog = s.get("traffic") == "catalog"
    pin = s.get("pin")
    placement = (f"server pinned to CPU {','.join(map(str, pin['server_cpus']))}, Locust to CPU "
                 f"{','.join(map(str, pin['client_cpus']))}" if pin else "server and Locust not pinned")
    if catalog:
        ads = (f"ads by id alone (`{{\"id\": ...}}`), distinct within a request and drawn uniformly from a "
               f"server-side catalog of {s['catalog_ads']:,} generated ads (`adrank serve --catalog`; item values "
               "Zipf-popular, 2% unseen, 1% missing; per-ad parts precomputed); context raw values Zipf-popular "
               "from the model's values file")
    else:
        ads = s.get("source") or "raw values Zipf-popular from the model's values file, 2% unseen, 1% missing"
    recorded = str(s.get("source", "")).startswith("the request bodies")
    counts = ("as recorded" if recorded else f"log-normal (median {s['median_candidates']:g}, sigma {s['sigma']:g}, "
              f"at most {s['max_candidates']})")
    server = (f"{s['workers']} server worker(s) on 127.0.0.1" if s.get("workers") is not None
              else f"the server {s['server']} (its own workers and settings)")
    lines = [f"# Load test: {', '.join(result['models'])}", "",
             f"Command: `{result['command']}`  ",
             f"{result['time']}; {server}, every model in the same server, "
             f"one model at a time; {s['rps']:g} req/s offered ({_arrivals(s)}) for "
             f"{s['duration_s']:g} s per run after a {s['warmup_s']:g} s warm-up per model; {s['repeats']} rounds "
             f"interleaved ({' '.join(result['models'])}"
             + (" rotated by one model each round" if s.get("arrivals") else " ...") + f"); {placement}. Machine: {result['machine']['cpus']} CPUs shared "
             f"with other work (load average at the end "
             f"{tuple(round(x, 2) for x in result['machine']['load_average_end'])}).", "",
             f"Traffic: a pool of {s['pool']['requests']} requests replayed identically for every model; candidates "
             f"per request {counts}: mean {s['pool']['candidates_mean']:.0f}, P50 {s['pool']['candidates_p50']:.0f}, "
             f"P99 {s['pool']['candidates_p99']:.0f}; {ads}.", "",
             "Client-side percentiles come from raw per-request timings (a Locust request hook, not Locust's "
             "whole-millisecond statistics); server-side ones from the difference of the Prometheus histograms "
             "scraped from /metrics before and after each run (`adrank_request_duration_seconds` = handler, "
             "`adrank_model_inference_duration_seconds` = the model's part: on the compiled fast path "
             "(service/fastpath, taken by these requests) body scan + encoding + scoring + sorting + response "
             "bytes, on the generic path Ranker.rank), "
             "interpolated inside buckets like `histogram_quantile`. Achieved RPS = (requests - 1) / (last start - "
             "first start) of each run, averaged over runs.", "",
             "| model | achieved RPS | error rate | client P50 / P95 / P99 (ms) | server P50 / P95 / P99 (ms) "
             "| inference P50 / P95 / P99 (ms) | requests |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for m in result["summary"]:
        lines.append(
            f"| {m['model']} | {m['achieved_rps']:.1f} | {_fmt(100 * m['error_rate'] if m['error_rate'] is not None else None)}% "
            f"| {_fmt(m['client_p50_ms'])} / {_fmt(m['client_p95_ms'])} / {_fmt(m['client_p99_ms'])} "
            f"| {_fmt(m['server_p50_ms'])} / {_fmt(m['server_p95_ms'])} / {_fmt(m['server_p99_ms'])} "
            f"| {_fmt(m['inference_p50_ms'])} / {_fmt(m['inference_p95_ms'])} / {_fmt(m['inference_p99_ms'])} "
            f"| {m['requests']} |")
    lines += _catalog_cpu(result) if catalog else _inline_cpu(result)
    lines += _per_run(result)
    lines += _pairs(result, "cpu_catalog_ms" if catalog else "cpu_score_ms")
    return "\n".join(lines) + "\n"


def _arrivals(s: dict) -> str:
    if s.get("arrivals") == "uniform":
        return "Locust FastHttpUser, open loop, evenly spaced arrivals"
    if s.get("arrivals") == "poisson":
        return "Locust FastHttpUser, open loop, Poisson arrivals"
    return "Locust FastHttpUser, constant_throughput"  # results written before --arrivals


def _catalog_cpu(result: dict) -> list[str]:
    lines = ["", "In process, same pool and catalog, no HTTP (thread-CPU ms per request of `service.pipeline."
             "answer`: context part, id lookups, per-ad dot products, sort, response bytes — what `/v1/rank` "
             "runs for these requests; back to back, so caches are warm):", "",
             "| model | mean | median |", "| --- | --- | --- |"]
    for m in result["summary"]:
        if m.get("cpu_catalog_ms"):
            lines.append(f"| {m['model']} | {m['cpu_catalog_ms']:.3f} | {m['cpu_catalog_p50_ms']:.3f} |")
    return lines


def _inline_cpu(result: dict) -> list[str]:
    fast = any(m.get("cpu_fast_ms") for m in result["summary"])
    lines = ["", "In process, same pool, no HTTP (mean thread-CPU ms per request; encode = raw values -> ids, "
              "score = `Scorer.score`, rank = `Ranker.rank` whole"
              + ("; fast path = `service.fastpath`: scan = raw body -> ids, whole = `service.pipeline.answer` (scan + score + "
                 "sort + response bytes), what `/v1/rank` runs for these requests" if fast else "") + "):", "",
              "| model | encode | score | rank | score share of rank |"
              + (" fast path scan | fast path whole | score share of fast path |" if fast else ""),
              "| --- | --- | --- | --- | --- |" + (" --- | --- | --- |" if fast else "")]
    for m in result["summary"]:
        if m.get("cpu_rank_ms"):
            row = (f"| {m['model']} | {m['cpu_encode_ms']:.2f} | {m['cpu_score_ms']:.3f} | {m['cpu_rank_ms']:.2f} "
                   f"| {100 * m['cpu_score_ms'] / m['cpu_rank_ms']:.0f}% |")
            if fast:
                row += (f" {_fmt(m.get('cpu_fast_scan_ms'))} | {_fmt(m.get('cpu_fast_ms'))} | "
                        + (f"{100 * m['cpu_score_ms'] / m['cpu_fast_ms']:.0f}% |" if m.get("cpu_fast_ms") else "- |"))
            lines.append(row)
    return lines


def _per_run(result: dict) -> list[str]:
    lines = ["", "Per run (client P50 / P99, server P99, ms):", "",
              "| round | " + " | ".join(result["models"]) + " |", "| --- | " + " | ".join("---" for _ in result["models"]) + " |"]
    for rep in sorted({r["repeat"] for r in result["runs"]}):
        cells = []
        for name in result["models"]:
            r = next((x for x in result["runs"] if x["repeat"] == rep and x["model"] == name), None)
            cells.append("-" if r is None else f"{_fmt(r['client_p50_ms'])} / {_fmt(r['client_p99_ms'])}, "
                                               f"{_fmt(r['server_p99_ms'])}")
        lines.append(f"| {rep + 1} | " + " | ".join(cells) + " |")
    return lines


def _pairs(result: dict, cpu_key: str) -> list[str]:
    lines = []
    pairs = [(m, next((x for x in result["summary"] if x["model"] == m["model"].replace("dplr", "pruned")), None))
             for m in result["summary"] if m["model"].startswith("dplr")]
    pairs = [(d, p) for d, p in pairs if p is not None]
    control = result["settings"].get("control")
    again = next((x for x in result["summary"] if control and x["model"] == control + AGAIN), None)
    if again is not None:  # A/A: the same artifact twice, the noise floor of every ratio
        pairs.append((again, next(x for x in result["summary"] if x["model"] == control)))
    if pairs:
        lines += ["", "DPLR vs pruned at the same rho (same run; ratio < 1 = DPLR faster). Per round = the server "
                  "P99 ratio of each interleaved round: when its range spans 1, the pooled ratio is within the "
                  "round-to-round noise."
                  + (f" The last row (A/A control) is {control} against itself under another name: how far "
                     "two identical models' figures differ in this run." if again is not None else ""), "",
                  "| pair | server P99 DPLR / pruned (ms) | ratio | per round: DPLR lower, ratio range "
                  "| client P99 ratio | inference P50 ratio | in-process "
                  + ("catalog rank" if cpu_key == "cpu_catalog_ms" else "score") + " ratio |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for d, p in pairs:
            label = f"{d['model']} vs {p['model']}" + (" (A/A control)" if d is again else "")
            lines.append(f"| {label} | {_fmt(d['server_p99_ms'])} / {_fmt(p['server_p99_ms'])} "
                         f"| {_ratio(d['server_p99_ms'], p['server_p99_ms'])} | {_per_round(result['runs'], d, p)} "
                         f"| {_ratio(d['client_p99_ms'], p['client_p99_ms'])} "
                         f"| {_ratio(d['inference_p50_ms'], p['inference_p50_ms'])} "
                         f"| {_ratio(d.get(cpu_key), p.get(cpu_key))} |")
    return lines


def _per_round(runs: list, d: dict, p: dict) -> str:
    """"k of n, lo-hi": rounds where DPLR's server P99 is below pruned's, and the range of the ratio."""
    by = {(r["repeat"], r["model"]): r.get("server_p99_ms") for r in runs}
    ratios = [by[rep, d["model"]] / by[rep, p["model"]] for rep in sorted({r["repeat"] for r in runs})
              if by.get((rep, d["model"])) and by.get((rep, p["model"]))]
    if not ratios:
        return "-"
    return f"{sum(x < 1 for x in ratios)} of {len(ratios)}, {min(ratios):.2f}-{max(ratios):.2f}"


def _ratio(a, b) -> str:
    return "-" if not a or not b else f"{a / b:.2f}"


def plot(result: dict, summaries: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    names = [m["model"] for m in summaries]
    x = np.arange(len(names))
    for i, (side, label) in enumerate((("client", "client"), ("server", "server (histogram)"),
                                       ("inference", "inference (histogram)"))):
        for j, q in enumerate((50, 99)):
            vals = [m[f"{side}_p{q}_ms"] or 0 for m in summaries]
            ax1.bar(x + (2 * i + j - 2.5) * 0.13, vals, 0.13, label=f"{label} P{q}")
    ax1.set(xticks=x, ylabel="ms (log)", yscale="log", title="latency percentiles per model")
    ax1.set_xticklabels(names, rotation=20)
    ax1.legend(fontsize=7)
    for m in summaries:
        sec = np.sort(m["_seconds"]) * 1e3
        if len(sec):
            ax2.plot(sec, np.arange(1, len(sec) + 1) / len(sec), label=m["model"])
    ax2.set(xscale="log", xlabel="client latency (ms, raw timings)", ylabel="fraction of requests",
            title=f"client latency CDF at {result['settings']['rps']:g} req/s")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(result: dict, runs: list[dict], out_dir: Path, name: str) -> None:
    summaries = result["summary"]
    clean = {**result, "summary": [{k: v for k, v in m.items() if not k.startswith("_")} for m in summaries]}
    stem = out_dir / f"loadtest-{name}"
    for suffix, render in ((".json", lambda p: p.write_text(json.dumps(clean, indent=1) + "\n")),
                           (".md", lambda p: p.write_text(markdown(clean))),
                           (".png", lambda p: plot(clean, summaries, p))):
        with replacing(stem.with_suffix(suffix)) as tmp:
            render(tmp)
    result["summary"] = clean["summary"]
