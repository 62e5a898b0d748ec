"""Is the ledger database migrated to what this code needs? Checked once at the start of each
command that writes or reads the ledger, so an unmigrated database is one line saying what
to run (exit 2), not a 35-line UndefinedTable traceback from the first query.

The ledger is created only by `alembic upgrade head` (contract §6). Its `alembic_version`
must be this code's head: no table means never migrated, an older revision means behind.
A revision this code does not know was written by a newer version of it: logged, not
refused (migrations add, they do not take away).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
import structlog

from app.core.config import REPO_ROOT
from app.core.errors import LedgerNotMigrated
from app.core.postgres import connect_error
from app.core.urls import mask_url, psycopg_conninfo

log = structlog.get_logger("ledger")

MIGRATIONS = REPO_ROOT / "migrations"
HINT = "run `alembic upgrade head` (with the same DATABASE_URL) first"


@cache
def known_revisions(path: Path = MIGRATIONS) -> tuple[frozenset[str], frozenset[str]]:
    """(every revision, the heads) of the migrations shipped with this code, as alembic reads
    them (tests/unit/test_schema_check.py): each script's `revision` and `down_revision`
    (a revision, a tuple of them for a merge, or None), heads = revisions no script builds
    on. Read with `ast`, not alembic's ScriptDirectory: importing alembic (SQLAlchemy, Mako)
    took ~0.5 s of every command's start-up."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in sorted((path / "versions").glob("*.py")):
        fields = {t.id: node.value for node in ast.parse(script.read_text(encoding="utf-8")).body
                  if isinstance(node, ast.Assign | ast.AnnAssign)
                  for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                  if isinstance(t, ast.Name) and t.id in ("revision", "down_revision") and node.value is not None}
        if "revision" not in fields:
            continue  # not a migration script
        revisions.add(str(ast.literal_eval(fields["revision"])))
        down = ast.literal_eval(fields["down_revision"]) if "down_revision" in fields else None
        parents.update([down] if isinstance(down, str) else down or ())
    return frozenset(revisions), frozenset(revisions - parents)


def applied_revisions(conn: psycopg.Connection[Any]) -> frozenset[str] | None:
    """The database's alembic revisions; None when it was never migrated."""
    exists = conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()
    if exists is None or not exists[0]:
        return None
    return frozenset(str(r[0]) for r in conn.execute("SELECT version_num FROM alembic_version"))


def check_revisions(applied: frozenset[str] | None, known: frozenset[str], heads: frozenset[str],
                    where: str) -> str | None:
    """Raises LedgerNotMigrated when the database is behind; returns a warning text when it is
    ahead of this code (a newer version migrated it); None when it is at head."""
    if not applied:
        raise LedgerNotMigrated(f"the ledger at {where} has no schema (never migrated): {HINT}")
    if applied == heads:
        return None
    unknown = applied - known
    if unknown:
        return (f"the ledger at {where} is at revision {', '.join(sorted(unknown))}, which this code does not "
                f"know (migrated by a newer version?); this code's head is {', '.join(sorted(heads))}")
    raise LedgerNotMigrated(f"the ledger at {where} is at revision {', '.join(sorted(applied))}, behind this "
                            f"code's {', '.join(sorted(heads))}: {HINT}")


def require_migrated(url: str) -> None:
    """One check against the database: RetryableError while Postgres is unreachable, a
    ConfigurationError when it refuses us (credentials, database, TLS), LedgerNotMigrated."""
    where = mask_url(url)
    try:
        with psycopg.connect(psycopg_conninfo(url), connect_timeout=5, autocommit=True) as conn:
            applied = applied_revisions(conn)
    except (psycopg.OperationalError, psycopg.ProgrammingError) as e:
        raise connect_error(e, url) from e
    known, heads = known_revisions()
    warning = check_revisions(applied, known, heads, where)
    if warning:
        log.warning("ledger_revision_unknown", detail=warning)
