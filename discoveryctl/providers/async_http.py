"""The wire under the async provider clients (``refresh-all``, ``check``): one aiohttp session
per client, every answer read whole and handed to the same pure parsers the sync clients use.

The parsers only need what any HTTP answer has (``Reply``): its status, its headers and its
JSON body, so an ``httpx.Response`` (the sync clients) and a ``WireReply`` (here) both do.
aiohttp rather than ``httpx.AsyncClient``: at refresh-all's 64 calls at once, httpx's client
layers (URL merging, cookies, auth and redirect hooks) cost about 0.4 ms of CPU a call, and
aiohttp about 0.2 ms (benchmarks/refresh_all.py); the requests on the wire are the same.
"""

from __future__ import annotations

import functools
import json
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import httpx

from discoveryctl.errors import TransientProviderError


class Reply(Protocol):
    """An HTTP answer as the classifiers read it (``httpx.Response`` is one)."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...  # names case-insensitive

    def json(self) -> Any: ...


@dataclass(frozen=True)
class WireReply:
    """An answer read off an aiohttp response."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    def json(self) -> Any:
        """The body as JSON; ``ValueError`` when it is not (as ``httpx.Response.json``)."""
        return json.loads(self.content)


def transport_failure(
    error: BaseException, what: str, service: str = "lwa"
) -> TransientProviderError:
    """A call that got no answer (refused, reset, cut short, timed out): transient."""
    timed_out = isinstance(error, httpx.TimeoutException | TimeoutError)
    kind = "timeout" if timed_out else "connection_error"
    return TransientProviderError(f"{what}: {type(error).__name__}", error_type=f"{service}_{kind}")


def open_session(timeout: httpx.Timeout, connections: int) -> aiohttp.ClientSession:
    """A session of at most ``connections`` connections, all kept alive between calls, giving
    up as ``timeout`` says (connect, then each read; ``pool``: waiting for a connection).
    No cookies are kept; proxies: see ``proxy_for``."""
    # Mutation testing: a connect that hangs, or a wait for a free connection, cannot be
    # provoked on loopback (a closed port refuses at once), and no call lasts aiohttp's
    # default total of 5 minutes: those timeouts are left to review. trust_env only adds
    # aiohttp's own reading of the proxies (proxy_for reads them) and of ~/.netrc: speed.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(
            total=None,  # pragma: no mutate
            sock_connect=timeout.connect,  # pragma: no mutate
            sock_read=timeout.read,
            connect=timeout.pool,  # pragma: no mutate
        ),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,  # pragma: no mutate
    )


@functools.cache
def proxy_for(scheme: str, host: str | None) -> str | None:
    """The proxy the environment names for ``scheme`` (``HTTPS_PROXY``, ``HTTP_PROXY``…)
    unless ``NO_PROXY`` exempts ``host``, as for the sync clients; read once per host."""
    if host is None or urllib.request.proxy_bypass(host):
        return None
    return urllib.request.getproxies().get(scheme)


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    what: str,
    service: str,
    headers: Mapping[str, str] | None = None,
    data: bytes | None = None,
) -> WireReply:
    """One call, its answer read whole; no answer at all is a ``TransientProviderError``."""
    where = urlsplit(url)
    try:
        async with session.request(
            method,
            url,
            headers=headers,
            data=data,
            allow_redirects=False,  # pragma: no mutate  (None is as false to aiohttp)
            proxy=proxy_for(where.scheme, where.hostname),
        ) as response:
            return WireReply(response.status, response.headers, await response.read())
    except (aiohttp.ClientError, TimeoutError) as error:
        raise transport_failure(error, what, service) from None
