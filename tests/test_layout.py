"""The rules that keep the house in order (docs/internals.md), checked on the code itself.

* The import contract ([tool.importlinter] in pyproject.toml, also run by scripts/test) is kept,
  and it does catch violations: deferred imports planted in a copy of the tree, and the old
  layout before the move (commit baea5d5, where it exists in this clone's history).
* No module imports a private name (``_x``) of another module.
* No import cycle between modules.
* Every ``ADRANK_*`` variable in the code is in the README's settings table and the other way
  round, and each is read in exactly the one file the table names.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("adrank", "service", "training", "exporter", "benchmarks", "loadtest")
SKIP_DIRS = {"__pycache__", ".venv", ".numba_cache", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".git"}
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())", "--no-logo", "--no-cache"]


def files_under(*roots: str, suffix: str | None = None) -> list[Path]:
    out = []
    for root in roots:
        base = REPO / root
        if base.is_file():
            out.append(base)
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")]
            out += [Path(dirpath) / f for f in filenames if suffix is None or f.endswith(suffix)]
    return sorted(out)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def lint_imports(cwd: Path, *config: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}  # the tree at cwd, not the installed one
    return subprocess.run([*LINT, *config], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


# --- the import contract -----------------------------------------------------------------------
def test_import_contract_is_kept():
    res = lint_imports(REPO)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


def test_import_contract_catches_deferred_imports(tmp_path):
    """A copy of the tree with three upward imports planted inside functions: each is reported."""
    for name in PACKAGES:
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns(*SKIP_DIRS))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    planted = {"service/link.py": "import torch", "training/metrics.py": "from adrank.cli import main",
               "adrank/core/files.py": "import service.app", "exporter/describe.py": "import service.ranker"}
    for rel, stmt in planted.items():
        with open(tmp_path / rel, "a") as fh:
            fh.write(f"\n\ndef _planted():\n    {stmt}  # noqa\n")
    res = lint_imports(tmp_path)
    assert res.returncode != 0
    for wrong in ("service.link -> torch", "training.metrics -> adrank.cli", "adrank.core.files -> service.app",
                  "exporter.describe -> service.ranker"):
        assert wrong in res.stdout, res.stdout[-4000:]


OLD_MAIN = "baea5d5"  # the last commit before the layout move
OLD_CONTRACT = """
[tool.importlinter]
root_packages = ["adrank", "service", "training", "exporter", "benchmarks", "loadtest"]
include_external_packages = true

[[tool.importlinter.contracts]]
name = "the service never imports torch, the trainer or the exporter"
type = "forbidden"
source_modules = ["service"]
forbidden_modules = ["torch", "training", "exporter", "benchmarks", "loadtest"]

[[tool.importlinter.contracts]]
name = "nothing imports the CLI"
type = "forbidden"
source_modules = ["adrank.schema", "adrank.preprocess", "adrank.bitpack", "adrank.files", "service", "training",
                  "exporter", "benchmarks", "loadtest"]
forbidden_modules = ["adrank.cli", "adrank.commands"]
"""


def test_import_contract_fails_on_the_old_layout(tmp_path):
    """Before the move the contract could not hold: with today's module names it does not even
    find the core; with the old names (core = adrank.schema/preprocess/bitpack/files, CLI =
    adrank.cli + adrank.commands) it reports the upward imports the move removed."""
    if shutil.which("git") is None or subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{OLD_MAIN}^{{commit}}"],
                                                     capture_output=True).returncode != 0:
        pytest.skip(f"commit {OLD_MAIN} is not in this clone's history")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", OLD_MAIN], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive, check=True)
    assert lint_imports(tmp_path, str(REPO / "pyproject.toml")).returncode != 0  # today's contract
    (tmp_path / "old-contract.toml").write_text(OLD_CONTRACT)
    res = lint_imports(tmp_path, str(tmp_path / "old-contract.toml"))
    assert res.returncode != 0
    for wrong in ("service.default_model -> training.train", "service.default_model -> exporter.export",
                  "training.datasets.io -> adrank.cli", "benchmarks.kernels -> adrank.cli"):
        assert wrong in res.stdout, res.stdout[-4000:]


# --- private names ----------------------------------------------------------------------------
def first_party(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(path: Path) -> list[str]:
    """``from a.b import _x`` and ``mod._x`` (mod an imported first-party module) in one file."""
    tree = ast.parse(path.read_text())
    here = module_name(path)
    modules: set[str] = set()  # local names bound to first-party modules
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.asname or a.name.split(".")[0] for a in node.names if first_party(a.name)}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and first_party(node.module):
            for a in node.names:
                if is_private(a.name) and node.module != here:
                    out.append(f"{path.relative_to(REPO)}:{node.lineno}: from {node.module} import {a.name}")
                target = REPO.joinpath(*node.module.split("."), a.name)
                if target.with_suffix(".py").is_file() or (target / "__init__.py").is_file():
                    modules.add(a.asname or a.name)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and is_private(node.attr) and isinstance(node.value, ast.Name)
                and node.value.id in modules):
            out.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value.id}.{node.attr}")
    return out


def test_no_private_name_is_used_across_modules():
    found = [use for path in files_under(*PACKAGES, suffix=".py") for use in private_uses(path)]
    assert not found, "private names used outside their module:\n" + "\n".join(found)


# --- import cycles ------------------------------------------------------------------------------
# None left (training.models.layers <-> training.quantize, registration by import side effect, is
# gone: the layers load the codebook module on demand and it never imports them).
KNOWN_CYCLES: list[set[str]] = []


def import_graph() -> dict[str, set[str]]:
    """module -> first-party modules it imports (every import statement, deferred ones too)."""
    paths = {module_name(p): p for p in files_under(*PACKAGES, suffix=".py")}
    graph: dict[str, set[str]] = {m: set() for m in paths}
    for mod, path in paths.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in node.names]
            for name in names:
                while name and name not in paths:  # `from pkg import func`: the module is pkg
                    name = name.rpartition(".")[0]
                if name and name != mod:
                    graph[mod].add(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph)))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return out


def test_no_import_cycle():
    graph = import_graph()
    assert graph["service.ranker"] >= {"service.encode", "service.kernels.registry"}  # the graph is real
    found = [sorted(c) for c in cycles(graph) if c not in KNOWN_CYCLES]
    assert not found, f"import cycles: {found}"


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


# --- settings -------------------------------------------------------------------------------------
SETTING = re.compile(r"ADRANK_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_])")  # not a prefix such as ADRANK_LT_*
CODE_ROOTS = (*PACKAGES, "tests", "scripts", "docker", ".ci", "pyproject.toml")


def code_files() -> list[Path]:
    """Everything but prose: Markdown is documentation (this table included), not code."""
    return [p for p in files_under(*CODE_ROOTS) if p.suffix not in (".md", ".json", ".png", ".csv")
            and p != Path(__file__).resolve()]


def is_environment(node: ast.AST) -> bool:
    """``os.environ``, or a mapping named ``env`` (Settings.from_env's parameter)."""
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (isinstance(node, ast.Name) and node.id == "env")


def python_reads(path: Path) -> set[str]:
    """Variables a Python file reads: ``os.environ[...]``/``.get(...)``, ``os.getenv(...)``, or a
    helper called with ``env`` first (``_int(env, "ADRANK_...")``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        keys: list[ast.AST] = []
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and is_environment(node.value):
            keys = [node.slice]
        elif isinstance(node, ast.Call):
            fn = node.func
            if isinstance(fn, ast.Attribute) and fn.attr == "get" and is_environment(fn.value):
                keys = node.args[:1]
            elif isinstance(fn, ast.Attribute) and fn.attr == "getenv":
                keys = node.args[:1]
            elif node.args and is_environment(node.args[0]):
                keys = node.args[1:2]
        elif isinstance(node, ast.Compare) and any(isinstance(o, ast.In) for o in node.ops) and \
                any(is_environment(c) for c in node.comparators):
            keys = [node.left]
        out |= {k.value for k in keys if isinstance(k, ast.Constant) and isinstance(k.value, str)
                and SETTING.fullmatch(k.value)}
    return out


def readers() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in code_files():
        rel = str(path.relative_to(REPO))
        names = python_reads(path) if path.suffix == ".py" else \
            set(re.findall(r"\$\{?(" + SETTING.pattern + ")", path.read_text(errors="replace")))
        for name in names:
            out.setdefault(name, set()).add(rel)
    return out


def readme_table() -> dict[str, str]:
    """name -> the file in the 'read by' column of the README's settings table."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| `(ADRANK_[A-Z0-9_]+)` \|.*\| `([^`]+)` \|$", line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} is listed twice"
            rows[m.group(1)] = m.group(2)
    return rows


def test_every_setting_is_in_the_readme_table_and_read_in_one_place():
    table = readme_table()
    mentioned = {name for path in code_files() for name in SETTING.findall(path.read_text(errors="replace"))}
    assert mentioned - set(table) == set(), "ADRANK_* names in the code but not in the README's settings table"
    assert set(table) - mentioned == set(), "README settings table rows that no code uses"
    read = readers()
    assert set(read) == set(table), f"settings never read: {sorted(set(table) - set(read))}"
    wrong = {name: sorted(files) for name, files in read.items() if files != {table[name]}}
    assert not wrong, f"read elsewhere than the README's 'read by' file (or in several): {wrong}"


def test_settings_reader_sees_reads_and_not_writes(tmp_path):
    p = tmp_path / "m.py"
    p.write_text('import os\nos.environ.get("ADRANK_A")\nos.environ["ADRANK_B"]\nos.getenv("ADRANK_C")\n'
                 '_int(env, "ADRANK_D", 1)\n"ADRANK_E" in env\nos.environ["ADRANK_W"] = "1"\n'
                 'x = {"ADRANK_X": "1"}\ncfg["ADRANK_Y"]\n')
    assert python_reads(p) == {"ADRANK_A", "ADRANK_B", "ADRANK_C", "ADRANK_D", "ADRANK_E"}


IMPORT_ALL = """
import importlib, os, sys

class Recorder(dict):
    seen = set()
    def _note(self, key):
        if isinstance(key, str) and key.startswith("ADRANK_"):
            Recorder.seen.add(key)
    def __getitem__(self, key):
        self._note(key)
        return super().__getitem__(key)
    def get(self, key, default=None):
        self._note(key)
        return super().get(key, default)
    def __contains__(self, key):
        self._note(key)
        return super().__contains__(key)

os.environ = Recorder(os.environ)
for name in sys.argv[1:]:
    importlib.import_module(name)
print(sorted(Recorder.seen))
"""


def test_nothing_reads_a_setting_at_import_time():
    """Every module imported with os.environ replaced by a recording mapping: no ADRANK_* read."""
    skip = {"loadtest.locustfile",  # imports locust, which patches the process for gevent
            "adrank.cli.__main__"}  # runs the command
    names = [module_name(p) for p in files_under(*PACKAGES, suffix=".py")]
    names = [n for n in names if n not in skip]
    res = subprocess.run([sys.executable, "-c", IMPORT_ALL, *names], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "ADRANK_KERNEL_THREADS": "not a number"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == "[]", res.stdout[-2000:]
