"""The metrics port of a long-running command: `/metrics` (this stage's metrics only),
`/healthz` (liveness) and `/readyz` (readiness), as Kubernetes probes expect them: 200 when
the check holds, 503 when it does not, with a small JSON body saying why. The server runs
in daemon threads and binds to 127.0.0.1 unless told otherwise. When a targets directory
is configured, the process announces itself there for Prometheus (app/core/targets.py).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from app.core import metrics, targets
from app.core.health import HEALTH, Health

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log: Prometheus scrapes every few seconds."""


def app_for(stage: str, health: Health) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    metrics_app = make_wsgi_app(metrics.registry(stage))

    def answer(start_response: StartResponse, ok: bool, body: dict[str, object]) -> list[bytes]:
        data = json.dumps({"status": "ok" if ok else "unavailable", "stage": stage, **body}).encode()
        start_response("200 OK" if ok else "503 Service Unavailable",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                        ("Cache-Control", "no-store")])
        return [data]

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            ok, detail = health.live()
            return answer(start_response, ok, detail)
        if path == "/readyz":
            ok, checks = health.ready()
            return answer(start_response, ok, {"checks": checks})
        if path in ("/metrics", "/"):
            return metrics_app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: /metrics, /healthz, /readyz\n"]
    return app


def serve(port: int, host: str = "127.0.0.1", *, stage: str, health: Health = HEALTH,
          labels: dict[str, str] | None = None) -> _Server | None:
    """Start serving in the background; port 0 = off. Raises OSError when the port is taken."""
    if not port:
        return None
    server = make_server(host, port, app_for(stage, health), server_class=_Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name=f"metrics-{port}", daemon=True).start()
    targets.publish(stage, host, port, dict(labels or {}))
    return server


def serve_metrics(port: int, host: str = "127.0.0.1", *, stage: str, pipeline_id: str = "") -> None:
    """What every long-running command calls once its flags are read."""
    serve(port, host, stage=stage, labels={"pipeline_id": pipeline_id} if pipeline_id else None)
