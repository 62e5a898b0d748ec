"""`python -m app.dashboard`: serve the pipeline's dashboard page (queries Prometheus)."""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType

from app.core.cli import EXIT_OK, EXIT_USAGE, fail
from app.core.config import ArgumentParser, port_arg
from app.dashboard.server import serve

PROG = "dashboard"
EPILOG = """\
exit status (docs/operations.md, the same table for every command):
  0  stopped: SIGTERM or SIGINT
  2  usage or configuration: bad flags, or --host/--port cannot be listened on (in use)
"""


def build_parser() -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = ArgumentParser(
        prog="python -m app.dashboard",
        description="Serve the pipeline's dashboard: a static page whose every panel is a Prometheus query "
                    "(app/dashboard/panels.json), with Prometheus's query API passed through.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=port_arg, default=9300, help="port to serve on (default %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    p.add_argument("--prometheus", default="http://127.0.0.1:9090", metavar="URL",
                   help="Prometheus base URL (default %(default)s)")
    return p


def _stop(_sig: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM (infra/prometheus.sh down) ends serve_forever like SIGINT: exit 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        server = serve(args.host, args.port, args.prometheus)
    except OSError as e:
        return fail(PROG, f"cannot listen on {args.host}:{args.port} ({e.strerror or e}): pass another --port "
                          "or --host", EXIT_USAGE)
    signal.signal(signal.SIGTERM, _stop)
    sys.stderr.write(f"dashboard: http://{args.host}:{args.port}/ (Prometheus {args.prometheus})\n")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
