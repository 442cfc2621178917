"""service/settings.py: every serve knob read from ADRANK_* once, round-tripped for the workers,
named when wrong, and the kernel knobs reaching every served model's scorer."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.kernels import pool, schedule
from service.settings import ModelSpec, Settings, SettingsError

ENV = {
    "ADRANK_MODELS": "a=/m/a.adrk, b=/m/b.adrk",
    "ADRANK_MAX_CANDIDATES": "17",
    "ADRANK_MAX_BODY_BYTES": "4096",
    "ADRANK_MAX_INFLIGHT": "3",
    "ADRANK_RETRY_AFTER": "5",
    "ADRANK_ADMIN": "0",
    "ADRANK_ADMIN_TOKEN": "s3cret",
    "ADRANK_GC_FREEZE": "off",
    "ADRANK_CATALOG": "/m/ads.jsonl",
    "ADRANK_FASTPATH": "0",
    "ADRANK_HUGE_PAGES": "false",
    "ADRANK_PREFETCH_LINEAR": "no",
    "ADRANK_PARALLEL_MIN_CANDIDATES": "99",
    "ADRANK_KERNEL_THREADS": "3",
    "ADRANK_STATE_DIR": "/var/lib/x",
    "ADRANK_LOG": "redis://h:6379/2",
    "ADRANK_LOG_KEY": "fleet",
    "ADRANK_LOG_POLL": "0.25",
    "ADRANK_LOG_COMPACT": "10",
    "ADRANK_CATALOG_MERGE_ROWS": "500",
    "ADRANK_LOAD_TIMEOUT": "7",
    "ADRANK_DRAIN_SECONDS": "0",
    "ADRANK_SWITCH_INTERVAL": "0.001",
    "ADRANK_MODEL_DIR": "/m",
    "ADRANK_MAX_TOP_K": "50",
    "ADRANK_QUEUE_BUDGET": "0.01",
    "ADRANK_HEADER_TIMEOUT": "2",
    "ADRANK_BODY_TIMEOUT": "3",
    "ADRANK_DOCS": "0",
    "ADRANK_ACCESS_LOG": "json",
}


def test_every_variable_is_read():
    s = Settings.from_env(ENV)
    assert s == Settings(models=(ModelSpec("a", Path("/m/a.adrk")), ModelSpec("b", Path("/m/b.adrk"))),
                         max_candidates=17, max_body_bytes=4096, max_inflight=3, retry_after=5, admin_enabled=False,
                         admin_token="s3cret", gc_freeze=False,
                         catalog=Path("/m/ads.jsonl"), fastpath=False, huge_pages=False, prefetch_linear=False,
                         parallel_min_candidates=99, kernel_threads=3, state_dir=Path("/var/lib/x"),
                         log_url="redis://h:6379/2", log_key="fleet", log_poll=0.25, compact_entries=10, merge_rows=500,
                         load_timeout=7.0, drain_seconds=0.0, switch_interval=0.001,
                         model_dir=Path("/m"), max_top_k=50, queue_budget=0.01, header_timeout=2.0, body_timeout=3.0,
                         docs=False, access_log="json")
    assert s.scorer_options() == {"huge_pages": False, "prefetch_linear": False, "parallel_min": 99, "threads": 3}


def test_defaults_and_round_trip():
    assert Settings.from_env({}) == Settings()
    assert Settings().parallel_min_candidates == pool.PARALLEL_MIN_CANDIDATES
    assert Settings().scorer_options() == {"huge_pages": True, "prefetch_linear": True,
                                           "parallel_min": pool.PARALLEL_MIN_CANDIDATES, "threads": None}
    for s in (Settings(), Settings.from_env(ENV)):
        assert Settings.from_env(s.to_env()) == s  # what `adrank serve` hands its workers


@pytest.mark.parametrize("key,value,message", [
    ("ADRANK_HUGE_PAGES", "maybe", "ADRANK_HUGE_PAGES='maybe' must be 1/0"),
    ("ADRANK_FASTPATH", "2", "ADRANK_FASTPATH='2' must be 1/0"),
    ("ADRANK_KERNEL_THREADS", "0", "ADRANK_KERNEL_THREADS=0 must be >= 1"),
    ("ADRANK_PARALLEL_MIN_CANDIDATES", "many", "ADRANK_PARALLEL_MIN_CANDIDATES='many' is not an integer"),
    ("ADRANK_LOG_POLL", "-1", "ADRANK_LOG_POLL='-1' must be > 0"),
    ("ADRANK_DRAIN_SECONDS", "-1", "ADRANK_DRAIN_SECONDS='-1' must be >= 0"),
    ("ADRANK_CATALOG_MERGE_ROWS", "0", "ADRANK_CATALOG_MERGE_ROWS=0 must be >= 1"),
])
def test_bad_values_are_named(key, value, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({key: value})


def test_kernel_settings_reach_the_served_scorers(tmp_path):
    """The app loads every model with the settings' kernel options (models.load_ranker)."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from tests.service.helpers import make_artifact

    make_artifact(tmp_path / "d.adrk", "dplr", seed=1)
    make_artifact(tmp_path / "f.adrk", "fm", seed=2)
    settings = Settings(models=(ModelSpec("d", tmp_path / "d.adrk"), ModelSpec("f", tmp_path / "f.adrk")),
                        gc_freeze=False, huge_pages=False, prefetch_linear=False, parallel_min_candidates=7,
                        kernel_threads=3)
    with TestClient(create_app(settings)) as c:
        rankers = [mv.ranker for mv in c.app.state.svc.state.snapshot.models.values()]
        assert [r.name for r in rankers] == ["d", "f"]
        for r in rankers:
            s = r.scorer
            assert (s.huge_pages, s.parallel_min, s.threads) == (False, 7, 3)
            assert s.prefetch_mode == schedule.PREFETCH_MODE & ~schedule.PF_LINEAR
    with TestClient(create_app(Settings(models=settings.models, gc_freeze=False))) as c:
        s = c.app.state.svc.state.snapshot.model("d").ranker.scorer
        assert (s.huge_pages, s.parallel_min, s.threads) == (True, pool.PARALLEL_MIN_CANDIDATES, pool.default_threads())
        assert s.prefetch_mode == schedule.PREFETCH_MODE


def test_admin_token_file(tmp_path):
    """The token `adrank serve` generates travels to the workers as a file name, never as a value."""
    f = tmp_path / "admin-token"
    f.write_text("t" * 32 + "\n")
    s = Settings.from_env({"ADRANK_ADMIN_TOKEN_FILE": str(f)})
    assert s.admin_token == "t" * 32 and s.admin_token_file == f
    assert "ADRANK_ADMIN_TOKEN" not in s.to_env() and Settings.from_env(s.to_env()) == s
    f.write_text("short")
    with pytest.raises(SettingsError, match="at least 16"):
        Settings.from_env({"ADRANK_ADMIN_TOKEN_FILE": str(f)})
    with pytest.raises(SettingsError, match="ADRANK_ADMIN_TOKEN_FILE"):
        Settings.from_env({"ADRANK_ADMIN_TOKEN_FILE": str(tmp_path / "missing")})
    with pytest.raises(SettingsError, match="ADRANK_ACCESS_LOG"):
        Settings.from_env({"ADRANK_ACCESS_LOG": "xml"})
