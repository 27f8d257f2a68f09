"""A minimal Alertmanager webhook receiver that logs each notification as one JSON line.

Why this exists: deploy/compose.yaml needs somewhere to send alerts that shows they arrive (firing and
resolved) without an external service, and the live end-to-end test (tests/e2e/test_alerting_e2e.py) uses
the same receiver. Standard library only, so it runs in a plain ``python`` container.

Usage: ``python webhook_log.py [--host 127.0.0.1] [--port 5001]``
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["main", "make_server"]


def make_server(host: str, port: int, sink: Callable[[dict[str, Any]], None]) -> ThreadingHTTPServer:
    """An HTTP server that passes every JSON body POSTed to it to ``sink`` and answers 200."""

    class _Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError:
                self.send_response(400)
                self.end_headers()
                return
            sink(body)
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    args = parser.parse_args()
    lock = threading.Lock()

    def sink(body: dict[str, Any]) -> None:
        with lock:
            print(json.dumps(body, sort_keys=True), flush=True)

    server = make_server(args.host, args.port, sink)
    # As PID 1 in a container, SIGTERM is ignored unless handled: exit cleanly on `docker compose stop`.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(f"webhook_log: listening on {args.host}:{server.server_port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
