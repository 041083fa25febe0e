"""What the async clients put on the wire, seen by a plain socket server: the LWA form as a
form, no cookies kept, redirects not followed, Retry-After read, proxies from the
environment (and NO_PROXY) honoured as by the sync clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import pytest

from discoveryctl.errors import ProviderError, TransientProviderError
from discoveryctl.providers import async_http
from discoveryctl.providers.lwa import AmazonApp, AsyncLwaClient

GRANT = {"access_token": "Atza|wire", "refresh_token": "Atzr|wire", "expires_in": 3600}


@dataclass
class Seen:
    """Requests as the server read them: request line, headers (lower-case), body."""

    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen) -> None:
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines if h)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        seen.requests.append((line, headers, body))
        target = line.split(" ")[1]
        if target.endswith("/redirect"):
            status, extra, payload = "302 Found", "Location: /token\r\n", {"error": "moved"}
        elif target.endswith("/throttled"):
            status, extra, payload = "429 Too Many Requests", "Retry-After: 7\r\n", {}
        else:
            status, extra, payload = "200 OK", "Set-Cookie: session=kept\r\n", GRANT
        data = json.dumps(payload).encode()
        writer.write(
            f"HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        await writer.drain()


@asynccontextmanager
async def server() -> AsyncIterator[tuple[str, Seen]]:
    seen = Seen()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _answer(reader, writer, seen)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    listening = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = listening.sockets[0].getsockname()[1]
    async with listening:
        yield f"http://127.0.0.1:{port}", seen


def app(token_url: str) -> AmazonApp:
    return AmazonApp(
        client_id="amzn1.application-oa2-client.wire",
        client_secret="amzn1.oa2-cs.v1.wire",
        application_id="amzn1.sp.solution.wire",
        redirect_uri="https://example.test/callback",
        token_url=token_url,
    )


@pytest.fixture(autouse=True)
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        for spelled in (name, name.lower()):
            monkeypatch.delenv(spelled, raising=False)
    async_http.proxy_for.cache_clear()


def test_the_lwa_form_goes_as_a_form_and_no_cookie_comes_back() -> None:
    async def run() -> list[tuple[str, dict[str, str], bytes]]:
        async with server() as (url, seen):
            # By name: cookie jars keep no cookie from a bare IP address anyway.
            named = url.replace("127.0.0.1", "localhost")
            async with AsyncLwaClient(app(named + "/token")) as lwa:
                for _ in range(2):
                    grant = await lwa.refresh("Atzr|sent")
                    assert grant.access_token == "Atza|wire"
            return seen.requests

    first, second = asyncio.run(run())
    line, headers, body = first
    assert line == "POST /token HTTP/1.1"
    assert headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert parse_qs(body.decode()) == {
        "grant_type": ["refresh_token"],
        "refresh_token": ["Atzr|sent"],
        "client_id": ["amzn1.application-oa2-client.wire"],
        "client_secret": ["amzn1.oa2-cs.v1.wire"],
    }
    assert "cookie" not in second[1]  # the session=kept cookie was not kept


def test_a_redirect_is_an_answer_not_followed() -> None:
    async def run() -> tuple[ProviderError, int]:
        async with server() as (url, seen), AsyncLwaClient(app(url + "/redirect")) as lwa:
            with pytest.raises(ProviderError) as caught:
                await lwa.refresh("Atzr|sent")
            return caught.value, len(seen.requests)

    error, requests = asyncio.run(run())
    assert (error.status_code, requests) == (302, 1)


def test_retry_after_is_read_from_the_answer() -> None:
    async def run() -> TransientProviderError:
        async with server() as (url, _), AsyncLwaClient(app(url + "/throttled")) as lwa:
            with pytest.raises(TransientProviderError) as caught:
                await lwa.refresh("Atzr|sent")
            return caught.value

    assert asyncio.run(run()).retry_after == 7.0


def test_the_proxy_of_the_environment_is_used_unless_no_proxy_exempts_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def run() -> list[str]:
        async with server() as (proxy, seen):
            monkeypatch.setenv("HTTP_PROXY", proxy)
            async_http.proxy_for.cache_clear()
            async with server() as (url, direct), AsyncLwaClient(app(url + "/token")) as lwa:
                await lwa.refresh("Atzr|sent")
                return [line for line, _, _ in seen.requests + direct.requests] + [url]

    *lines, url = asyncio.run(run())
    assert lines == [f"POST {url}/token HTTP/1.1"]  # absolute form: sent to the proxy
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    *lines, url = asyncio.run(run())
    assert lines == ["POST /token HTTP/1.1"]


def test_the_proxy_is_chosen_by_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    assert async_http.proxy_for("https", "api.amazon.com") == "http://proxy.test:3128"
    assert async_http.proxy_for("http", "api.amazon.com") is None
