"""The ledger schema check's idea of this code's migrations (app/ledger/schema_check.py)
is alembic's: the same revisions and the same heads, read without importing alembic (whose
import, with SQLAlchemy and Mako, took ~0.5 s of every command's start-up)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from alembic.script import ScriptDirectory

from app.ledger.schema_check import MIGRATIONS, known_revisions


def _alembic(path: Path) -> tuple[frozenset[str], frozenset[str]]:
    script = ScriptDirectory(str(path))
    return frozenset(r.revision for r in script.walk_revisions()), frozenset(script.get_heads())


def test_the_shipped_migrations_read_as_alembic_reads_them() -> None:
    assert known_revisions(MIGRATIONS) == _alembic(MIGRATIONS)
    assert len(known_revisions(MIGRATIONS)[1]) == 1, "the shipped migrations have one head"


def test_two_branches_without_a_merge_are_two_heads(tmp_path: Path) -> None:
    shutil.copytree(MIGRATIONS, tmp_path / "m")
    versions = tmp_path / "m" / "versions"
    (head,) = known_revisions(MIGRATIONS)[1]
    for name in ("9001_left", "9002_right"):
        (versions / f"{name}.py").write_text(
            f'"""a branch"""\nrevision = "{name}"\ndown_revision = "{head}"\n'
            "branch_labels = None\ndepends_on = None\n\n\ndef upgrade() -> None:\n    pass\n")
    got = known_revisions(tmp_path / "m")
    assert got == _alembic(tmp_path / "m")
    assert got[1] == {"9001_left", "9002_right"}


def test_the_check_does_not_import_alembic() -> None:
    code = ("import sys; from app.ledger.schema_check import known_revisions; known_revisions(); "
            "print('alembic' in sys.modules, 'sqlalchemy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.split() == ["False", "False"]
