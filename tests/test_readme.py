"""The READMEs' commands run verbatim: every `adrank ...` line of their code blocks parses with the
real command line (a missing --out or an unknown flag fails here, not on a newcomer's screen);
the quick start's curl commands, run as written against the embedded default models, answer
what the README shows; the docker README's copy command finds its files."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import msgspec
import pytest

from adrank.cli.main import build_parser
from tests.service.helpers import Server

REPO = Path(__file__).resolve().parents[1]

DOCS = ("README.md", "docker/README.md", "docker/models/README.md", "loadtest/README.md")


def code_blocks(text: str) -> list[str]:
    """Fenced blocks and 4-space indented blocks (docker/README uses those)."""
    fenced = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    rest = re.sub(r"```.*?```", "", text, flags=re.S)
    indented = re.findall(r"(?:^|\n\n)((?:    .+\n?)+)", rest)
    return fenced + ["\n".join(line[4:] for line in block.splitlines()) for block in indented]


def commands(block: str) -> list[str]:
    """Shell command lines of a block, backslash continuations joined, output and comment lines dropped."""
    lines = block.replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith(("#", "{", "}"))]


def adrank_lines() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for block in code_blocks((REPO / doc).read_text()):
            for cmd in commands(block):
                for part in re.split(r"\s*(?:&&|;|\|)\s*", cmd):
                    if part.startswith("adrank "):
                        out.append((doc, part))
    return out


def test_the_docs_show_adrank_commands():
    docs = {doc for doc, _ in adrank_lines()}
    assert {"README.md", "docker/README.md", "docker/models/README.md", "loadtest/README.md"} <= docs


@pytest.mark.parametrize("doc,line", adrank_lines(), ids=lambda x: x[:60] if isinstance(x, str) else None)
def test_adrank_command_in_the_docs_parses(doc, line):
    parser = build_parser()
    try:
        args = parser.parse_args(shlex.split(line, comments=True)[1:])
    except SystemExit as exc:
        pytest.fail(f"{doc}: `{line}` does not parse (exit {exc.code})")
    assert getattr(args, "_run", None) is not None, f"{doc}: `{line}` names no command"


def quick_start_block() -> str:
    readme = (REPO / "README.md").read_text()
    return next(b for b in code_blocks(readme) if "curl -s localhost:8000/v1/rank" in b)


@pytest.mark.slow
def test_quick_start_curls_answer_what_the_readme_shows(tmp_path):
    block = quick_start_block()
    shown = next(line for line in block.splitlines() if line.startswith('# {"model"'))
    env = {k: v for k, v in os.environ.items() if k != "ADRANK_MODELS"}
    with Server([], env) as srv:
        script = block.replace("localhost:8000", f"localhost:{srv.port}")  # a free port, else verbatim
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    models = msgspec.json.decode(r.stdout[: r.stdout.rindex("}\n", 0, r.stdout.rindex('{"model"')) + 1])
    assert [m["name"] for m in models["models"]] == ["dplr", "pruned"]
    answer = msgspec.json.decode(r.stdout[r.stdout.rindex('{"model"'):])
    want_version = re.search(r'"version":"(\w+)"', shown).group(1)
    want = re.findall(r'\{"id":"([^"]+)","score":([0-9.]+)\.\.\.,"ctr":[0-9.]+\.\.\.\}', shown)
    assert all(a["ctr"] == a["score"] for a in answer["ads"])
    assert answer["model"] == "dplr" and answer["version"] == want_version
    assert [(a["id"], str(a["score"])[: len(digits)]) for a, (_, digits) in zip(answer["ads"], want, strict=True)] \
        == want


def test_docker_readme_copy_finds_the_default_models(tmp_path):
    line = next(cmd for b in code_blocks((REPO / "docker/README.md").read_text()) for cmd in commands(b)
                if cmd.startswith("cp "))
    shutil.copytree(REPO / "adrank/cli/defaults", tmp_path / "adrank/cli/defaults")
    (tmp_path / "docker/models").mkdir(parents=True)
    r = subprocess.run(["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "docker/models").iterdir()) == ["dplr.adrk", "pruned.adrk"]


@pytest.mark.slow
def test_the_canary_rollout_runs_as_written(tmp_path):
    """The README's canary block against the embedded default models, with a real second version
    of `dplr` (the default `pruned` artifact: same schema) where it names /models/dplr-v2.adrk."""
    readme = (REPO / "README.md").read_text()
    block = next(b for b in code_blocks(readme) if "dplr-v2.adrk" in b and "traffic" in b)
    models = tmp_path / "models"  # the --model-dir the README's server was started with
    models.mkdir()
    shutil.copy(REPO / "adrank/cli/defaults/pruned.adrk", models / "dplr-v2.adrk")
    # no token given: the server writes its own into its state directory, where the block reads it
    env = {**{k: v for k, v in os.environ.items() if k != "ADRANK_MODELS"}, "ADRANK_ADMIN_TOKEN": ""}
    with Server(["--model-dir", str(models)], env) as srv:
        script = block.replace("localhost:8000", f"localhost:{srv.port}")
        script += f'\necho; echo "OLD=$OLD NEW=$NEW"; curl -s -H "$A" localhost:{srv.port}/v1/models/dplr/traffic'
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=120,
                           env={**env, "ADRANK_STATE_DIR": str(srv.state_dir)})
    assert r.returncode == 0, r.stderr
    old, new = re.search(r"OLD=(\w+) NEW=(\w+)", r.stdout).groups()
    assert old != new
    from service.traffic import Split, key_point

    canary = Split(tuple(sorted({old: 95.0, new: 5.0}.items())))
    served = re.search(r'\{"model":"dplr","version":"(\w+)","ads"', r.stdout).group(1)
    assert served == canary.pick(key_point("dplr", "user-42"), {old, new})  # the split, by the key's hash
    final = msgspec.json.decode(r.stdout.splitlines()[-1])
    assert final["current_version"] == new and final["traffic"] is None  # promoted, split cleared
    assert [v["version"] for v in final["versions"]] == [new]
