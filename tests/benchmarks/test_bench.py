"""`adrank bench kernels` on a tiny grid: valid JSON rows, plot and summary; bad input named.

No timing asserts: only the structure of the results and the benchmark's own invariants
(matched parameter counts, traffic inside each field's id range, FM as its own reference).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from adrank.cli import main
from benchmarks import kernels

ROOT = Path(__file__).resolve().parents[2]

TINY = ["--contexts", "20", "--dims", "8", "--candidates", "10,30", "--ranks", "1", "--repeats", "2",
        "--table-mib", "1", "--target", "30", "--quiet"]


def test_tiny_grid_writes_rows_plot_and_summary(tmp_path):
    out, png, md = tmp_path / "k.json", tmp_path / "k.png", tmp_path / "k.md"
    assert main(["bench", "kernels", *TINY, "--json", str(out), "--plot", str(png), "--markdown", str(md)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    # 4 models (fm, fwfm, dplr-1, pruned-1) x 2 sizes x 2 popularity variants
    assert len(rows) == 16
    assert {r["model"] for r in rows} == {"fm", "fwfm", "pruned", "dplr"}
    for r in rows:
        for key in kernels.REQUIRED:
            assert key in r, key
        assert r["context_fields"] == 20 and r["item_fields"] == 20 and r["embed_dim"] == 8
        assert r["candidates"] in (10, 30) and r["popularity"] in ("uniform", "zipf")
        assert r["ns_per_candidate"] > 0 and r["x_floor"] > 0 and r["repeats"] == 2
        assert r["us_per_auction_p25"] <= r["us_per_auction"] <= r["us_per_auction_p75"]
        assert r["rank"] == (1 if r["model"] in ("dplr", "pruned") else None)
        if r["model"] == "fm":
            assert r["x_fm"] == 1.0
    m = 40
    for r in rows:  # matched parameter counts: rho (m + 1) for both DPLR and pruned
        if r["model"] in ("dplr", "pruned"):
            assert r["interaction_params"] == m + 1
        if r["model"] == "pruned":
            assert r["n_pairs"] == m + 1 and sum(r["pair_blocks"]) == m + 1
    assert result["floors"]["8"]["ns_per_row"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md.read_text()
    assert "Random-gather floor" in text and "dplr-1" in text and "adrank bench kernels" in text


@pytest.mark.parametrize("args, message", [
    (["--contexts", "40"], "--contexts: 40 is not in [1, 39]"),
    (["--repeats", "1"], "--repeats must be >= 2"),
    (["--dims", "0"], "--dims values must be positive"),
    (["--json", "/nonexistent-dir/k.json"], "output directory of /nonexistent-dir/k.json does not exist"),
])
def test_bad_arguments_are_named(tmp_path, capsys, args, message):
    assert main(["bench", "kernels", *TINY, *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("popularity", ["uniform", "zipf"])
def test_traffic_stays_in_each_fields_ids(popularity):
    m, V, c = 6, 50, 2
    t = kernels.Traffic(np.random.default_rng(0), m, V, popularity)
    auctions = t.auctions(c, 400, 3)
    assert len(auctions) == 3
    for ctx, items in auctions:
        assert ctx.dtype == np.int32 and ctx.shape == (c,) and items.shape == (400, m - c)
        assert np.all(ctx // V == np.arange(c))
        assert np.all(items // V == np.arange(c, m)[None, :])
    ids = np.concatenate([a[1][:, 0] for a in auctions])
    top_share = np.bincount(ids - c * V, minlength=V).max() / len(ids)
    if popularity == "zipf":  # rank-1 value of Zipf(1.1) over 50 values holds ~ 1/H ~ 0.2 of the mass
        assert top_share > 0.1
    else:
        assert top_share < 0.1


def test_pruned_mask_keeps_the_largest_entries():
    rng = np.random.default_rng(1)
    R = np.triu(rng.normal(size=(8, 8)), 1)
    R = R + R.T
    mask = kernels.top_pairs_mask(R, 9)
    assert np.array_equal(mask, mask.T) and mask.sum() == 18 and not mask.diagonal().any()
    kept = np.abs(R[np.triu(mask, 1)])
    dropped = np.abs(R[np.triu(~mask, 1)])
    assert kept.min() >= dropped.max()


def test_target_runs_are_summarised_and_kept(tmp_path):
    """Separate runs of the target cell fold into a 'Target runs' section with their seeds and checks."""
    cell = ["--contexts", "20", "--dims", "16", "--candidates", "1000", "--ranks", "2", "--repeats", "2",
            "--table-mib", "1", "--target", "1000", "--popularity", "uniform", "--quiet"]
    runs = []
    for seed in (0, 2):
        runs.append(tmp_path / f"t{seed}.json")
        assert main(["bench", "kernels", *cell, "--seed", str(seed), "--json", str(runs[-1])]) == 0
    out, md = tmp_path / "k.json", tmp_path / "k.md"
    assert main(["bench", "kernels", *TINY, "--target-runs", *map(str, runs), "--json", str(out),
                 "--markdown", str(md)]) == 0
    kept = json.loads(out.read_text())["target_runs"]
    assert [r["seed"] for r in kept] == [0, 2]
    for run, path in zip(kept, runs, strict=True):
        rows = {r["name"]: r["ns_per_candidate"] for r in run["rows"]}
        assert set(rows) >= {"fm", "dplr-2", "pruned-2"}
        source = {r["name"]: r["ns_per_candidate"] for r in json.loads(path.read_text())["rows"]}
        assert rows == {k: source[k] for k in rows}
        assert [c["check"] for c in run["checks"]] == ["DPLR rho=2 / FM", "DPLR rho=2 / pruned rho=2",
                                                       "pruned rho=2 / FM"]
        fm_ratio = run["checks"][0]["measured"]
        assert fm_ratio == pytest.approx(rows["dplr-2"] / rows["fm"], abs=1e-3)
    text = md.read_text()
    assert "## Target runs" in text and text.count("| uniform |") >= 2 and "--seed 2" in text


def test_bad_target_run_file_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": []}')
    assert main(["bench", "kernels", *TINY, "--target-runs", str(bad)]) == 2
    assert f"--target-runs {bad}: not an `adrank bench kernels --json` result" in capsys.readouterr().err
