"""Every findings experiment answers --help (exit 0) and rejects a bad flag with a one-line
usage error (exit 2), without touching a service: a committed command must at least start.
In-process (each module's main(argv)), so the check costs an import, not an interpreter."""

from __future__ import annotations

import importlib

import pytest

MODULES = ("experiments.sustained", "experiments.eos_tax", "experiments.naive_consumer",
           "experiments.lateness_sweep", "experiments.slowdown",
           "experiments.backfill_live", "experiments.batch_sweep", "experiments.one_row_inserts")


def exit_code(module: str, argv: list[str]) -> int:
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    return int(stopped.value.code or 0)


@pytest.mark.parametrize("module", MODULES)
def test_help_exits_0(module: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(module, ["--help"]) == 0
    assert "usage: python -m " + module in capsys.readouterr().out


@pytest.mark.parametrize("module", MODULES)
def test_bad_flag_exits_2(module: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(module, ["--no-such-flag"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the usage: one line saying what is wrong
    assert last == f"python -m {module}: error: unrecognized arguments: --no-such-flag"
