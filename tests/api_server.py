"""The HTTP API on a real uvicorn server on 127.0.0.1, in a thread, for the API's tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from discoveryctl.config import Config
from discoveryctl.server.app import create_app


def listening() -> socket.socket:
    """A socket bound to a free port on 127.0.0.1, for a server that must know its address
    before it starts (an OAuth redirect URI names it)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    return listener


@contextmanager
def serving(
    keepalive: float = 15.0,
    listener: socket.socket | None = None,
    wrap: Callable[[Any], Any] | None = None,
) -> Iterator[str]:
    """The API over the database and settings the environment names; yields its base URL.
    ``wrap`` puts something in front of the API on the same origin (a front end's pages)."""
    listener = listener or listening()
    port = listener.getsockname()[1]
    app = create_app(Config(), keepalive=keepalive)
    server = uvicorn.Server(
        uvicorn.Config(
            wrap(app) if wrap is not None else app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()
