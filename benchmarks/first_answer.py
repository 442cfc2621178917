"""Time from a fresh clone to the first ranked answer, cold and warm: the newcomer's first command.

    python -m benchmarks.first_answer --repeats 2 --source ../main --source . --out docs/results/first-answer

writes ``<out>.json`` and ``<out>.md``.  Each repeat, for each source (default: this checkout):
``git clone`` of its HEAD into a temporary directory, a fresh virtualenv (timed apart: the README
asks for an environment), a fresh ``HOME`` (nothing cached there by earlier runs), an empty pip
cache (``PIP_CACHE_DIR``; pip's configured wheel sources stay as they are) and an empty
``NUMBA_CACHE_DIR``; then ``./scripts/run --port P`` is started and the README's rank request is
sent until it answers (cold: install + first start, compiling the kernels), the server is stopped
with SIGINT, and the same is done again (warm: the second start).  The load average is recorded
before each start: the machine is shared, so figures at a high load are slower.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from adrank.core.files import write_report

ROOT = Path(__file__).resolve().parents[1]
BODY = json.dumps({"model": "dplr", "context": {"f0": "f0_0", "f1": "f1_3", "f4": "f4_402"},
                   "ads": [{"id": "ad-1", "features": {"f8": "f8_3", "f12": "f12_146"}},
                           {"id": "ad-3", "values": ["f8_3", "f9_13"]}], "top_k": 10}).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ranked(port: int) -> dict | None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/rank", data=BODY,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 - loopback only
            return json.loads(r.read())
    except OSError:
        return None


def start(clone: Path, env: dict, log: Path, timeout: float) -> tuple[float, dict, str]:
    """Seconds from `scripts/run` to the first ranked answer, the answer, and the log."""
    port = free_port()
    t0 = time.perf_counter()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(["./scripts/run", "--port", str(port)], cwd=clone, env=env, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while time.perf_counter() - t0 < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"scripts/run exited with {proc.returncode}: {log.read_text()[-2000:]}")
            answer = ranked(port)
            if answer and answer.get("ads"):
                return time.perf_counter() - t0, answer, log.read_text()
            time.sleep(0.2)
        raise RuntimeError(f"no ranked answer within {timeout:.0f} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def one(source: str, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="adrank-first-answer-") as tmp:
        tmp = Path(tmp)
        clone = tmp / "adrank"
        subprocess.run(["git", "clone", "-q", source, str(clone)], check=True)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True)
        venv_s = time.perf_counter() - t0
        env = {**os.environ, "PATH": f"{tmp / 'venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
               "VIRTUAL_ENV": str(tmp / "venv"), "PIP_CACHE_DIR": str(tmp / "pip-cache"),
               "NUMBA_CACHE_DIR": str(tmp / "numba-cache"), "HOME": str(tmp / "home")}
        (tmp / "home").mkdir()
        env.pop("ADRANK_MODELS", None)
        out = {"venv_s": round(venv_s, 1)}
        for phase in ("cold", "warm"):
            load = os.getloadavg()[0]
            seconds, answer, log = start(clone, env, tmp / f"{phase}.log", timeout)
            out[phase] = {"seconds": round(seconds, 1), "load_before": round(load, 2),
                          "compiled_lines": [line.split("adrank.startup: ", 1)[1] for line in log.splitlines()
                                             if "kernels ready" in line],
                          "answer_version": answer["version"]}
        probe = "import importlib.util as u; print(u.find_spec('torch') is None, u.find_spec('locust') is None)"
        no_torch, no_locust = subprocess.run([str(tmp / "venv" / "bin" / "python"), "-c", probe], check=True,
                                             capture_output=True, text=True).stdout.split()
        out["installed"] = {"torch": no_torch != "True", "locust": no_locust != "True"}
        return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--source", action="append", help="repository to clone (default: this checkout); given "
                    "several times, the sources take turns in every repeat (a side-by-side comparison)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--out", default="docs/results/first-answer")
    args = ap.parse_args(argv)
    sources = args.source or [str(ROOT)]
    heads = {src: subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=src, capture_output=True,
                                 text=True).stdout.strip() for src in sources}
    runs = [{"source": src, "commit": heads[src], "repeat": rep, **one(src, args.timeout)}
            for rep in range(args.repeats) for src in sources]
    data = {"command": "python -m benchmarks.first_answer " + shlex.join(argv or sys.argv[1:]),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_average_end": os.getloadavg()}, "runs": runs}
    md = ["# From a fresh clone to the first ranked answer", "",
          f"Command: `{data['command']}`; {os.cpu_count()} CPUs shared with other work. Each run: "
          "`git clone`, a fresh virtualenv (timed apart), empty pip and Numba caches, then `./scripts/run` "
          "until the README's rank request answers (cold), stopped, started again (warm). The load average "
          "before each start is shown: the machine is shared." + (" Sources take turns in every repeat." if
                                                                   len(sources) > 1 else ""), "",
          "| source (commit) | repeat | venv (s) | cold: clone -> first answer (s) | load | warm: second start (s) "
          "| load | torch installed |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        md.append(f"| {r['source']} ({r['commit']}) | {r['repeat'] + 1} | {r['venv_s']} | {r['cold']['seconds']} "
                  f"| {r['cold']['load_before']} | {r['warm']['seconds']} | {r['warm']['load_before']} "
                  f"| {'yes' if r['installed']['torch'] else 'no'} |")
    for src in sources:
        first = next(r for r in runs if r["source"] == src)
        if first["cold"]["compiled_lines"]:
            md += ["", f"Kernel warm-up of {src}'s first cold start (from its log):", ""]
            md += [f"- {line}" for line in first["cold"]["compiled_lines"]]
    write_report(args.out, data, "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
