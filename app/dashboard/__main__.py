"""`python -m app.dashboard`: serve the pipeline's dashboard page (queries Prometheus)."""

from __future__ import annotations

import argparse
import sys

from app.core.config import ArgumentParser, port_arg
from app.dashboard.server import serve


def main(argv: list[str] | None = None) -> int:
    p: argparse.ArgumentParser = ArgumentParser(
        prog="python -m app.dashboard",
        description="Serve the pipeline's dashboard: a static page whose every panel is a Prometheus query "
                    "(app/dashboard/panels.json), with Prometheus's query API passed through.")
    p.add_argument("--port", type=port_arg, default=9300, help="port to serve on (default %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    p.add_argument("--prometheus", default="http://127.0.0.1:9090", metavar="URL",
                   help="Prometheus base URL (default %(default)s)")
    args = p.parse_args(argv)
    try:
        server = serve(args.host, args.port, args.prometheus)
    except OSError as e:
        sys.stderr.write(f"dashboard: error: cannot listen on {args.host}:{args.port}: {e.strerror or e}\n")
        return 2
    sys.stderr.write(f"dashboard: http://{args.host}:{args.port}/ (Prometheus {args.prometheus})\n")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
