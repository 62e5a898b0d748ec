"""Service URLs: the forms each driver takes, and a form safe to log (contract §1: secrets
are never logged)."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

MASK = "***"

# Query parameters and conninfo keywords that carry a secret (compared in lower case).
SECRET_KEYS = frozenset({"password", "passwd", "pass", "pwd", "sslpassword", "secret", "token",
                         "access_token", "sasl.password", "ssl.key.password"})

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def mask_url(url: str) -> str:
    """`url` with every password replaced by ***: the userinfo password of a URL, secret query
    parameters (`?password=`), and the password of a keyword-style libpq DSN
    (`host=... password=...`, read with psycopg's own conninfo parser)."""
    if _URL_RE.match(url):
        return _mask_url_form(url)
    if "=" in url:
        return _mask_conninfo(url)
    return url


def _mask_url_form(url: str) -> str:
    try:
        parts = urlsplit(url)
        password = parts.password
        port = parts.port
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if password is not None:
        host = parts.hostname or ""
        if ":" in host:  # an IPv6 literal
            host = f"[{host}]"
        if port:
            host = f"{host}:{port}"
        netloc = f"{parts.username or ''}:{MASK}@{host}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(k.lower() in SECRET_KEYS for k, _ in pairs):
        query = urlencode([(k, MASK if k.lower() in SECRET_KEYS else v) for k, v in pairs], safe="*")
    if netloc == parts.netloc and query == parts.query:
        return url  # nothing secret (urlunsplit would also drop the empty netloc of chdb:///path)
    rebuilt = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    return rebuilt if netloc else rebuilt.replace(f"{parts.scheme}:", f"{parts.scheme}://", 1)


def _mask_conninfo(dsn: str) -> str:
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable dsn>"
    if not any(k.lower() in SECRET_KEYS for k in params):
        return dsn
    return make_conninfo(**{k: (MASK if k.lower() in SECRET_KEYS else v) for k, v in params.items()})


def psycopg_conninfo(url: str) -> str:
    """psycopg takes postgresql:// (with `?sslmode=...` and any libpq parameter) or a keyword
    DSN; the SQLAlchemy form postgresql+psycopg:// is accepted too."""
    for prefix in ("postgresql+psycopg://", "postgres+psycopg://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix):]
    return url


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy form (alembic): a keyword DSN becomes query parameters, which the
    psycopg dialect hands to libpq as they are."""
    url = psycopg_conninfo(url)
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    if not _URL_RE.match(url) and "=" in url:
        return "postgresql+psycopg:///?" + urlencode(conninfo_to_dict(url))
    return url
