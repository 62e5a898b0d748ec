"""Every command's edge, read in-process from its parser (issue 14, item 2): --version, no
flag a command would ignore, an unknown LOG_LEVEL as a usage error, --service-timeout's
forms, and one exit-code table in docs/operations.md that app.core.cli and every
command's --help agree with."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

from app.core import cli
from app.core.config import service_timeout_arg

REPO = Path(__file__).resolve().parents[2]
COMMANDS = {
    "app.gen": "app.gen.cli",
    "app.processor": "app.processor.__main__",
    "app.sink": "app.sink.__main__",
    "app.backfill": "app.backfill.__main__",
    "app.verify": "app.verify.cli",
    "app.status": "app.status.__main__",
    "app.dashboard": "app.dashboard.__main__",
}
# commands that log (LOG_LEVEL) and wait for services (--service-timeout): not the dashboard,
# a static page server
SERVICE_COMMANDS = [c for c in COMMANDS if c != "app.dashboard"]

# flags a command accepted and ignored before issue 14: now refused
IGNORED_BEFORE = {
    "app.gen": ["--database-url", "--clickhouse-url", "--pipeline-id", "--dlq-topic"],
    "app.processor": ["--clickhouse-url"],
    "app.sink": ["--bootstrap-servers", "--dlq-topic", "--kafka-config"],
    "app.backfill": ["--dlq-topic"],
    "app.status": ["--clickhouse-url", "--dlq-topic"],
}


def parser_of(command: str) -> argparse.ArgumentParser:
    return importlib.import_module(COMMANDS[command]).build_parser()  # type: ignore[no-any-return]


def exit_of(parser: argparse.ArgumentParser, argv: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        parser.parse_args(argv)
    return int(e.value.code or 0)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_version(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_of(parser_of(command), ["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert re.fullmatch(rf"python -m {command} \d+\.\d+\.\d+", out), out
    assert out.endswith(cli.package_version())


@pytest.mark.parametrize(("command", "flag"), [(c, f) for c, fs in IGNORED_BEFORE.items() for f in fs])
def test_a_flag_the_command_would_ignore_is_refused(command: str, flag: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_of(parser_of(command), [flag, "x"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"unrecognized arguments: {flag}" in err, err


@pytest.mark.parametrize("command", SERVICE_COMMANDS)
def test_an_unknown_log_level_is_a_usage_error(command: str, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LOG_LEVEL", "verbose")
    argv = ["--from-time", "0", "--to-time", "3600000"] if command == "app.backfill" else []
    assert exit_of(parser_of(command), argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'verbose'" in err and "LOG_LEVEL" in err, err


def test_log_level_is_read_case_insensitively_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    assert parser_of("app.processor").parse_args([]).log_level == "warning"


def test_service_timeout_forms() -> None:
    assert service_timeout_arg("forever") is None
    assert service_timeout_arg("0") is None
    assert service_timeout_arg("90s") == 90.0
    assert service_timeout_arg("2m") == 120.0
    with pytest.raises(argparse.ArgumentTypeError):
        service_timeout_arg("soon")


@pytest.mark.parametrize(("command", "default"), [("app.processor", None), ("app.sink", None),
                                                  ("app.gen", 300.0), ("app.verify", 30.0),
                                                  ("app.status", 10.0)])
def test_service_timeout_defaults(command: str, default: float | None) -> None:
    """Processor and sink retry forever unless told otherwise (issue 14); one-shot commands give up."""
    assert parser_of(command).parse_args([]).service_timeout == default


def test_gen_keeps_connect_timeout_as_another_name() -> None:
    assert parser_of("app.gen").parse_args(["--connect-timeout", "7s"]).service_timeout == 7.0


def _doc_table() -> dict[int, str]:
    text = (REPO / "docs" / "operations.md").read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^\|\s*`?(\d+)`?\s*\|([^|]+)\|", section, re.MULTILINE)}


def test_one_exit_code_table_documented_and_used() -> None:
    table = _doc_table()
    codes = {cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_USAGE, cli.EXIT_UNAVAILABLE, cli.EXIT_INTERRUPTED}
    assert set(table) == codes, table
    assert "unreachable" in table[cli.EXIT_UNAVAILABLE] and "--service-timeout" in table[cli.EXIT_UNAVAILABLE]
    assert "configuration" in table[cli.EXIT_USAGE] and "mismatch" in table[cli.EXIT_FAILED]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_documents_the_same_table(command: str) -> None:
    """Each --help names the table and uses only its codes, each with the table's meaning."""
    parser = parser_of(command)
    text = (parser.epilog or "") + (parser.description or "")
    assert "docs/operations.md" in text, command
    section = re.split(r"(?i)exit (?:status|codes)", text)[-1]
    used = {int(c) for c in re.findall(r"(?m)^\s+(\d{1,3})\s{2}", section)} or \
        {int(c) for c in re.findall(r"\b(\d{1,3}) (?:done|a record|bad flags|Kafka|usage)", section)}
    assert used and used <= set(_doc_table()), (command, used)
    if 3 in used:
        assert re.search(r"(?m)^\s+3\s{2}.*(unreachable|in use)", section) or "3 Kafka unreachable" in section
