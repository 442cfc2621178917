"""adrank.core.files: a file is replaced whole or left as it was, and no temporary file stays behind."""

from __future__ import annotations

import json

import pytest

from adrank.core.files import replacing, write_json, write_report, write_text


def test_write_replaces_whole_files(tmp_path):
    path = tmp_path / "report.md"
    write_text(path, "first\n")
    write_text(path, "second\n")
    assert path.read_text() == "second\n"
    write_json(tmp_path / "r.json", {"a": [1, 2]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": [1, 2]}
    assert (tmp_path / "r.json").read_text().endswith("}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "report.md"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="renderer failed"):
        with replacing(path) as tmp:
            tmp.write_text("half of the new conte")
            raise RuntimeError("renderer failed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_failed_first_write_creates_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_json(tmp_path / "x.json", {"bad": object()})  # not JSON-serialisable
    assert list(tmp_path.iterdir()) == []


def test_the_temporary_keeps_the_suffix_and_sits_beside_the_target(tmp_path):
    with replacing(tmp_path / "plot.png") as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp.name.startswith(".plot.")
        tmp.write_bytes(b"png")
    assert (tmp_path / "plot.png").read_bytes() == b"png"


def test_write_report_makes_the_folder_and_both_files(tmp_path):
    write_report(tmp_path / "results" / "bench", {"rows": [1]}, "# bench\n")
    assert json.loads((tmp_path / "results" / "bench.json").read_text()) == {"rows": [1]}
    assert (tmp_path / "results" / "bench.md").read_text() == "# bench\n"
