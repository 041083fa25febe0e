"""A webhook receiver on a real socket, for the admin alert webhook's tests: it records every
POST (headers, raw body) and answers with the statuses it is given, one per request, then 200.

``together=2`` holds each request until two are in flight at once (or ``hold`` seconds pass):
two processes draining one outbox are then certain to overlap.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    url: str
    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    together: int = 1
    hold: float = 3.0
    most_in_flight: int = 0
    on_request: Callable[[], None] | None = None  # run while each request is held
    answer_headers: dict[str, str] = field(default_factory=dict)  # sent with every answer
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _in_flight: int = 0
    _arrived: threading.Condition = field(default_factory=threading.Condition)

    def bodies(self) -> list[Any]:
        return [r.json() for r in self.received]

    def _answer(self, headers: dict[str, str], body: bytes) -> int:
        with self._arrived:
            self._in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self._in_flight)
            self._arrived.notify_all()
            self._arrived.wait_for(lambda: self._in_flight >= self.together, timeout=self.hold)
        if self.on_request is not None:
            self.on_request()
        with self._lock:
            self.received.append(Received(headers, body))
            status = self.statuses.pop(0) if self.statuses else 200
        with self._arrived:
            self._in_flight -= 1
        return status


@contextmanager
def receiving(path: str = "/services/T000/B000/secret-token") -> Iterator[Receiver]:
    """A receiver at ``http://127.0.0.1:<free port><path>``, stopped after the block."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status = receiver._answer(dict(self.headers.items()), body)
            answer = b"ok" if status < 300 else b"error"
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            for name, value in receiver.answer_headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver = Receiver(f"http://127.0.0.1:{server.server_address[1]}{path}")
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
