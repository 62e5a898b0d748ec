"""Alembic environment: the ledger lives in the database named by DATABASE_URL."""

import logging
import os
import sys
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

from app.core.config import LOG_LEVELS, env, sqlalchemy_url
from app.core.logging import configure_logging

config = context.config
if config.config_file_name is not None:
    if sys.stderr.isatty():
        fileConfig(config.config_file_name)
    else:  # one JSON stream, like every command (docs/operations.md, "Logs")
        level = (os.environ.get("LOG_LEVEL") or "info").lower()
        if level not in LOG_LEVELS:
            sys.exit(f"alembic: error: unknown log level {level!r} (LOG_LEVEL): use one of {', '.join(LOG_LEVELS)}")
        configure_logging(level, json=True)
        if level in ("debug", "info"):  # which migrations ran is what an operator reads here
            logging.getLogger("alembic").setLevel(logging.INFO)


def database_url() -> str:
    return sqlalchemy_url(config.get_main_option("sqlalchemy.url") or env("DATABASE_URL"))


def run_migrations_offline() -> None:
    context.configure(url=database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
