"""The little HTTP layer the emulator needs on top of raw ASGI: a parsed request, a response,
and a way to lose a response on purpose."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import parse_qsl

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY_BYTES = 1 << 20


class BodyTooLarge(Exception):
    """The request body is larger than :data:`MAX_BODY_BYTES`."""


class ResponseDropped(Exception):
    """Raised after the status line went out: the server closes the connection, the body
    never arrives, and the client sees the response lost in transit."""


@dataclass
class Request:
    """One HTTP request, its body already read."""

    method: str
    path: str
    query_string: bytes
    raw_headers: list[tuple[bytes, bytes]]
    body: bytes
    path_params: dict[str, str] = field(default_factory=dict)

    @cached_property
    def query(self) -> dict[str, str]:
        """Query parameters; the first value wins where a name repeats."""
        return _first_values(parse_qsl(self.query_string.decode("latin-1"), keep_blank_values=True))

    @cached_property
    def form_pairs(self) -> list[tuple[str, str]]:
        """The form-encoded body as (name, value) pairs, in order."""
        return parse_qsl(self.body.decode("utf-8", "replace"), keep_blank_values=True)

    @cached_property
    def form(self) -> dict[str, str]:
        """The form-encoded body; the first value wins where a name repeats."""
        return _first_values(self.form_pairs)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower case), if present."""
        wanted = name.encode("latin-1")
        for key, value in self.raw_headers:
            if key == wanted:
                return value.decode("latin-1")
        return None

    def json(self) -> Any:
        """The JSON body, ``None`` when empty; raises ``ValueError`` when malformed."""
        return json.loads(self.body) if self.body.strip() else None


@dataclass
class Response:
    """A complete response: status, headers and body bytes."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"
    lost_in_transit: bool = False
    """Send the status line and headers, then drop the connection (see ``ResponseDropped``)."""


def json_response(
    status: int, payload: Any, headers: list[tuple[str, str]] | None = None
) -> Response:
    """A compact JSON response."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, body, headers or [])


def html_response(status: int, html: str, headers: list[tuple[str, str]] | None = None) -> Response:
    """An HTML page."""
    return Response(status, html.encode(), headers or [], "text/html; charset=utf-8")


def redirect(location: str) -> Response:
    """A 302 to ``location`` that no cache keeps."""
    return Response(302, b"", [("location", location), ("cache-control", "no-store")], "text/plain")


async def read_request(scope: Scope, receive: Receive) -> Request:
    """Read the whole body of the HTTP request ``scope`` describes."""
    chunks: list[bytes] = []
    size = 0
    more_body = True
    while more_body:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyTooLarge
        chunks.append(chunk)
        more_body = message.get("more_body", False)
    return Request(
        method=scope["method"],
        path=scope["path"],
        query_string=scope["query_string"],
        raw_headers=scope["headers"],
        body=b"".join(chunks),
    )


async def send_response(send: Send, response: Response) -> None:
    """Send ``response`` in full or, when it is ``lost_in_transit``, its head only before
    raising ``ResponseDropped``."""
    headers = [
        (b"content-type", response.content_type.encode()),
        (b"content-length", str(len(response.body)).encode()),
    ]
    headers.extend(
        (name.encode("latin-1"), value.encode("latin-1")) for name, value in response.headers
    )
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    if response.lost_in_transit:
        raise ResponseDropped
    await send({"type": "http.response.body", "body": response.body})


def _first_values(pairs: list[tuple[str, str]]) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in pairs:
        values.setdefault(name, value)
    return values
