"""Progress bars only on a terminal: a bar redraws itself with carriage returns, which in a log
file or a pipe leave one line per update (tqdm wrote 50 KB of them into a server's log)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios

from adrank.cli.default_model import SHIPPED

# a long start-up step with a progress bar: loading a catalog (here in batches of 2 ads)
LOAD_CATALOG = """
import sys
import service.catalog.store as store
from service.catalog.store import Catalog, Model
from service.ranker import Ranker

store.BATCH = 2
catalog = Catalog([Model.from_ranker(Ranker.load(sys.argv[1], name="dplr"))])
catalog.load_jsonl(sys.argv[2], progress=True)
print(f"loaded {len(catalog.view)} ads", file=sys.stderr)
"""


def catalog_file(tmp_path):
    example = json.loads((SHIPPED / "default.json").read_text())["example"]
    path = tmp_path / "ads.jsonl"
    path.write_text("".join(json.dumps({"id": f"ad-{i}", "features": example["ads"][i % 3]["features"]}) + "\n"
                            for i in range(20)))
    return path


def test_no_progress_bar_in_a_log(tmp_path):
    log = tmp_path / "server.log"
    with open(log, "wb") as fh:
        subprocess.run([sys.executable, "-c", LOAD_CATALOG, str(SHIPPED / "dplr.adrk"), str(catalog_file(tmp_path))],
                       stderr=fh, check=True, timeout=120)
    text = log.read_bytes()
    assert b"loaded 20 ads" in text and b"\r" not in text and b"catalog dplr" not in text


def test_progress_bar_on_a_terminal(tmp_path):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.Popen([sys.executable, "-c", LOAD_CATALOG, str(SHIPPED / "dplr.adrk"),
                             str(catalog_file(tmp_path))], stderr=slave)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=120) == 0
    assert b"catalog dplr" in out and b"\r" in out and b"10/10" in out
