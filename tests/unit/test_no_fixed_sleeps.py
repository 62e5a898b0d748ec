"""The suite's rules against timing luck, checked on its own source (tests/**/*.py):

- no test sleeps a fixed time: the only `time.sleep` is the polling interval inside
  tests/helpers.py (`wait_for`, which waits for a condition with a deadline and a message,
  and `observe_for`, which samples during a duration that is itself the test's subject);
  child scripts passed as strings may not sleep either;
- a test that arms a crash point (`crash_at=`) checks that the crash happened there
  (`assert_crashed_at`, which reads the `crash_point_reached` line).
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
SLEEP_ALLOWED = {("helpers.py", "wait_for"), ("helpers.py", "observe_for")}


def _sources() -> list[tuple[Path, ast.Module]]:
    out = []
    for path in sorted(TESTS.rglob("*.py")):
        out.append((path, ast.parse(path.read_text(), filename=str(path))))
    assert len(out) > 20, "the scan found too few test files: wrong directory?"
    return out


def _is_sleep(call: ast.Call) -> bool:
    f = call.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
    return name == "sleep"  # time.sleep, asyncio.sleep, or a bare imported sleep


def _enclosing_functions(tree: ast.Module) -> dict[ast.AST, str]:
    """Each node -> the name of the outermost function that contains it."""
    owner: dict[ast.AST, str] = {}
    for top in ast.walk(tree):
        if isinstance(top, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(top):
                owner.setdefault(node, top.name)
    return owner


def test_no_test_sleeps_a_fixed_time() -> None:
    offences = []
    for path, tree in _sources():
        owner = _enclosing_functions(tree)
        rel = path.relative_to(TESTS)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _is_sleep(node):
                if (str(rel), owner.get(node, "<module>")) not in SLEEP_ALLOWED:
                    offences.append(f"{rel}:{node.lineno} sleeps in {owner.get(node, '<module>')}()")
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and "sleep(" in node.value
                  and path != Path(__file__).resolve()):  # this file names the pattern it looks for
                offences.append(f"{rel}:{node.lineno} a child script sleeps")
    assert not offences, ("wait for the condition with tests.helpers.wait_for instead of sleeping:\n"
                          + "\n".join(offences))


def _has_crash_at(call: ast.Call) -> bool:
    return any(k.arg == "crash_at" and not (isinstance(k.value, ast.Constant) and k.value.value is None)
               for k in call.keywords)


def test_every_armed_crash_point_is_checked() -> None:
    offences = []
    for path, tree in _sources():
        for fn in ast.walk(tree):
            if not (isinstance(fn, ast.FunctionDef) and fn.name.startswith("test_")):
                continue
            calls = [n for n in ast.walk(fn) if isinstance(n, ast.Call)]
            arms = any(_has_crash_at(c) for c in calls)
            checks = any(isinstance(c.func, ast.Name) and c.func.id == "assert_crashed_at" for c in calls)
            if arms and not checks:
                offences.append(f"{path.relative_to(TESTS)}:{fn.lineno} {fn.name}")
    assert not offences, ("these tests arm a crash point but never check (tests.helpers.assert_crashed_at) "
                          "that the process died there:\n" + "\n".join(offences))


def test_the_scan_sees_what_it_forbids() -> None:
    """The checks above would catch the patterns they exist for."""
    tree = ast.parse("import time\ndef test_x(p):\n    time.sleep(4)\n    p.processor(crash_at='a:1')\n")
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert any(_is_sleep(c) for c in calls)
    assert any(_has_crash_at(c) for c in calls)
    assert _enclosing_functions(tree)[calls[0]] == "test_x"
