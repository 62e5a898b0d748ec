"""The pipeline's ClickHouse FINAL rows, read in a child process of verify.

verify aggregates in an embedded ClickHouse of its own (store.py), and one process can hold
only one chDB path: so the pipeline's ClickHouse (a chDB path or a server, the same code
for both) is opened by `python -m app.verify.final_export`, which verify starts first. It
connects, holding an embedded path for the whole verification as verify always did (a sink
started meanwhile finds it locked), and when asked writes each rollup table's `SELECT ...
FINAL` to a Native file in verify's work directory, streamed: it never holds the rows.

Protocol, one JSON object per line. The child prints {"ready": true} once connected, or
{"error": <locked|fatal|retryable|unexpected>, "message": ...} and exits; reads
{"export": {kind: path}} from stdin, writes the files and prints {"exported": {kind: table
exists}}; EOF on stdin ends it. The URL comes in the environment, never in the arguments:
a password in a URL would show in the process list.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Self

import structlog

from app.clickhouse.client import connect, is_retryable
from app.clickhouse.schema import TABLE_OF_KIND
from app.core.errors import FatalError, RetryableError, ServiceLocked
from app.core.logging import configure_logging
from app.core.retry import retry_call

log = structlog.get_logger("verify.final_export")

URL_ENV: Final = "VERIFY_FINAL_CLICKHOUSE_URL"
# sum_amount is Int128 on both sides; country becomes a plain String.
FINAL_SELECT: Final = ("SELECT toUInt32(window_start) AS window_start, account_id, toString(country) AS country, "
                       "event_count, sum_amount FROM {table} FINAL")

_ERRORS: Final[dict[str, type[Exception]]] = {"locked": ServiceLocked, "fatal": FatalError,
                                              "retryable": RetryableError}


class PipelineFinal:
    """verify's side: the child process and its answers."""

    def __init__(self, clickhouse_url: str, timeout_s: float, log_level: str) -> None:
        env = {**os.environ, URL_ENV: clickhouse_url}
        self._child = subprocess.Popen(
            [sys.executable, "-m", "app.verify.final_export", str(timeout_s), log_level],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
        try:
            self._answer("ready")
        except BaseException:
            self.close()
            raise

    def export(self, files: Mapping[str, Path]) -> dict[str, bool]:
        """Write each kind's FINAL rows to its file; kind -> whether the table exists (no file
        is written for a missing table)."""
        stdin = self._child.stdin
        assert stdin is not None  # started with stdin=PIPE
        stdin.write(json.dumps({"export": {kind: str(path) for kind, path in files.items()}}) + "\n")
        stdin.flush()
        exported = self._answer("exported")
        return {str(kind): bool(exists) for kind, exists in exported.items()}

    def _answer(self, key: str) -> Any:
        stdout = self._child.stdout
        assert stdout is not None  # started with stdout=PIPE
        line = stdout.readline()
        if not line:
            code = self._child.wait()
            raise RuntimeError(f"the ClickHouse reader (app.verify.final_export) exited with code {code}")
        answer = json.loads(line)
        if "error" in answer:
            raise _ERRORS.get(answer["error"], RuntimeError)(answer["message"])
        return answer[key]

    def close(self) -> None:
        if self._child.stdin is not None and not self._child.stdin.closed:
            self._child.stdin.close()  # EOF: the child exits
        try:
            self._child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()
        if self._child.stdout is not None:
            self._child.stdout.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- the child --------------------------------------------------------------------------


def _export(client: Any, table: str, path: Path) -> bool:
    try:
        if not int(client.command(f"EXISTS TABLE {table}")):
            return False
        with open(path, "wb") as out, client.raw_stream(FINAL_SELECT.format(table=table), fmt="Native") as stream:
            shutil.copyfileobj(stream, out, 1 << 20)
        return True
    except Exception as e:  # the driver raises several types; is_retryable sorts them
        if is_retryable(e):
            raise RetryableError(f"reading {table} failed: {e}") from e
        raise


def _say(answer: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    timeout_s, log_level = float(argv[0]), argv[1]
    configure_logging(log_level)
    try:
        url = os.environ[URL_ENV]
        client = retry_call(lambda: connect(url), what="clickhouse_connect", deadline_s=timeout_s)
        _say({"ready": True})
        line = sys.stdin.readline()
        if not line:
            return 0
        files = json.loads(line)["export"]
        exists = {kind: retry_call(lambda t=TABLE_OF_KIND[kind], p=Path(path): _export(client, t, p),
                                   what=f"clickhouse_read_{TABLE_OF_KIND[kind]}", deadline_s=timeout_s)
                  for kind, path in files.items()}
        client.close()
        _say({"exported": exists})
        return 0
    except ServiceLocked as e:  # before FatalError: it is one
        _say({"error": "locked", "message": str(e)})
    except FatalError as e:
        _say({"error": "fatal", "message": str(e)})
    except RetryableError as e:
        _say({"error": "retryable", "message": str(e)})
    except Exception as e:
        log.exception("final_export_failed")
        _say({"error": "unexpected", "message": f"{type(e).__name__}: {e}"})
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
