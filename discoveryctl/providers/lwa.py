"""Amazon: Seller Central consent URLs and the Login with Amazon (LWA) token endpoint.

Every LWA failure is classified here, once (docs/behaviour.md §5):

- ``invalid_grant`` → ``SellerAuthorizationRevoked`` (the seller's authorization is gone);
- ``invalid_client`` / ``unauthorized_client`` → ``AppCredentialsRejected`` (our app's fault);
- 429, 5xx, timeouts, connection errors, non-JSON bodies → ``TransientProviderError``;
- anything else → ``ProviderError`` (a request we should not have sent; not retried).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, urlencode, urljoin, urlsplit

import aiohttp
import httpx

from discoveryctl.config import Config
from discoveryctl.errors import (
    AppCredentialsRejected,
    ProviderError,
    SellerAuthorizationRevoked,
    TransientProviderError,
)
from discoveryctl.providers.async_http import Reply, open_session, send, transport_failure
from discoveryctl.support.redaction import redact_text

SELLER_CENTRAL = {
    "na": "https://sellercentral.amazon.com",
    "eu": "https://sellercentral-europe.amazon.com",
    "fe": "https://sellercentral.amazon.co.jp",
}
SPAPI = {
    "na": "https://sellingpartnerapi-na.amazon.com",
    "eu": "https://sellingpartnerapi-eu.amazon.com",
    "fe": "https://sellingpartnerapi-fe.amazon.com",
}
LWA_TOKEN_URL = "https://api.amazon.com/auth/o2/token"
# A selling partner id as Amazon issues them (e.g. A2EUQ1WTGCTBG2); anything else from a
# callback or a file is refused before it reaches the database or a terminal.
SELLING_PARTNER_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


@dataclass(frozen=True)
class AmazonApp:
    """The SP-API application and where its endpoints are."""

    client_id: str
    client_secret: str = field(repr=False)  # never in a log, a traceback or an error
    application_id: str
    redirect_uri: str
    draft: bool = False
    seller_central_url: str | None = None
    token_url: str = LWA_TOKEN_URL
    spapi_url: str | None = None

    def seller_central(self, region: str, marketplace: str | None = None) -> str:
        """Where a seller of ``region`` (or of ``marketplace``, when known) authorizes: the
        configured Seller Central (the sandbox) first, then the marketplace's own."""
        if self.seller_central_url:
            return self.seller_central_url.rstrip("/")
        return MARKETPLACES[marketplace].seller_central if marketplace else SELLER_CENTRAL[region]

    def spapi(self, region: str) -> str:
        return (self.spapi_url or SPAPI[region]).rstrip("/")


def app_from(config: Config) -> AmazonApp:
    """The SP-API app as configured: its LWA credentials, consent settings and endpoint
    overrides (the sandbox)."""
    overrides = {
        name: config.http_url(name) if config.get(name) else None
        for name in ("AMAZON_SELLER_CENTRAL_URL", "AMAZON_LWA_TOKEN_URL", "AMAZON_SPAPI_URL")
    }
    return AmazonApp(
        client_id=config.require("AMAZON_LWA_CLIENT_ID"),
        client_secret=config.require("AMAZON_LWA_CLIENT_SECRET"),
        application_id=config.require("AMAZON_SPAPI_APP_ID"),
        redirect_uri=config.redirect_uri,
        draft=config.app_draft,
        seller_central_url=overrides["AMAZON_SELLER_CENTRAL_URL"],
        token_url=overrides["AMAZON_LWA_TOKEN_URL"] or LWA_TOKEN_URL,
        spapi_url=overrides["AMAZON_SPAPI_URL"],
    )


def consent_url(app: AmazonApp, region: str, state: str, marketplace: str | None = None) -> str:
    """Where the seller grants consent: their Seller Central's authorize page for this app."""
    params = {"application_id": app.application_id, "state": state}
    params["redirect_uri"] = app.redirect_uri
    if app.draft:
        params["version"] = "beta"
    return f"{app.seller_central(region, marketplace)}/apps/authorize/consent?{urlencode(params)}"


@dataclass(frozen=True)
class Marketplace:
    """One Amazon marketplace: its country code (as Amazon writes it), its SP-API region, its
    own Seller Central and its retail host."""

    code: str
    region: str
    seller_central: str
    retail: str


# Every marketplace's own Seller Central: a seller must authorize at their marketplace's Seller
# Central (SP-API "Seller Central URLs",
# https://developer-docs.amazon.com/sp-api/docs/seller-central-urls), and each marketplace's
# region is its SP-API endpoint's ("SP-API Endpoints",
# https://developer-docs.amazon.com/sp-api/docs/sp-api-endpoints: South Africa, Saudi Arabia,
# Egypt, Turkey, the UAE and India are in Europe). The country codes are Amazon's ("Marketplace
# IDs", https://developer-docs.amazon.com/sp-api/docs/marketplace-ids): the United Kingdom is UK.
MARKETPLACES = {
    m.code: m
    for m in (
        Marketplace("US", "na", "https://sellercentral.amazon.com", "amazon.com"),
        Marketplace("CA", "na", "https://sellercentral.amazon.ca", "amazon.ca"),
        Marketplace("MX", "na", "https://sellercentral.amazon.com.mx", "amazon.com.mx"),
        Marketplace("BR", "na", "https://sellercentral.amazon.com.br", "amazon.com.br"),
        Marketplace("UK", "eu", "https://sellercentral-europe.amazon.com", "amazon.co.uk"),
        Marketplace("DE", "eu", "https://sellercentral-europe.amazon.com", "amazon.de"),
        Marketplace("FR", "eu", "https://sellercentral-europe.amazon.com", "amazon.fr"),
        Marketplace("IT", "eu", "https://sellercentral-europe.amazon.com", "amazon.it"),
        Marketplace("ES", "eu", "https://sellercentral-europe.amazon.com", "amazon.es"),
        Marketplace("IE", "eu", "https://sellercentral.amazon.ie", "amazon.ie"),
        Marketplace("NL", "eu", "https://sellercentral.amazon.nl", "amazon.nl"),
        Marketplace("BE", "eu", "https://sellercentral.amazon.com.be", "amazon.com.be"),
        Marketplace("SE", "eu", "https://sellercentral.amazon.se", "amazon.se"),
        Marketplace("PL", "eu", "https://sellercentral.amazon.pl", "amazon.pl"),
        Marketplace("TR", "eu", "https://sellercentral.amazon.com.tr", "amazon.com.tr"),
        Marketplace("AE", "eu", "https://sellercentral.amazon.ae", "amazon.ae"),
        Marketplace("SA", "eu", "https://sellercentral.amazon.sa", "amazon.sa"),
        Marketplace("EG", "eu", "https://sellercentral.amazon.eg", "amazon.eg"),
        Marketplace("ZA", "eu", "https://sellercentral.amazon.co.za", "amazon.co.za"),
        Marketplace("IN", "eu", "https://sellercentral.amazon.in", "amazon.in"),
        Marketplace("JP", "fe", "https://sellercentral.amazon.co.jp", "amazon.co.jp"),
        Marketplace("AU", "fe", "https://sellercentral.amazon.com.au", "amazon.com.au"),
        Marketplace("SG", "fe", "https://sellercentral.amazon.sg", "amazon.sg"),
    )
}
_ALIASES = {"GB": "UK"}  # the ISO code of the United Kingdom, for those who type it


def marketplace(code: str) -> Marketplace:
    """The marketplace of a two-letter country code (any case); ValueError naming the codes
    when there is none."""
    wanted = code.strip().upper()
    found = MARKETPLACES.get(_ALIASES.get(wanted, wanted))
    if found is None:
        raise ValueError(
            f"{code!r} is not an Amazon marketplace: use one of {', '.join(MARKETPLACES)}"
        )
    return found


# Where Amazon may send the login-URI step back to, per region: Amazon documents the
# ``amazon_callback_uri`` as ``https://amazon.com/apps/authorize/confirm/<application id>``
# (SP-API "Website Authorization Workflow", step 4:
# https://developer-docs.amazon.com/sp-api/docs/website-authorization-workflow), so amazon.com
# is accepted in every region, with the region's marketplaces' Seller Central and retail hosts
# (and the country hosts of the marketplaces that share sellercentral-europe). Nothing else:
# the step must never be an open redirect.
_SHARED_EUROPE = ("co.uk", "de", "fr", "it", "es")
_AMAZON_CALLBACK_HOSTS = {
    region: ("amazon.com", *(m.retail for m in MARKETPLACES.values() if m.region == region))
    for region in SELLER_CENTRAL
}
_SELLER_CENTRAL_HOSTS = {
    region: (
        *(urlsplit(m.seller_central).netloc for m in MARKETPLACES.values() if m.region == region),
        *((f"sellercentral.amazon.{tld}" for tld in _SHARED_EUROPE) if region == "eu" else ()),
    )
    for region in SELLER_CENTRAL
}


def amazon_callback_hosts(region: str) -> frozenset[str]:
    """The hosts an absolute ``amazon_callback_uri`` may name for ``region`` (https only)."""
    retail = _AMAZON_CALLBACK_HOSTS[region]
    return frozenset((*retail, *(f"www.{host}" for host in retail), *_SELLER_CENTRAL_HOSTS[region]))


def login_continue_url(
    app: AmazonApp,
    region: str,
    amazon_callback_uri: str,
    amazon_state: str,
    state: str,
    *,
    beta: bool = False,
    marketplace: str | None = None,
) -> str:
    """The login-URI step: send the seller back to Amazon with our state.

    A relative ``amazon_callback_uri`` is resolved against Seller Central; an absolute one must
    be ``https`` on one of Amazon's hosts for the region (or exactly the configured Seller
    Central), so the login step cannot be used as an open redirect. ``version=beta`` is added
    for a draft app, or when Amazon sent it with the login request (``beta``).
    """
    base = app.seller_central(region, marketplace)
    target = urljoin(base + "/", amazon_callback_uri)
    where, home = urlsplit(target), urlsplit(base)
    if not _is_amazon(where, home, region):
        raise ValueError("amazon_callback_uri does not point at Amazon")
    params = {"amazon_state": amazon_state, "state": state, "redirect_uri": app.redirect_uri}
    if app.draft or beta:
        params["version"] = "beta"
    separator = "&" if where.query else "?"
    return f"{target}{separator}{urlencode(params)}"


def _is_amazon(where: SplitResult, seller_central: SplitResult, region: str) -> bool:
    if where.username is not None or where.password is not None or where.fragment:
        return False
    if (where.scheme, where.netloc) == (seller_central.scheme, seller_central.netloc):
        return True
    try:
        port = where.port
    except ValueError:
        return False
    return (
        where.scheme == "https"
        and port in (None, 443)
        and where.hostname in amazon_callback_hosts(region)
    )


@dataclass(frozen=True)
class TokenGrant:
    """Tokens from LWA; kept out of ``repr`` so they never reach a log or a traceback."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_in: int


def parse_token_response(response: Reply) -> TokenGrant:
    """A successful grant, or the classified error."""
    status = response.status_code
    body = json_object(response, "LWA", "lwa")
    if status == 200:
        access_token = body.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise TransientProviderError(
                "LWA answered 200 without an access token",
                error_type="lwa_bad_response",
                status_code=status,
            )
        refresh_token = body.get("refresh_token")
        expires_in = lifetime(body.get("expires_in", 3600))
        if expires_in is None:
            raise TransientProviderError(
                f"LWA answered 200 with expires_in={str(body.get('expires_in'))[:20]!r}",
                error_type="lwa_bad_response",
                status_code=status,
            )
        return TokenGrant(
            access_token=access_token,
            refresh_token=refresh_token
            if isinstance(refresh_token, str) and refresh_token
            else None,
            expires_in=expires_in,
        )
    error = str(body.get("error", ""))
    description = excerpt(str(body.get("error_description", "")) or error or f"HTTP {status}")
    if status in (408, 429) or status >= 500:
        raise TransientProviderError(
            f"LWA answered {status}: {description}",
            error_type=_TRANSIENT_TYPES.get(status, "lwa_server_error"),
            status_code=status,
            retry_after=retry_after(response),
        )
    if error == "invalid_grant":
        raise SellerAuthorizationRevoked(
            f"LWA refused the grant: {description}",
            error_type="oauth_token_revoked",
            status_code=status,
        )
    if error in ("invalid_client", "unauthorized_client"):
        raise AppCredentialsRejected(
            f"LWA rejected the app's credentials ({error}): check AMAZON_LWA_CLIENT_ID and "
            "AMAZON_LWA_CLIENT_SECRET",
            error_type="lwa_app_credentials_rejected",
            status_code=status,
        )
    code = excerpt(error, 40)
    raise ProviderError(
        f"LWA answered {status}{f' {code}' if code else ''}: {description}",
        error_type=f"lwa_{code}" if code else "lwa_error",
        status_code=status,
    )


def excerpt(text: str, limit: int = 200) -> str:
    """Provider text fit for a message, a log line and the events table: secrets redacted,
    control characters escaped, cut at ``limit`` characters."""
    # Mutation testing: codec names are case-insensitive, so "UNICODE_ESCAPE" and "ASCII"
    # (the surviving mutants) are the same codecs.
    shown = redact_text(text).encode("unicode_escape").decode("ascii")  # pragma: no mutate
    return shown if len(shown) <= limit else shown[:limit] + "…"


_TRANSIENT_TYPES = {408: "lwa_timeout", 429: "lwa_throttled"}
LONGEST_LIFETIME = 10**9
"""More seconds than any token lives (about 31 years): a larger ``expires_in`` is not believed."""
LONGEST_RETRY_AFTER = 300.0
"""The longest ``Retry-After`` honoured, in seconds; a run never waits longer on one answer."""


def json_object(response: Reply, service: str, prefix: str) -> dict[str, Any]:
    """The answer's JSON object, or a transient failure whatever the status: Amazon's own
    answers are JSON, so anything else came from something in front of it (a proxy, an
    edge, a captive portal), and such failures are retried (docs/behaviour.md §5)."""
    try:
        body: Any = response.json()
    except ValueError:
        # Mutation testing: any value that is not a dict is the same here ("" survives).
        body = None  # pragma: no mutate
    if not isinstance(body, dict):
        raise TransientProviderError(
            f"{service} answered {response.status_code} with a body that is not JSON",
            error_type=f"{prefix}_bad_response",
            status_code=response.status_code,
            retry_after=retry_after(response),
        )
    return body


def lifetime(value: Any) -> int | None:
    """``expires_in`` in seconds: a positive integer (``3600``, or ``3600.0``), or the same as
    a decimal string (``"3600"``, as some of Amazon's documents show it), at most
    ``LONGEST_LIFETIME``; ``None`` for anything else."""
    # At most 10 digits, as many as LONGEST_LIFETIME has: int() never sees a long string.
    decimal = isinstance(value, str) and value.isascii() and value.isdecimal() and len(value) <= 10
    whole = isinstance(value, float) and value.is_integer()
    if decimal or whole:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 < value <= LONGEST_LIFETIME else None


def retry_after(response: Reply) -> float | None:
    # Mutation testing: header names are case-insensitive ("RETRY-AFTER" survives).
    value = response.headers.get("retry-after")  # pragma: no mutate
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: LWA sends none, and the backoff decides instead
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), LONGEST_RETRY_AFTER)


class LwaClient:
    """The LWA token endpoint, synchronously (one seller at a time: connect, refresh)."""

    def __init__(
        self,
        app: AmazonApp,
        http: httpx.Client | None = None,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        """``http`` is used as given and left open; without it the client makes its own,
        waiting at most ``timeout`` for LWA, and closes it with itself."""
        self.app = app
        self._http = http or httpx.Client(timeout=timeout)
        self._owns_http = http is None

    def __enter__(self) -> LwaClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def exchange_code(self, code: str) -> TokenGrant:
        """Trade a consent ``spapi_oauth_code`` (valid 5 minutes) for tokens."""
        return self._grant(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.app.redirect_uri,
            }
        )

    def refresh(self, refresh_token: str) -> TokenGrant:
        return self._grant({"grant_type": "refresh_token", "refresh_token": refresh_token})

    def _grant(self, form: dict[str, str]) -> TokenGrant:
        form = {**form, "client_id": self.app.client_id, "client_secret": self.app.client_secret}
        try:
            response = self._http.post(self.app.token_url, data=form)
        except httpx.HTTPError as error:
            raise transport_failure(error, "LWA token request failed") from None
        return parse_token_response(response)


FORM = {"Content-Type": "application/x-www-form-urlencoded;charset=UTF-8"}


class AsyncLwaClient:
    """The LWA token endpoint for many sellers at once (``refresh-all``): the same requests
    and the same classifier as ``LwaClient``, over aiohttp (see ``async_http``)."""

    def __init__(
        self,
        app: AmazonApp,
        session: aiohttp.ClientSession | None = None,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        connections: int = 64,  # pragma: no mutate  (pool size: speed, not answers)
    ) -> None:
        """``session`` is used as given and left open; without it the client opens its own
        (at most ``connections`` at once, ``timeout``) and closes it with itself."""
        self.app = app
        self._owns_session = session is None
        self._session = session or open_session(timeout, connections)
        self._app_form = urlencode(
            {"client_id": app.client_id, "client_secret": app.client_secret}
        )  # the same on every call: encoded once

    async def __aenter__(self) -> AsyncLwaClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._owns_session:
            await self._session.close()

    async def refresh(self, refresh_token: str) -> TokenGrant:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        reply = await send(
            self._session,
            "POST",  # pragma: no mutate  (aiohttp upper-cases the method)
            self.app.token_url,
            headers=FORM,
            data=f"{urlencode(form)}&{self._app_form}".encode(),
            what="LWA token request failed",
            service="lwa",
        )
        return parse_token_response(reply)
