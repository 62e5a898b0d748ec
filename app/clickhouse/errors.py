"""ClickHouse errors by their numeric server code: retry, or stop with an exit code.

Every ClickHouse error the sink sees is one of three kinds:

- transient: the server is busy, short of memory, has too many parts, a replica is
  read-only, the network failed or timed out. Retried with backoff; the group stays open.
- config: the operator's settings are wrong (authentication, unknown database, access
  denied). The process stops: exit code 2, one line naming the code.
- permanent: anything else the server answers with a code (unknown table, syntax, type
  mismatch, data it cannot parse, ...). Retrying the same insert can only fail the same
  way, so the process stops: exit code 1. A code this table does not know is permanent
  too: a loud stop that a supervisor restarts (the group is resumed unchanged) is better
  than a silent endless loop with delivery stopped (issue 9, item 6).

The code is read from the error object (clickhouse-connect fills it from chDB and from
the server's X-ClickHouse-Exception-Code header). Servers older than 19.x send no header:
then it is read from the structured `Code: N` prefix the server puts at the start of its
answer; the words of a message are never matched.

Code 252 (TOO_MANY_PARTS) is transient, although ClickHouse raises the same code for
"too many partitions for a single INSERT block", which no retry can fix: the sink never
sends such a block (a group's blocks are cut at UTC day boundaries, so a block touches one
day partition, two on a server in another time zone; blocks of groups recorded before
that cut lift the limit), so 252 can only mean that merges are behind.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from clickhouse_connect.driver.exceptions import (
    ClickHouseError,
    DataError,
    InterfaceError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
)

from app.core.config import mask_url
from app.core.errors import FatalError, RetryableError

ErrorKind = Literal["transient", "config", "permanent"]

CONFIG_CODES: Final[dict[int, str]] = {
    81: "UNKNOWN_DATABASE",
    164: "READONLY",                  # the user may not write
    192: "UNKNOWN_USER",
    193: "WRONG_PASSWORD",
    194: "REQUIRED_PASSWORD",
    195: "IP_ADDRESS_NOT_ALLOWED",
    291: "DATABASE_ACCESS_DENIED",
    497: "ACCESS_DENIED",
    516: "AUTHENTICATION_FAILED",
}
AUTHENTICATION_CODES: Final = frozenset({192, 193, 194, 195, 516})

TRANSIENT_CODES: Final[dict[int, str]] = {
    3: "UNEXPECTED_END_OF_FILE",
    23: "CANNOT_READ_FROM_ISTREAM",
    24: "CANNOT_WRITE_TO_OSTREAM",
    32: "ATTEMPT_TO_READ_AFTER_EOF",
    33: "CANNOT_READ_ALL_DATA",
    95: "CANNOT_READ_FROM_SOCKET",
    96: "CANNOT_WRITE_TO_SOCKET",
    159: "TIMEOUT_EXCEEDED",
    160: "TOO_SLOW",
    173: "CANNOT_ALLOCATE_MEMORY",
    198: "DNS_ERROR",
    201: "QUOTA_EXCEEDED",
    202: "TOO_MANY_SIMULTANEOUS_QUERIES",
    203: "NO_FREE_CONNECTION",
    204: "CANNOT_FSYNC",
    209: "SOCKET_TIMEOUT",
    210: "NETWORK_ERROR",
    225: "NO_ZOOKEEPER",
    236: "ABORTED",
    241: "MEMORY_LIMIT_EXCEEDED",
    242: "TABLE_IS_READ_ONLY",
    243: "NOT_ENOUGH_SPACE",
    244: "UNEXPECTED_ZOOKEEPER_ERROR",
    252: "TOO_MANY_PARTS",            # see the module docstring
    279: "ALL_CONNECTION_TRIES_FAILED",
    285: "TOO_FEW_LIVE_REPLICAS",
    286: "UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE",
    319: "UNKNOWN_STATUS_OF_INSERT",
    364: "RECEIVED_ERROR_TOO_MANY_REQUESTS",
    373: "SESSION_IS_LOCKED",
    384: "PART_IS_TEMPORARILY_LOCKED",
    394: "QUERY_WAS_CANCELLED",
    410: "EXTERNAL_SERVER_IS_NOT_RESPONDING",
    415: "ALL_REPLICAS_LOST",
    416: "REPLICA_STATUS_CHANGED",
    425: "SYSTEM_ERROR",
    439: "CANNOT_SCHEDULE_TASK",
    473: "DEADLOCK_AVOIDED",
    999: "KEEPER_EXCEPTION",
    1000: "POCO_EXCEPTION",
}

# The structured prefix of a server's answer: "Code: 193, e.displayText() = ..." (18.x),
# "Code: 60. DB::Exception: ..." (later versions).
_CODE_PREFIX = re.compile(r"\bCode:\s*(\d+)\b")
# Client-side errors of clickhouse-connect without a server code: the same call fails again.
_CLIENT_PERMANENT = (ProgrammingError, DataError, InterfaceError, NotSupportedError)


@dataclass(frozen=True, slots=True)
class Classified:
    kind: ErrorKind
    code: int | None
    name: str | None

    @property
    def label(self) -> str:
        if self.code is None:
            return "no code"
        return f"code {self.code}" + (f" {self.name}" if self.name else "")


def server_code(e: BaseException) -> int | None:
    code = getattr(e, "code", None)
    if isinstance(code, int):
        return code
    if isinstance(e, ClickHouseError):
        match = _CODE_PREFIX.search(str(e))
        if match:
            return int(match.group(1))
    return None


def classify(e: BaseException) -> Classified:
    code = server_code(e)
    name = getattr(e, "name", None)
    if code is not None:
        if code in CONFIG_CODES:
            return Classified("config", code, name or CONFIG_CODES[code])
        if code in TRANSIENT_CODES:
            return Classified("transient", code, name or TRANSIENT_CODES[code])
        return Classified("permanent", code, name)
    if isinstance(e, OperationalError) or not isinstance(e, ClickHouseError):
        return Classified("transient", None, None)   # transport: refused, reset, timed out
    if isinstance(e, _CLIENT_PERMANENT):
        return Classified("permanent", None, None)
    return Classified("transient", None, None)       # an answer without a code: a proxy, a 5xx


class ClickHouseRejected(FatalError):
    """ClickHouse answered with an error no retry can fix: stop (exit 1)."""

    exit_code = 1

    def __init__(self, message: str, classified: Classified) -> None:
        super().__init__(message)
        self.code = classified.code
        self.classified = classified


class ClickHouseConfigError(ClickHouseRejected):
    """Wrong settings (credentials, database, grants): stop (exit 2, like a bad flag)."""

    exit_code = 2


def first_line(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]


def translate(e: BaseException, doing: str, url: str) -> RetryableError | ClickHouseRejected:
    """The project's error for a ClickHouse failure while `doing` something: one line."""
    c = classify(e)
    where = mask_url(url)
    if c.kind == "transient":
        return RetryableError(f"{doing} failed ({c.label}) at {where}: {type(e).__name__}: {first_line(e)}")
    if c.kind == "config":
        what = ("authentication failed" if c.code in AUTHENTICATION_CODES
                else "unknown database" if c.code == 81 else "access denied")
        return ClickHouseConfigError(f"ClickHouse {what} ({c.label}) at {where} while {doing}: {first_line(e)}; "
                                     "check CLICKHOUSE_URL", c)
    return ClickHouseRejected(f"ClickHouse rejected {doing} ({c.label}) at {where}: {first_line(e)}", c)
