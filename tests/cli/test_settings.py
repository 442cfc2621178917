"""adrank/cli/settings.py: the CLI's own ADRANK_* variables, read when a command runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from adrank.cli.settings import CliSettings
from adrank.core.errors import UserError


def test_variables_and_defaults():
    s = CliSettings.from_env({"ADRANK_HOME": "/h", "ADRANK_CACHE": "/c", "ADRANK_DEFAULT_ROWS": "500",
                              "ADRANK_DEFAULT_EPOCHS": "2"})
    assert s == CliSettings(home=Path("/h"), cache=Path("/c"), default_rows=500, default_epochs=2)
    d = CliSettings.from_env({})
    assert d == CliSettings(home=Path("~/.cache/adrank/default").expanduser(), cache=None, default_rows=None,
                            default_epochs=None)


@pytest.mark.parametrize("key,value,message", [("ADRANK_DEFAULT_ROWS", "many", "is not an integer"),
                                               ("ADRANK_DEFAULT_EPOCHS", "0", "must be >= 1")])
def test_bad_values_are_named(key, value, message):
    with pytest.raises(UserError, match=f"{key}.*{message}"):
        CliSettings.from_env({key: value})


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
