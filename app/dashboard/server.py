"""The dashboard's tiny server: the static page (static/), its panel list (panels.json), and
Prometheus's query API passed through, so the page is one origin and Prometheus stays on
loopback. It stores nothing: every number on the page is a Prometheus query."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final

HERE = Path(__file__).resolve().parent
PANELS: Final = HERE / "panels.json"
STATIC: Final = {"/": ("index.html", "text/html; charset=utf-8"),
                 "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8")}
PASSED: Final = ("/api/v1/query", "/api/v1/query_range", "/api/v1/targets")


def panels() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(PANELS.read_text())
    return data


def make_handler(prometheus: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the page polls every few seconds."""

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            if url.path in STATIC:
                name, ctype = STATIC[url.path]
                self._send(200, (HERE / "static" / name).read_bytes(), ctype)
            elif url.path == "/panels.json":
                self._send(200, PANELS.read_bytes(), "application/json")
            elif url.path in PASSED:
                self._pass(f"{prometheus}{url.path}?{url.query}")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _pass(self, target: str) -> None:
            try:
                with urllib.request.urlopen(target, timeout=10) as r:
                    self._send(r.status, r.read(), r.headers.get("Content-Type", "application/json"))
            except urllib.error.HTTPError as e:
                self._send(e.code, e.read(), "application/json")
            except (urllib.error.URLError, OSError) as e:
                body = json.dumps({"status": "error", "error": f"Prometheus at {prometheus} unreachable: {e}"})
                self._send(502, body.encode(), "application/json")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)
    return Handler


def serve(host: str, port: int, prometheus: str) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), make_handler(prometheus.rstrip("/")))
    server.daemon_threads = True
    return server
