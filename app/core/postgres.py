"""A failed Postgres connection, sorted: retry (the server is down, starting, full) or stop
with a configuration error (exit 2: wrong password, unknown role or database, no pg_hba
entry, TLS the server or client refuses).

libpq reports connection failures as text only (psycopg gives no SQLSTATE for them), so
the server's FATAL answers that retrying cannot fix are recognised by their fixed wording;
anything else is retried, as before this module existed.
"""

from __future__ import annotations

from typing import Final

import psycopg

from app.core.errors import ConfigurationError, RetryableError
from app.core.urls import mask_url

CONFIG_PHRASES: Final = (
    "password authentication failed",
    "authentication failed",
    "no password supplied",
    "does not exist",                          # role or database
    "no pg_hba.conf entry",
    "permission denied for database",
    "server does not support SSL",             # sslmode=require against a server without TLS
    "certificate verify failed",
    "root certificate file",                   # sslmode=verify-* without a CA file
    "SSL error",
    "invalid sslmode value",
    "invalid connection option",
    "invalid integer value",
)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def connect_error(e: psycopg.Error, url: str) -> RetryableError | ConfigurationError:
    """The project's error for a failed connect to `url` (masked in the message)."""
    text = str(e)
    where = mask_url(url)
    if isinstance(e, psycopg.ProgrammingError) or any(p in text for p in CONFIG_PHRASES):
        return ConfigurationError(f"Postgres refused the connection at {where}: {first_line(e)}; "
                                  "check DATABASE_URL")
    return RetryableError(f"Postgres unreachable at {where}: {first_line(e)}")
