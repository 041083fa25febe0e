"""Serve the emulator with uvicorn on 127.0.0.1 from a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
import time
from types import TracebackType
from urllib.parse import urlsplit

import uvicorn

from discoveryctl.sandbox.app import SandboxApp
from discoveryctl.sandbox.asgi import ResponseDropped
from discoveryctl.sandbox.clock import SandboxClock
from discoveryctl.sandbox.config import SandboxConfig
from discoveryctl.sandbox.lwa import TOKEN_PATH
from discoveryctl.sandbox.state import SandboxState

HOST = "127.0.0.1"
STARTUP_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 10.0


class Sandbox:
    """A running emulator: where it listens, its state, and how to stop it."""

    def __init__(
        self,
        config: SandboxConfig,
        state: SandboxState,
        server: _Server,
        thread: threading.Thread,
        listener: socket.socket,
    ) -> None:
        self.config = config
        self.state = state
        self.port: int = listener.getsockname()[1]
        self.url = f"http://{HOST}:{self.port}"
        self._server = server
        self._thread = thread
        self._listener = listener

    def env(self) -> dict[str, str]:
        """The environment variables that point discoveryctl at this emulator."""
        return {
            "AMAZON_LWA_CLIENT_ID": self.config.client_id,
            "AMAZON_LWA_CLIENT_SECRET": self.config.client_secret,
            "AMAZON_SPAPI_APP_ID": self.config.application_id,
            "AMAZON_SELLER_CENTRAL_URL": self.url,
            "AMAZON_LWA_TOKEN_URL": self.url + TOKEN_PATH,
            "AMAZON_SPAPI_URL": self.url,
            "AMAZON_APP_DRAFT": "1" if self.config.draft else "0",
            "AMAZON_REDIRECT_URI": self.config.redirect_uris[0],
            "STRIPE_API_KEY": self.config.stripe_api_key,
            "STRIPE_API_BASE": self.url,
        }

    def browser_url(self, url: str) -> str:
        """Where a browser here would really land for ``url``.

        Login-URI mode sends the seller back to Amazon's own host (``https://amazon.com/apps/
        authorize/confirm/…``, as Amazon documents it), which this machine cannot reach: a URL
        on that host maps to the same path and query on this sandbox. Any other URL is returned
        unchanged.
        """
        target, amazon = urlsplit(url), urlsplit(self.config.amazon_callback_base)
        if (target.scheme, target.netloc.lower()) != (amazon.scheme, amazon.netloc.lower()):
            return url
        return urlsplit(self.url)._replace(path=target.path, query=target.query).geturl()

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C interrupts the wait).

        Waits on the server's own "stopped" event, not ``Thread.join``: on Python 3.11 a join
        interrupted by Ctrl-C leaves the next join returning at once, which would let
        ``stop`` close the socket under a server that is still running.
        """
        while not self._server.stopped.wait(0.5):
            pass

    def stop(self) -> None:
        """Stop serving, finish the requests in flight and close the socket."""
        self._server.request_stop()
        self._server.stopped.wait(STOP_TIMEOUT_SECONDS)
        self._thread.join(STOP_TIMEOUT_SECONDS)
        self._listener.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def run_in_thread(
    config: SandboxConfig | None = None, port: int = 0, clock: SandboxClock | None = None
) -> Sandbox:
    """Start the emulator on 127.0.0.1:``port`` (0: any free port) and return once it accepts
    connections; ``clock`` lets a test move the emulator's time. Raises ``OSError`` when the
    port cannot be bound."""
    config = config or SandboxConfig()
    state = SandboxState(clock)
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets that declare it, and
    # without it Nagle's algorithm caps each keep-alive connection at ~25 requests a second.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, port))
    except OSError:
        listener.close()
        raise
    _hide_dropped_responses()
    server = _Server(
        uvicorn.Config(
            SandboxApp(config, state),
            host=HOST,
            port=listener.getsockname()[1],
            log_level="warning",
            log_config=None,
            access_log=False,
            lifespan="off",
            proxy_headers=False,
            timeout_graceful_shutdown=2,
        )
    )
    thread = threading.Thread(
        target=_serve, args=(server, listener), name="discoveryctl-sandbox", daemon=True
    )
    thread.start()
    sandbox = Sandbox(config, state, server, thread, listener)
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sandbox.stop()
            raise RuntimeError("the sandbox server did not start")
        time.sleep(0.001)
    return sandbox


def _serve(server: _Server, listener: socket.socket) -> None:
    # Leave SIGINT and SIGTERM to the main thread: delivered here, they would not wake a main
    # thread blocked in ``Sandbox.wait()``, and Ctrl-C would go unnoticed.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        server.run(sockets=[listener])
    finally:
        server.stopped.set()


class _Server(uvicorn.Server):
    """A uvicorn server that stops as soon as it is asked, not at its next 100 ms tick."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.stopped = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)

    def request_stop(self) -> None:
        """Ask the server to shut down; safe from any thread."""
        self.should_exit = True
        if self._loop is not None and self._wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already finished
                self._loop.call_soon_threadsafe(self._wake.set)


class _DroppedResponseFilter(logging.Filter):
    """uvicorn logs a response the emulator drops on purpose as an application error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ResponseDropped))


def _hide_dropped_responses() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DroppedResponseFilter) for f in logger.filters):
        logger.addFilter(_DroppedResponseFilter())
