"""The package's layout rules, checked on its source: imports run one way, from the
outer wings in (cli and bench -> workers/server -> edge -> flow -> stages -> money ->
world -> the base), compiled kernels are reached only through their facades, and no
module grows past 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "adbid"

# Higher ranks may import lower ones (and their own wing); never the other way.
RANKS = {
    "adbid": 0, "adbid.v1": 0, "adbid.config": 0, "adbid.logs": 0, "adbid.metrics": 0,
    "adbid._decision": 0, "adbid._wire": 0, "adbid._fpmode": 0,
    "adbid.world": 1,
    "adbid.money": 2,
    "adbid.stages": 3,
    "adbid.flow": 4,
    "adbid.edge": 5,
    "adbid.server": 6,
    "adbid.workers": 7,
    "adbid.client": 8, "adbid.bench": 8, "adbid.world_command": 8,
    "adbid.cli": 9,
}
# The compiled kernels and the only modules that call them (money.units: the impression-cost
# rule, defined once in the decision loop).
FACADES = {"adbid._decision": ("adbid.stages", "adbid.money.units"),
           "adbid._fpmode": ("adbid.stages",), "adbid._wire": ("adbid.edge",),
           "adbid._idtable": ("adbid.stages",), "adbid._listscan": ("adbid.stages",),
           "adbid._fingerprint": ("adbid.stages",)}
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def wing(name: str) -> str:
    """The longest RANKS key that is `name` or a package above it."""
    best = ""
    for key in RANKS:
        if (name == key or name.startswith(key + ".")) and len(key) > len(best):
            best = key
    if not best:
        raise AssertionError(f"{name}: in no wing; add it to RANKS in {__file__}")
    return best


def is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or path.is_dir() or name in FACADES


def imports(source: str, filename: str = "<probe>") -> list[tuple[int, str]]:
    """(line, module) for every adbid import in the source, at any depth (function-local
    imports too). `from adbid.x import y` counts as importing adbid.x.y when y is a module."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("adbid")]
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{filename}:{node.lineno}: use absolute imports"
            base = node.module or ""
            if base.startswith("adbid"):
                found += [(node.lineno, f"{base}.{a.name}" if is_module(f"{base}.{a.name}")
                           else base) for a in node.names]
    return found


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "v1" not in p.relative_to(PACKAGE).parts)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_from_the_outer_wings_in(path):
    here = module_name(path)
    rank = RANKS[wing(here)]
    upward = [f"line {line}: {name} ({wing(name)}, rank {RANKS[wing(name)]})"
              for line, name in imports(path.read_text(), str(path)) if RANKS[wing(name)] > rank]
    assert not upward, f"{here} (rank {rank}) imports a higher wing: {upward}"
    callers = [f"line {line}: {name}" for line, name in imports(path.read_text(), str(path))
               if name in FACADES and not any(here == w or here.startswith(w + ".")
                                              for w in FACADES[name])]
    assert not callers, f"{here} calls a compiled kernel outside its facade: {callers}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_longer_than_the_limit(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name}: {lines} lines (at most {MAX_LINES}): split it"


def test_the_rule_catches_an_upward_import():
    """The check itself: a stage importing the edge, even inside a function, is found."""
    probe = "def f():\n    from adbid.edge import decode\n    from adbid.world.targeting import x\n"
    found = [RANKS[wing(name)] for _, name in imports(probe)]
    assert found == [RANKS["adbid.edge"], RANKS["adbid.world"]]
    assert max(found) > RANKS["adbid.stages"]
