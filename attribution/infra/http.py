"""``/metrics``, ``/healthz`` and ``/readyz`` on one port, served from a daemon thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Check = Callable[[], tuple[bool, dict[str, object]]]

#: The paths the worker serves (deploy/ probes and scrape configs are checked against them).
METRICS_PATH, HEALTH_PATH, READY_PATH = "/metrics", "/healthz", "/readyz"
ROUTES = (METRICS_PATH, HEALTH_PATH, READY_PATH)


class OpsServer:
    """Serves the registry and two checks: ``healthy`` (the loop is alive) and ``ready`` (it can work)."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, healthy: Check, ready: Check
    ) -> None:
        ops = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == METRICS_PATH:
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path in (HEALTH_PATH, READY_PATH):
                    ok, detail = (ops.healthy if path == HEALTH_PATH else ops.ready)()
                    self._send(200 if ok else 503, orjson.dumps({"ok": ok, **detail}), "application/json")
                else:
                    self._send(404, b'{"error": "not found"}', "application/json")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.healthy = healthy
        self.ready = ready
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="ops-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> OpsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
