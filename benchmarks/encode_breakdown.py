"""Where a ranking request's time goes outside HTTP: validate, gather columns, hash + look up,
score, sort — for N ads x 20 item fields (and 20 context fields), both ad forms.

The vocabulary holds 50,000 kept values per field (1M+ keys over 40 fields).  Item values are
Criteo-like 8-hex-digit strings (half of them kept, half unseen) plus one numeric item field to
show the non-string path.  Times are medians of thread CPU time over repeated requests.

    python benchmarks/encode_breakdown.py --out docs/results/encode-breakdown
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from adrank.core.files import write_report
from adrank.core.hashing import hash_tokens
from adrank.core.preprocess import Preprocessor, Vocab
from adrank.core.schema import Field, Schema
from service.encode import RequestEncoder, hash_joined_str, join_nonempty_str
from service.kernels.registry import make_scorer


def setup(n_ads: int, mc: int, mi: int, per_field: int, seed: int):
    rng = np.random.default_rng(seed)
    fields = [Field(f"c{i}") for i in range(mc)]
    fields += [Field(f"i{i}", "numeric" if i == mi - 1 else "categorical", "item") for i in range(mi)]
    schema = Schema("enc-bench", tuple(fields))
    values = [[f"{x:08x}" for x in rng.integers(0, 2**32, 2 * per_field)] for _ in fields]
    pre = Preprocessor(schema, Vocab.from_kept([hash_tokens(v[:per_field]) for v in values]))
    item_names = [f.name for f in schema.item_fields]
    ctx = {f.name: values[i][rng.integers(2 * per_field)] for i, f in enumerate(schema.context_fields)}

    def item_value(j):
        if j == mi - 1:
            return float(rng.integers(0, 1000))
        return values[mc + j][rng.integers(2 * per_field)]

    feats = [{n: item_value(j) for j, n in enumerate(item_names)} for _ in range(n_ads)]
    named = [{"id": f"ad-{a}", "features": f} for a, f in enumerate(feats)]
    positional = [{"id": f"ad-{a}", "values": [f[n] for n in item_names]} for a, f in enumerate(feats)]
    return schema, pre, ctx, named, positional


def median_us(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.thread_time_ns()
        fn()
        ts.append(time.thread_time_ns() - t)
    return float(np.median(ts)) / 1e3


def run(args) -> dict:
    schema, pre, ctx, named, positional = setup(args.ads, args.context, args.items, args.per_field, args.seed)
    enc = RequestEncoder(pre)
    n = pre.vocab.n_features
    rng = np.random.default_rng(1)
    m = schema.m
    arrays = {"bias": np.zeros(1, np.float32), "linear": rng.normal(0, 0.1, n).astype(np.float32),
              "emb": rng.normal(0, 0.1, (n, args.k)).astype(np.float32),
              "U": rng.normal(0, 0.5, (2, m)).astype(np.float32), "e": np.ones(2, np.float32),
              "d": np.zeros(m, np.float32)}
    scorer = make_scorer({"kind": "dplr", "schema": schema.to_dict(), "n_features": n}, arrays)
    scorer.warm()
    enc.encode_ads(named)  # compile hash_tokens
    rows = {}
    for form, ads in (("features", named), ("values", positional)):
        ids, X = enc.encode_ads(ads)
        c = enc.encode_context(ctx)
        raw = scorer.score(c, X)
        rows[form] = {
            "validate ads (_check_ads)": median_us(lambda a=ads: enc._check_ads(a), args.repeats),
            "encode ads total": median_us(lambda a=ads: enc.encode_ads(a), args.repeats),
            "encode context": median_us(lambda: enc.encode_context(ctx), args.repeats),
            "score (dplr rho=2 kernel)": median_us(lambda c=c, X=X: scorer.score(c, X), args.repeats),
            "sort + result list": median_us(lambda ids=ids, raw=raw: [(ids[i], s) for i, s in zip(
                np.argsort(-raw, kind="stable").tolist(), raw.tolist(), strict=True)], args.repeats),
        }
    feats = [a["features"] for a in named]
    rows_ = [*map(enc._getter, feats)]
    cols = list(zip(*rows_, strict=True))
    joined = "\x00".join(join_nonempty_str(c) for c in cols[:-1])
    hashes = hash_joined_str(joined, len(cols[:-1]) * args.ads)
    fields = np.repeat(np.arange(args.context, m - 1), args.ads)
    rows["parts (features form)"] = {
        "gather rows (itemgetter per ad)": median_us(lambda: [*map(enc._getter, feats)], args.repeats),
        "transpose to columns (zip)": median_us(lambda: list(zip(*rows_, strict=True)), args.repeats),
        "join 19 str columns (+ type/empty check)": median_us(
            lambda: "\x00".join(join_nonempty_str(c) for c in cols[:-1]), args.repeats),
        "hash 19k tokens (compiled FNV-1a)": median_us(lambda: hash_joined_str(joined, len(hashes)), args.repeats),
        "bucket lookup 19k hashes (compiled)": median_us(lambda: enc.index.lookup(fields, hashes), args.repeats),
        "numeric column (dedup + Preprocessor)": median_us(
            lambda: enc._column(m - 1, cols[-1], [None] * args.ads), args.repeats),
        "for comparison: 19 x Vocab.lookup (searchsorted)": median_us(
            lambda: [pre.vocab.lookup(args.context + j, hashes[j * args.ads:(j + 1) * args.ads])
                     for j in range(len(cols) - 1)], args.repeats),
        "for comparison: Preprocessor.encode_rows (dict rows)": median_us(
            lambda: pre.encode_rows([{**ctx, **a["features"]} for a in named]), max(3, args.repeats // 10)),
    }
    return {"command": " ".join(["python", *sys.argv]), "setup": vars(args), "microseconds": rows}


def markdown(rep: dict) -> str:
    s = rep["setup"]
    out = [f"# Request encoding: where the time goes ({s['ads']} ads x {s['items']} item fields, "
           f"{s['context']} context fields, {s['per_field']:,} kept values per field)", "",
           f"Command: `{rep['command']}`", "", "Median thread CPU time per request, microseconds.", ""]
    for section, rows in rep["microseconds"].items():
        out += [f"## {section}", "", "| step | µs |", "| --- | ---: |"]
        out += [f"| {k} | {v:.0f} |" for k, v in rows.items()]
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ads", type=int, default=1000)
    p.add_argument("--context", type=int, default=20)
    p.add_argument("--items", type=int, default=20)
    p.add_argument("--per-field", type=int, default=50_000)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    rep = run(args)
    md = markdown(rep)
    print(md)
    if args.out:
        write_report(args.out, rep, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
