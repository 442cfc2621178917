"""service/modelfile.py: a served model is read into private memory and verified on the bytes read;
the file can then be overwritten, truncated or deleted without any effect; a FIFO, a device or a
directory is refused at once (never a blocking open), and a read past its timeout is refused."""

from __future__ import annotations

import os
import shutil
import threading
import time

import numpy as np
import pytest

from adrank.core.artifact import read_artifact
from service.kernels import memory
from service.modelfile import read_owned
from service.ranker import Ranker
from tests.service.helpers import make_artifact, random_request, reference_scores


@pytest.fixture
def art(tmp_path):
    path = tmp_path / "m.adrk"
    return path, make_artifact(path, "dplr", seed=3)


def test_owned_arrays_equal_the_file_and_share_nothing_with_it(art):
    path, _ = art
    owned, mapped = read_owned(path), read_artifact(path)
    assert owned.version == mapped.version and owned.manifest == mapped.manifest
    assert owned.arrays.keys() == mapped.arrays.keys()
    for name, a in owned.arrays.items():
        np.testing.assert_array_equal(a, mapped.arrays[name])
        assert a.dtype == mapped.arrays[name].dtype and a.shape == mapped.arrays[name].shape
        assert not a.flags.writeable and a.ctypes.data % memory.ALIGNMENT == 0
        assert not np.shares_memory(a, mapped.arrays[name])


def test_resident_tables_are_read_once_into_huge_page_memory(tmp_path):
    """A table of >= 2 MiB is read straight into resident memory; the Scorer keeps it as is."""
    from adrank.core.artifact import write_artifact
    from exporter.synthetic import make_schema, synthetic_model

    sm = synthetic_model("dplr", make_schema(2, 2), values_per_field=20_000, k=32)
    manifest, arrays = sm.artifact_parts()
    manifest = {**manifest, "format": "adrank-artifact"}
    write_artifact(tmp_path / "big.adrk", manifest, arrays)
    owned = read_owned(tmp_path / "big.adrk", huge_pages=True)
    emb = owned.arrays["emb"]
    assert emb.nbytes >= memory.HUGE_PAGE and memory.is_resident(emb) and emb.ctypes.data % memory.HUGE_PAGE == 0
    assert memory.resident(emb) is emb  # no second copy
    r = Ranker.load(tmp_path / "big.adrk")
    assert memory.is_resident(r.scorer.emb)  # kept as read: no second copy
    plain = read_owned(tmp_path / "big.adrk", huge_pages=False)
    assert not memory.is_resident(plain.arrays["emb"])
    np.testing.assert_array_equal(plain.arrays["emb"], emb)


@pytest.mark.parametrize("change", ["overwrite", "truncate", "delete", "replace"])
def test_the_file_changing_under_a_loaded_model_changes_nothing(art, tmp_path, change):
    path, params = art
    ranker = Ranker.load(path, name="m")
    req = random_request(np.random.default_rng(0), 30)
    before = ranker.rank(req["context"], req["ads"])
    other = tmp_path / "other.adrk"
    make_artifact(other, "dplr", seed=4)
    if change == "overwrite":  # in place, like cp: same inode, new bytes
        with open(path, "r+b") as f:
            f.write(other.read_bytes())
    elif change == "truncate":
        os.truncate(path, 100)
    elif change == "delete":
        path.unlink()
    else:
        shutil.copy(other, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
    assert ranker.rank(req["context"], req["ads"]) == before
    want = reference_scores("dplr", params, req)
    np.testing.assert_allclose([s for _, s in before], sorted(want.values(), reverse=True), rtol=1e-5)


def test_not_a_regular_file_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.adrk"
    os.mkfifo(fifo)
    done = []
    t = threading.Thread(target=lambda: done.append(_code(fifo)), daemon=True)
    t.start()
    t.join(5)
    assert done == ["not_a_regular_file"], "opening a FIFO must neither block nor succeed"
    assert _code(tmp_path) == "not_a_regular_file"
    assert _code("/dev/zero") == "not_a_regular_file"
    assert _code(tmp_path / "absent.adrk") == "not_found"


def test_damage_is_named_from_the_bytes_read(art, tmp_path):
    path, _ = art
    data = path.read_bytes()
    cases = {"checksum_mismatch": data[:-1] + bytes([data[-1] ^ 1]), "truncated": data[:200],
             "trailing_bytes": data + b"x", "bad_magic": b"X" * 100}
    for code, raw in cases.items():
        bad = tmp_path / f"{code}.adrk"
        bad.write_bytes(raw)
        assert _code(bad) == code


def test_a_read_past_its_timeout_is_refused(art):
    path, _ = art
    t0 = time.monotonic()
    assert _code(path, timeout=0) == "read_timeout"
    assert time.monotonic() - t0 < 1


def _code(path, **kw):
    try:
        read_owned(path, **kw)
    except Exception as exc:  # noqa: BLE001
        return getattr(exc, "code", repr(exc))
    return "ok"
