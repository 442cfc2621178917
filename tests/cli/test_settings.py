"""adrank/cli/settings.py: the CLI's own ADRANK_* variables, read when a command runs."""

from __future__ import annotations

from pathlib import Path

from adrank.cli.settings import CliSettings


def test_variables_and_defaults():
    assert CliSettings.from_env({"ADRANK_CACHE": "/c"}) == CliSettings(cache=Path("/c"))
    assert CliSettings.from_env({}) == CliSettings(cache=None)


def test_train_takes_the_cache_from_adrank_cache(tmp_path, monkeypatch):
    """`adrank train` encodes into $ADRANK_CACHE (training.data itself reads no variable)."""
    from adrank.cli import main
    from training.generate import generate

    generate(tmp_path / "gen", rows=600, vocab=50, fields=4, context_fields=2, seed=1, progress=False)
    monkeypatch.setenv("ADRANK_CACHE", str(tmp_path / "env-cache"))
    monkeypatch.chdir(tmp_path)
    rc = main(["train", "--dataset", "synthetic", "--data", str(tmp_path / "gen"), "--model", "fm",
               "--embed-dim", "4", "--epochs", "1", "--min-count", "1", "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 0
    assert len(list((tmp_path / "env-cache").iterdir())) == 1 and not (tmp_path / ".adrank").exists()
