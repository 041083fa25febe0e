"""The one-shot local server that receives Amazon's consent redirect (docs/behaviour.md §5).

It listens on 127.0.0.1 only, at the port of ``AMAZON_REDIRECT_URI``, serves that URI's path
and ``/login`` (a GET, and the POST of its confirmation form), and answers everything else
with a small error page. It never decides
anything itself: each request is handed to the flow's callbacks, which return the page to
show and whether the flow is finished. A request that makes a callback raise gets a 500 page;
the server keeps serving.
"""

from __future__ import annotations

import errno
import html
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs, urlsplit

from discoveryctl.errors import ConfigurationError
from discoveryctl.support.logging import get_logger

LOOPBACK = "127.0.0.1"
LOGIN_PATH = "/login"
REQUEST_TIMEOUT_SECONDS = 5
MAX_QUERY_BYTES = 8192
MAX_FORM_BYTES = 16384
HANDLER_GRACE_SECONDS = 2.0
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"


@dataclass(frozen=True)
class Page:
    """What the browser gets: a status, a short message, and maybe a redirect."""

    status: int
    title: str
    message: str = ""
    location: str | None = None
    finished: bool = False
    html: str | None = None  # a whole page of the flow's own, instead of title and message


Query = dict[str, list[str]]
CallbackHandler = Callable[[Query], Page]


def render(page: Page) -> bytes:
    if page.html is not None:
        return page.html.encode()
    title, message = html.escape(page.title), html.escape(page.message)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title></head><body style='font-family:sans-serif;margin:3em'>"
        f"<h1>{title}</h1><p>{message}</p></body></html>"
    ).encode()


class CallbackServer:
    """Serves one consent flow until a callback finishes it or the time runs out."""

    def __init__(
        self,
        redirect_uri: str,
        on_callback: CallbackHandler,
        on_login: CallbackHandler,
        on_confirm: CallbackHandler,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        parts = urlsplit(redirect_uri)
        self.path = parts.path or "/"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.finished = False
        handler = _handler_class(self, on_callback, on_login, on_confirm)
        context = _tls_context(tls) if tls is not None else None
        self._server = _OneShotServer((LOOPBACK, self.port), handler, context)
        try:
            self._server.server_bind()
            self._server.server_activate()
        except OSError as error:
            self._server.server_close()
            if error.errno == errno.EADDRINUSE:
                raise ConfigurationError(
                    f"port {self.port} on {LOOPBACK} (from AMAZON_REDIRECT_URI) is already in "
                    "use: stop whatever listens there, or use --paste"
                ) from None
            where = f"{LOOPBACK}:{self.port}"
            raise ConfigurationError(f"cannot listen on {where}: {error.strerror}") from None
        self._server.timeout = 0.2

    def serve(self, timeout: float) -> bool:
        """Handle requests until a callback finishes the flow; False when time ran out.

        Each connection is handled on a thread of its own, so a client that trickles its
        request holds only that thread: the deadline here is kept whatever clients do.
        """
        deadline = time.monotonic() + timeout
        while not self.finished and time.monotonic() < deadline:
            self._server.handle_request()
        return self.finished

    def close(self) -> None:
        """Stop listening; give handlers a moment to finish their pages."""
        self._server.server_close()
        self._server.join_handlers(HANDLER_GRACE_SECONDS)

    def __enter__(self) -> CallbackServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _tls_context(tls: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(tls[0]), keyfile=str(tls[1]))
    except (OSError, ssl.SSLError) as error:
        raise ConfigurationError(f"cannot use --tls-cert/--tls-key: {error}") from None
    return context


class _OneShotServer(ThreadingMixIn, HTTPServer):
    """A thread per connection, each with a read timeout; TLS is negotiated in the handler
    thread, so a client that connects and says nothing holds only its own thread."""

    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        tls: ssl.SSLContext | None,
    ) -> None:
        super().__init__(address, handler, bind_and_activate=False)
        self.tls = tls

    def process_request(self, request: Any, client_address: Any) -> None:
        handler = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), daemon=True
        )
        self.handlers = [t for t in getattr(self, "handlers", []) if t.is_alive()] + [handler]
        handler.start()

    def join_handlers(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        for handler in getattr(self, "handlers", []):
            handler.join(max(0.0, deadline - time.monotonic()))

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = self.socket.accept()
        connection.settimeout(REQUEST_TIMEOUT_SECONDS)
        if self.tls is not None:
            connection = self.tls.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            )
        return connection, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A broken or hostile connection (bad TLS, timeouts, resets) is not worth a traceback."""
        failure = sys.exc_info()[1]
        get_logger().debug("callback_connection_failed", reason=type(failure).__name__)


def _handler_class(
    server: CallbackServer,
    on_callback: CallbackHandler,
    on_login: CallbackHandler,
    on_confirm: CallbackHandler,
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT_SECONDS
        server_version = "discoveryctl"
        sys_version = ""

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if len(parts.query) > MAX_QUERY_BYTES:
                self._send(Page(414, "Request too long"))
                return
            query = parse_qs(parts.query, keep_blank_values=True)
            if parts.path == server.path:
                page = self._call(on_callback, query)
            elif parts.path == LOGIN_PATH:
                page = self._call(on_login, query)
            else:
                page = Page(404, "Not found", "This address only receives Amazon's redirect.")
            if page.finished:  # before the page goes out: a browser that hangs up changes nothing
                server.finished = True
            self._send(page)

        def _call(self, handler: CallbackHandler, query: Query) -> Page:
            try:
                return handler(query)
            except Exception:
                get_logger().exception("callback_handler_crashed", path=urlsplit(self.path).path)
                return Page(500, "Something went wrong", "The connection was not completed.")

        def do_POST(self) -> None:
            """The login step's confirmation form, and nothing else."""
            if urlsplit(self.path).path != LOGIN_PATH:
                self._refuse()
                return
            try:
                length = int(self.headers.get("Content-Length") or "")
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_FORM_BYTES:
                self.close_connection = True
                self._send(Page(413 if length > 0 else 411, "Request not accepted"))
                return
            body = self.rfile.read(length).decode("utf-8", "replace")
            self._send(self._call(on_confirm, parse_qs(body, keep_blank_values=True)))

        def _refuse(self) -> None:
            allow = "GET, POST" if urlsplit(self.path).path == LOGIN_PATH else "GET"
            self._send(Page(405, "Method not allowed"), allow=allow)

        do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _refuse

        def _send(self, page: Page, allow: str | None = None) -> None:
            body = render(page)
            self.send_response(page.status)
            if page.location is not None:
                self.send_header("Location", page.location)
            if allow is not None:
                self.send_header("Allow", allow)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
            self.send_header("X-Frame-Options", "DENY")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Query strings carry codes and states: log the path only."""
            path = urlsplit(getattr(self, "path", "") or "").path  # unset on a bad request line
            get_logger().debug("callback_request", method=getattr(self, "command", None), path=path)

    return Handler
