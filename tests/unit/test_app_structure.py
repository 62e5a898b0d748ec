"""The layout rules of app/ (issue 13), read from the source: no import cycle among app.*
modules, no module a newcomer cannot hold (line budget), no reach into the Ledger's
private methods from outside its module, and the stage boundaries (verify shares no code
with what it checks; core knows no stage; the sink knows only the ledger)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"
MAX_LINES = 350


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(APP.rglob("*.py")):
        parts = path.relative_to(APP.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports_of(path: Path, known: set[str]) -> set[str]:
    """app.* modules `path` imports, at any depth: a function-level import, or one only for
    type checking, is still a dependency (the batch.py <-> state.py cycle was made of one
    of each)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("app."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("app"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names
                         if f"{node.module}.{a.name}" in known)  # `from app.ledger import rows`
    return {m for m in found if m in known}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(path, known) - {name} for name, path in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def dfs(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (cycle := dfs(m)) is not None:
                return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (cycle := dfs(n)) is not None:
            return cycle
    return None


def test_no_import_cycle_among_app_modules() -> None:
    g = graph()
    # package __init__ modules are empty; a package importing its own module is no cycle
    g = {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in g.items()}
    assert find_cycle(g) is None, " -> ".join(find_cycle(g) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_over_the_line_budget() -> None:
    over = {str(p.relative_to(APP.parent)): n for p in modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines: {over}"


def test_no_call_of_a_private_ledger_method_outside_its_module() -> None:
    reach = re.compile(r"\bledger\s*\.\s*_[a-z]\w*")
    found = [f"{p.relative_to(APP.parent)}:{i}: {line.strip()}"
             for p in modules().values() if p.name != "ledger.py" or p.parent.name != "ledger"
             for i, line in enumerate(p.read_text().splitlines(), 1) if reach.search(line)]
    assert not found, "\n".join(found)


def test_stage_boundaries() -> None:
    g = graph()

    def deps(prefix: str) -> set[str]:
        return {m for n, ms in g.items() if n.startswith(prefix) for m in ms}

    assert not {m for m in deps("app.verify") if m.startswith(("app.processor", "app.ledger", "app.backfill",
                                                                 "app.sink"))}
    assert not {m for m in deps("app.core") if not m.startswith("app.core")}
    assert not {m for m in deps("app.sink") if m.startswith(("app.processor", "app.backfill", "app.verify"))}
