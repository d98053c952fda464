"""A real HTTP server on a free loopback port standing in for a customer's endpoint.

Records every request (path, headers, JSON body) and answers what the test asks: 200 by default,
or a queue of statuses (500, 429 with Retry-After, 400...) consumed one request at a time, or 503 to
every request while `down()` says so (an outage). `clock`, when given, stamps each request with its
answer (`at`): the tests pass the project's virtual clock.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    def __init__(self, clock: Callable[[], object] | None = None):
        self.requests: list[dict] = []
        self.answers: list[tuple[int, dict]] = []  # (status, headers) for the next requests
        self.down: Callable[[], bool] = lambda: False
        self.clock = clock
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                with receiver.lock:
                    if receiver.down():
                        status, headers = 503, {}
                    else:
                        status, headers = receiver.answers.pop(0) if receiver.answers else (200, {})
                    receiver.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                              "raw": raw, "body": json.loads(raw or b"null"), "status": status,
                                              "at": receiver.clock() if receiver.clock else None})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}' if status < 300 else b'{"error": "no"}')

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, *statuses: int | tuple[int, dict]) -> None:
        with self.lock:
            self.answers += [s if isinstance(s, tuple) else (s, {}) for s in statuses]

    def delivered(self) -> list[dict]:
        """The bodies of the requests answered 2xx."""
        return [r["body"] for r in self.requests if r["status"] < 300]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
