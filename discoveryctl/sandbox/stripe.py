"""Stripe's ``/v1/customers``: create (with Stripe's idempotency-key rules), list, search and
retrieve, behind secret-key authentication, rate limits and the global Stripe switches.

Every behaviour names the public source it follows; where none exists the comment says so.
The sources, cited by title:

- "Idempotent requests", https://docs.stripe.com/api/idempotent_requests
- "Advanced error handling", https://docs.stripe.com/error-low-level
- "Error codes", https://docs.stripe.com/error-codes
- "Search", https://docs.stripe.com/search
- "Pagination", https://docs.stripe.com/api/pagination
- "Rate limits", https://docs.stripe.com/rate-limits
- stripe-python ``_http_client.py`` (``HTTPClient._should_retry``) and its generated
  ``params/_customer_list_params.py``, https://github.com/stripe/stripe-python
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import string
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from discoveryctl.sandbox.asgi import Request, Response, html_response, json_response
from discoveryctl.sandbox.config import SandboxConfig
from discoveryctl.sandbox.state import STRIPE, SandboxState, StoredResponse

CUSTOMERS_PATH = "/v1/customers"
SEARCH_PATH = "/v1/customers/search"
CUSTOMER_PATH = "/v1/customers/{id}"

IDEMPOTENCY_KEY_TTL = 24 * 60 * 60
"""Per "Idempotent requests": keys may be pruned once they are at least 24 hours old, and a key
reused after that creates anew. The sandbox prunes at exactly 24 hours, the earliest Stripe
may, measured from the key's first use on the sandbox clock."""

MAX_IDEMPOTENCY_KEY_LENGTH = 255
"""Per "Idempotent requests": "Idempotency keys are up to 255 characters long"."""

RATE_LIMITS = {"all": 25, "search": 20}
"""Per "Rate limits" (https://docs.stripe.com/rate-limits, as it reads now): a sandbox's
global limit is 25 operations a second over every endpoint (live mode: 100), each endpoint's
own default limit is 25 a second too (never the stricter here), and search endpoints allow 20
a second, which also count against the global limit."""

_CUSTOMER_FIELDS = ("email", "name", "description", "phone")
_METADATA = re.compile(r"metadata\[(?P<key>[^\]]+)\]\Z")
_EXPAND = re.compile(r"expand(\[\d*\])?\Z")
_CREATED = re.compile(r"created\[(?P<op>gt|gte|lt|lte)\]\Z")
_INTEGER = re.compile(r"-?\d+\Z")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+\Z")
_NO_KEY = (
    "You did not provide an API key. You need to provide your API key in the Authorization "
    "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See "
    "https://stripe.com/docs/api#authentication for details, or we can help at "
    "https://support.stripe.com/."
)

Bucket = Literal["all", "search"]
Endpoint = Callable[[Request, SandboxConfig, SandboxState, str], Awaitable[Response]]


async def create_customer(request: Request, config: SandboxConfig, state: SandboxState) -> Response:
    """``POST /v1/customers``."""
    return await _serve(request, config, state, _create, ("all",), writing=True)


async def list_customers(request: Request, config: SandboxConfig, state: SandboxState) -> Response:
    """``GET /v1/customers``, newest first, filtered by ``email`` and ``created``."""
    return await _serve(request, config, state, _list, ("all",))


async def search_customers(
    request: Request, config: SandboxConfig, state: SandboxState
) -> Response:
    """``GET /v1/customers/search?query=``."""
    return await _serve(request, config, state, _search, ("all", "search"))


async def retrieve_customer(
    request: Request, config: SandboxConfig, state: SandboxState
) -> Response:
    """``GET /v1/customers/{id}``."""
    return await _serve(request, config, state, _retrieve, ("all",))


def server_error(status: int) -> Response:
    """What Stripe answers when it fails on its side."""
    response = _api_error(status)
    response.headers.append(("request-id", _new_id("req_")))
    return response


async def _serve(
    request: Request,
    config: SandboxConfig,
    state: SandboxState,
    endpoint: Endpoint,
    buckets: tuple[Bucket, ...],
    *,
    writing: bool = False,
) -> Response:
    """Apply, in order, the edge, authentication, the rate limiters and the switches that
    act before an endpoint runs, then run it."""
    # "Versioning": a request may name the API version it was written against; the sandbox
    # answers every version alike and counts what it was sent (stats()["stripe_versions"]).
    state.record_stripe_version(request.header("stripe-version"))
    edge = _edge_page(state)
    if edge is not None:
        return edge
    request_id = _new_id("req_")
    response = (
        _authenticate(request, config)
        or _rate_limit(config, state, buckets)
        or _refuse_before_executing(state, writing=writing)
    )
    if response is None:
        response = await endpoint(request, config, state, request_id)
    response.headers.append(("request-id", request_id))
    return response


def _edge_page(state: SandboxState) -> Response | None:
    """``stripe_edge_4xx``: the edge in front of the API answers a 4xx with an HTML page
    instead of Stripe's JSON. No public source documents these pages or their content;
    stripe-python's ``_api_requestor.py`` does handle a body that is not JSON ("Invalid
    response body from API"), which is what this switch exercises."""
    page = state.take_behaviour(STRIPE, "stripe_edge_4xx")
    if page is None:
        return None
    status = page.get("edge_status", 403)
    return html_response(status, f"<html><body><h1>{status}</h1></body></html>")


def _rate_limit(
    config: SandboxConfig, state: SandboxState, buckets: tuple[Bucket, ...]
) -> Response | None:
    """Per "Rate limits": too many requests in a second get 429 with code ``rate_limit``; a
    limited request counts for nothing. Stripe's limiters are token buckets (its post
    "Scaling your API with rate limiters"); the sandbox keeps a sliding one-second window on
    its clock, which allows no more. "Advanced error handling": rate limiters run before
    the idempotency layer, so a limited request keeps nothing under its key."""
    if not config.stripe_rate_limits:
        return None
    if state.admit_stripe_request({b: RATE_LIMITS[b] for b in buckets}, 1.0):
        return None
    return _rate_limit_error()


def _rate_limit_error() -> Response:
    # The message as Stripe sends it, recorded in public test fixtures (no Stripe page
    # quotes it). No public source says a rate_limit 429 carries Stripe-Should-Retry;
    # without it stripe-python does not retry a 429 (``_should_retry``).
    return _error(
        429,
        "invalid_request_error",
        "Request rate limit exceeded. Learn more about rate limits here "
        "https://stripe.com/docs/rate-limits.",
        code="rate_limit",
    )


def _refuse_before_executing(state: SandboxState, *, writing: bool) -> Response | None:
    """``stripe_429``, ``stripe_lock_timeout`` and ``stripe_5xx``: the endpoint never runs,
    so nothing is kept under an idempotency key. ``stripe_5xx`` with ``writes=1`` fails
    creates only (a test switch: lookups between them answer)."""
    if state.take_behaviour(STRIPE, "stripe_429") is not None:
        return _rate_limit_error()
    if state.take_behaviour(STRIPE, "stripe_lock_timeout") is not None:
        # "Error codes": lock_timeout, with its documented text. stripe-python's
        # ``_should_retry`` notes the API advises a retry "in cases of lock timeouts" with
        # Stripe-Should-Retry: true; its retry would be pointless if the 429 were kept.
        response = _error(
            429,
            "invalid_request_error",
            "This object cannot be accessed right now because another API request or Stripe "
            "process is currently accessing it. If you see this error intermittently, retry "
            "the request. If you see this error frequently and are making multiple concurrent "
            "requests to a single object, make your requests serially or at a lower rate.",
            code="lock_timeout",
        )
        response.headers.append(("stripe-should-retry", "true"))
        return response
    failure = state.take_behaviour(
        STRIPE, "stripe_5xx", lambda params: writing or not params.get("writes")
    )
    if failure is None:
        return None
    status = failure.get("status", 500)
    if failure.get("html"):  # the edge in front of the API answers with a page
        return html_response(status, f"<html><body><h1>{status} Server Error</h1></body></html>")
    response = _error(status, "api_error", _API_ERROR_MESSAGE)
    should_retry = failure.get("should_retry")
    if should_retry is None:
        _mark_should_retry(response)
    else:
        response.headers.append(("stripe-should-retry", "true" if should_retry else "false"))
    return response


_API_ERROR_MESSAGE = (
    "Sorry, something went wrong. We've already been notified of the problem, but if you "
    "need any help, you can reach us at support.stripe.com/contact."
)


def _api_error(status: int) -> Response:
    response = _error(status, "api_error", _API_ERROR_MESSAGE)
    _mark_should_retry(response)
    return response


def _mark_should_retry(response: Response) -> None:
    """stripe-python's ``_should_retry``: "we expect the stripe-should-retry header to be
    false in most cases when a 500 is returned, since our idempotency framework would
    typically replay it anyway". Other 5xx: no public source, so no header."""
    if response.status == 500:
        response.headers.append(("stripe-should-retry", "false"))


def _authenticate(request: Request, config: SandboxConfig) -> Response | None:
    key = _api_key(request.header("authorization") or "")
    if not key:
        response = _error(401, "invalid_request_error", _NO_KEY)
    elif not secrets.compare_digest(key.encode(), config.stripe_api_key.encode()):
        response = _error(401, "invalid_request_error", f"Invalid API Key provided: {_mask(key)}")
    else:
        return None
    response.headers.append(("www-authenticate", 'Basic realm="Stripe"'))
    return response


def _api_key(authorization: str) -> str:
    """The secret key of a Bearer or Basic (key as user name) ``Authorization`` header."""
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(credentials.strip()).decode().partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            return ""
    return ""


def _mask(key: str) -> str:
    """Stripe shows a rejected key's prefix and last four characters only."""
    prefix = key[:8]
    tail = key[-4:] if len(key) >= 16 else ""
    return prefix + "*" * max(4, len(key) - len(prefix) - len(tail)) + tail


# -- create ------------------------------------------------------------------------------------


async def _create(
    request: Request, config: SandboxConfig, state: SandboxState, request_id: str
) -> Response:
    """Per "Idempotent requests": the first answer is kept once the endpoint starts executing and
    replayed to a retry with the same parameters (``Idempotent-Replayed: true``, "Advanced
    error handling"); other parameters get an ``idempotency_error``; a retry while the first
    is still executing gets 409 ``idempotency_key_in_use`` ("Error codes"). Requests that
    fail validation keep nothing."""
    params = request.form_pairs
    key = request.header("idempotency-key")
    if key is not None and not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        # Stripe's answer to a key of the wrong length, as recorded in public code
        # (type idempotency_error, status 400); "Idempotent requests" gives the 255 limit.
        return _error(
            400,
            "idempotency_error",
            f"Idempotent key length is {len(key)} characters long, which is outside accepted "
            "lengths. Idempotent Keys must be 1-255 characters long. If you're looking for a "
            "decent generator, try using a UUID defined by IETF RFC 4122.",
        )
    invalid = _invalid_customer_params(params)
    if invalid is not None:
        return invalid
    if state.take_behaviour(STRIPE, "stripe_email_invalid") is not None:
        # ``stripe_email_invalid``: Stripe's own email checks refuse an address ours let
        # through. Which addresses they refuse is not public; the answer is "Error codes"'
        # email_invalid, given at validation, so nothing is kept under the key
        # ("Idempotent requests": a request that fails validation is not saved).
        return _email_invalid(dict(params).get("email", ""))
    if key is None:
        return await _execute_create(params, state, request_id, None)
    fingerprint = ("POST", request.path, tuple(sorted(params)))
    claim = state.claim_idempotency_key(key, fingerprint, IDEMPOTENCY_KEY_TTL)
    if claim.outcome == "in_flight":
        return _error(
            409,
            "invalid_request_error",
            "There is currently another in-progress request using this Idempotent Key (that "
            "probably means you submitted twice, and the other request is still going "
            f"through): {key}. Please try again later.",
            code="idempotency_key_in_use",
        )
    if claim.outcome == "mismatch":
        return _error(
            400,
            "idempotency_error",
            "Keys for idempotent requests can only be used with the same parameters they were "
            f"first used with. Try using a key other than '{key}' if you meant to execute a "
            "different request.",
        )
    if claim.stored is not None:
        stored = claim.stored
        return Response(
            stored.status,
            stored.body,
            [
                ("idempotent-replayed", "true"),
                ("original-request", stored.request_id),
                *stored.headers,
            ],
        )
    try:
        return await _execute_create(params, state, request_id, key)
    finally:
        state.release_idempotency_key(key)


async def _execute_create(
    params: list[tuple[str, str]], state: SandboxState, request_id: str, key: str | None
) -> Response:
    """Create the customer; with ``key``, keep the answer for retries before sending it."""
    await _execution_delay(state)
    values = dict(params)
    metadata = {}
    for name, value in params:
        match = _METADATA.match(name)
        if match and value:
            metadata[match["key"]] = value
    customer = state.create_customer(
        {
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": int(state.clock.now()),
            "currency": None,
            "default_source": None,
            "delinquent": False,
            "description": values.get("description") or None,
            "discount": None,
            "email": values.get("email") or None,
            "invoice_prefix": _new_id("").upper()[:8],
            "livemode": False,
            "metadata": metadata,
            "name": values.get("name") or None,
            "phone": values.get("phone") or None,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }
    )
    response = json_response(200, customer)
    replayed_headers: tuple[tuple[str, str], ...] = ()
    failed = state.take_behaviour(STRIPE, "stripe_500_after_create")
    if failed is not None:
        # "Idempotent requests": Stripe failed after it began executing, the customer may
        # exist, and the 500 is what the key replays from now on ("including 500 errors").
        # The page says the status and body are saved; no source says which headers come
        # with a replay, so none do unless ``replay_should_retry=1`` asks for the header.
        response = _api_error(500)
        if failed.get("replay_should_retry"):
            replayed_headers = (("stripe-should-retry", "false"),)
    if key is not None:
        state.store_idempotent_response(
            key, StoredResponse(response.status, response.body, request_id, replayed_headers)
        )
    response.lost_in_transit = state.take_behaviour(STRIPE, "stripe_drop_after_create") is not None
    return response


def _invalid_customer_params(params: list[tuple[str, str]]) -> Response | None:
    for name, value in params:
        if name not in _CUSTOMER_FIELDS and not _METADATA.match(name) and not _EXPAND.match(name):
            return _unknown_parameter(name)
        if name == "email" and value and not _EMAIL.match(value):
            return _email_invalid(value)
    return None


def _email_invalid(value: str) -> Response:
    return _error(
        400,
        "invalid_request_error",
        f"Invalid email address: {value}",
        code="email_invalid",
        param="email",
    )


# -- list ----------------------------------------------------------------------------------------

# stripe-python's generated ``CustomerListParams``: created (an integer or gt/gte/lt/lte),
# email ("a case-sensitive filter"), ending_before, expand, limit, starting_after, test_clock.
_LIST_PARAMS = frozenset(
    {"created", "email", "ending_before", "limit", "starting_after", "test_clock"}
)
_SEARCH_PARAMS = frozenset({"query", "limit", "page"})
_COMPARISONS: dict[str, Callable[[int, int], bool]] = {
    "eq": lambda a, b: a == b,
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
}


async def _list(
    request: Request, config: SandboxConfig, state: SandboxState, request_id: str
) -> Response:
    """Per "Pagination": newest first; ``starting_after`` pages towards older customers,
    ``ending_before`` towards newer ones (the page closest to the cursor, still newest
    first), ``has_more`` says whether more lie beyond the page in that direction."""
    limit = _page_size(request, _LIST_PARAMS)
    if isinstance(limit, Response):
        return limit
    created = _created_filters(request)
    if isinstance(created, Response):
        return created
    after, before = request.query.get("starting_after"), request.query.get("ending_before")
    if after is not None and before is not None:
        # No public source gives Stripe's answer to both cursors; the sandbox refuses.
        return _error(
            400,
            "invalid_request_error",
            "You may only specify one of these parameters: ending_before, starting_after.",
            param="ending_before",
        )
    await _execution_delay(state)
    everyone = state.customers()
    email, test_clock = request.query.get("email"), request.query.get("test_clock")
    found = [
        c
        for c in everyone
        if (email is None or c["email"] == email)
        and c["test_clock"] == test_clock  # none has one; without the filter, none is shown
        and all(_COMPARISONS[op](c["created"], value) for op, value in created)
    ]
    cursor = after if after is not None else before
    if cursor is not None:
        order = {c["id"]: position for position, c in enumerate(everyone)}
        if cursor not in order:
            return _error(
                400,
                "invalid_request_error",
                f"No such customer: '{cursor}'",
                code="resource_missing",
                param="starting_after" if after is not None else "ending_before",
            )
        if after is not None:
            found = [c for c in found if order[c["id"]] > order[cursor]]
        else:
            found = [c for c in found if order[c["id"]] < order[cursor]][::-1]
    shown = found[:limit]
    if before is not None:
        shown.reverse()
    return json_response(
        200,
        {"object": "list", "data": shown, "has_more": len(found) > limit, "url": CUSTOMERS_PATH},
    )


def _created_filters(request: Request) -> list[tuple[str, int]] | Response:
    filters: list[tuple[str, int]] = []
    for name, raw in request.query.items():
        match = _CREATED.match(name)
        if name != "created" and match is None:
            continue
        if not _INTEGER.match(raw):
            return _invalid_integer(name, raw)
        filters.append((match["op"] if match else "eq", int(raw)))
    return filters


def _page_size(request: Request, known: frozenset[str]) -> int | Response:
    """A list or search request's ``limit``, after refusing parameters the endpoint does not
    take (Stripe's list cannot filter by metadata). ``expand`` is taken everywhere, as
    stripe-python may send it; ``created[…]`` where ``created`` is known."""
    for name in request.query:
        if name in known or _EXPAND.match(name):
            continue
        if "created" in known and _CREATED.match(name):
            continue
        return _unknown_parameter(name)
    return _limit(request)


def _limit(request: Request) -> int | Response:
    """Per "Pagination": "Limit can range between 1 and 100, and the default is 10". The refusal
    messages are Stripe's as recorded by other public emulators; no Stripe page quotes them."""
    raw = request.query.get("limit", "10")
    if not _INTEGER.match(raw):
        return _invalid_integer("limit", raw)
    limit = int(raw)
    if limit < 1:
        message = "This value must be greater than or equal to 1."
    elif limit > 100:
        message = "This value must be less than or equal to 100."
    else:
        return limit
    return _error(
        400, "invalid_request_error", message, code="parameter_invalid_integer", param="limit"
    )


def _invalid_integer(name: str, raw: str) -> Response:
    return _error(
        400,
        "invalid_request_error",
        f"Invalid integer: {raw}",
        code="parameter_invalid_integer",
        param=name,
    )


def _unknown_parameter(name: str) -> Response:
    return _error(
        400,
        "invalid_request_error",
        f"Received unknown parameter: {name}",
        code="parameter_unknown",
        param=name,
    )


# -- search --------------------------------------------------------------------------------------


async def _search(
    request: Request, config: SandboxConfig, state: SandboxState, request_id: str
) -> Response:
    unavailable = state.take_behaviour(STRIPE, "stripe_search_unavailable")
    if unavailable is not None:
        # "Search", Limitations: search "is not available to merchants in India". The message
        # is Stripe's as reported in better-auth/better-auth#7959 ("search feature unavailable
        # for merchant"); no public source gives the status or the error type, so 400
        # invalid_request_error is the sandbox's guess, and ``refusal_status`` picks another.
        return _error(
            unavailable.get("refusal_status", 400),
            "invalid_request_error",
            "search feature unavailable for merchant",
        )
    limit = _page_size(request, _SEARCH_PARAMS)
    if isinstance(limit, Response):
        return limit
    query = request.query.get("query")
    if query is None:
        return _error(
            400,
            "invalid_request_error",
            "Missing required param: query.",
            code="parameter_missing",
            param="query",
        )
    parsed = parse_query(query)
    if isinstance(parsed, str):
        # "Search": an unsupported field or operator "returns an error"; the wording of
        # Stripe's messages is not public, so these are the sandbox's own.
        return _error(400, "invalid_request_error", parsed, param="query")
    offset = _page_offset(request.query.get("page"))
    if offset is None:
        return _error(400, "invalid_request_error", "Invalid page.", param="page")
    await _execution_delay(state)
    # "Search": "Don't use search for read-after-write flows ... Under normal operating
    # conditions, data is searchable in under 1 minute." New customers stay invisible to
    # search for ``stripe_search_lag_seconds`` (the ``stripe_search_lag`` switch overrides it
    # in ms); list and retrieve see them at once.
    lag = state.take_behaviour(STRIPE, "stripe_search_lag")
    lag_seconds = lag["ms"] / 1000 if lag is not None else config.stripe_search_lag_seconds
    found = [c for c in state.customers(older_than=lag_seconds) if parsed.matches(c)]
    shown = found[offset : offset + limit]
    has_more = len(found) > offset + limit
    return json_response(
        200,
        {
            "object": "search_result",
            "data": shown,
            "has_more": has_more,
            "next_page": _page_token(offset + limit) if has_more else None,
            "url": SEARCH_PATH,
        },
    )


FieldType = Literal["string", "token", "numeric"]

# "Search", query fields for customers: created, email, metadata, name, phone. The page types
# email, name and phone as strings ("exact match, substring (case insensitive)"); metadata is
# matched exactly, case-sensitively; created is numeric.
CUSTOMER_SEARCH_FIELDS: dict[str, FieldType] = {
    "created": "numeric",
    "email": "string",
    "metadata": "token",
    "name": "string",
    "phone": "string",
}
_OPERATORS: dict[FieldType, frozenset[str]] = {
    "string": frozenset({":", "~"}),
    "token": frozenset({":"}),
    "numeric": frozenset({":", ">", "<", ">=", "<="}),
}
MIN_SUBSTRING = 3
"""Substring (``~``) values need at least 3 characters. Stripe's search page gives this in its
syntax table, which public copies of the page lose; hideokamoto/stripe-search-ql's README
("Limitations") repeats it."""

_CLAUSE = re.compile(
    r"""(?P<negated>-)?"""
    r"""(?P<field>metadata\[(?P<kq>['"])(?P<key>(?:\\.|(?!(?P=kq)).)+)(?P=kq)\]|[a-z_]+)"""
    r"""(?P<op>:|~|>=|<=|>|<)"""
    r"""(?:(?P<vq>['"])(?P<quoted>(?:\\.|(?!(?P=vq)).)*)(?P=vq)|(?P<bare>[^\s'"]+))"""
)
_JOIN = re.compile(r"\s+(?:(?P<word>and|or)\s+)?", re.IGNORECASE)
_ESCAPE = re.compile(r"\\(.)")


@dataclass(frozen=True)
class Clause:
    """One ``[-]field<op>value`` clause of a search query."""

    field: str
    key: str | None
    op: str
    value: str | int | None  # None: the query said ``null``
    negated: bool

    def matches(self, customer: dict[str, Any]) -> bool:
        actual = customer["metadata"].get(self.key) if self.key else customer.get(self.field)
        if self.value is None or actual is None:
            hit = self.value is None and actual is None
        elif isinstance(self.value, int):
            hit = _COMPARISONS[_NUMERIC_OPS[self.op]](int(actual), self.value)
        elif self.op == "~":
            hit = self.value.casefold() in str(actual).casefold()
        elif CUSTOMER_SEARCH_FIELDS[self.field] == "string":
            hit = _contains_phrase(str(actual), self.value)
        else:
            hit = actual == self.value
        return hit != self.negated


_NUMERIC_OPS = {":": "eq", ">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}


def _contains_phrase(actual: str, wanted: str) -> bool:
    """Per "Search": an exact match on a string "returns any record where that record contains
    all of the words from the query in the same order" (case insensitive)."""
    words, phrase = actual.casefold().split(), wanted.casefold().split()
    return any(words[i : i + len(phrase)] == phrase for i in range(len(words) - len(phrase) + 1))


@dataclass(frozen=True)
class Query:
    """A parsed search query: its clauses and whether all or any must match."""

    clauses: tuple[Clause, ...]
    any_of: bool

    def matches(self, customer: dict[str, Any]) -> bool:
        hits = (clause.matches(customer) for clause in self.clauses)
        return any(hits) if self.any_of else all(hits)


def parse_query(query: str) -> Query | str:
    """The customer search ``query``, or why Stripe refuses it.

    "Search": clauses are joined by whitespace or by ``AND``/``OR`` (case insensitive),
    ANDed by default; "AND and OR operators are mutually exclusive"; ``-`` negates a clause;
    string values must be quoted (either quote, ``\\`` escapes), numbers need not be.
    """
    query = query.strip()
    clauses: list[Clause] = []
    joins: set[str] = set()
    position = 0
    while True:
        match = _CLAUSE.match(query, position)
        if match is None:
            return f"Invalid search query at character {position + 1}: {query!r}."
        clause = _clause(match)
        if isinstance(clause, str):
            return clause
        clauses.append(clause)
        position = match.end()
        if position == len(query):
            break
        join = _JOIN.match(query, position)
        if join is None or join.end() == len(query):
            return f"Invalid search query at character {position + 1}: {query!r}."
        joins.add((join["word"] or "and").lower())
        position = join.end()
    if len(joins) > 1:
        return "AND and OR operators cannot be combined in one search query."
    return Query(tuple(clauses), joins == {"or"})


def _clause(match: re.Match[str]) -> Clause | str:
    key = _ESCAPE.sub(r"\1", match["key"]) if match["key"] else None
    field = "metadata" if key is not None else match["field"]
    kind = CUSTOMER_SEARCH_FIELDS.get(field)
    if kind is None or (field == "metadata" and key is None):
        return (
            f"Field '{field}' is an unsupported search field for resource 'customers'. See "
            "https://stripe.com/docs/search#query-fields-for-customers for a list of "
            "supported fields."
        )
    op = match["op"]
    if op not in _OPERATORS[kind]:
        return f"The operator '{op}' is not supported on the {kind} field '{field}'."
    value: str | int | None
    if match["bare"] is not None:
        if match["bare"] == "null":
            value = None
        elif kind == "numeric" and _INTEGER.match(match["bare"]):
            value = int(match["bare"])
        else:
            return f"The value for '{field}' must be quoted: {match['bare']}."
    else:
        value = _ESCAPE.sub(r"\1", match["quoted"])
        if kind == "numeric":
            if not _INTEGER.match(value):
                return f"The value for '{field}' must be a number: {value!r}."
            value = int(value)
    if op == "~" and (value is None or len(str(value)) < MIN_SUBSTRING):
        return f"Substring matches on '{field}' need at least {MIN_SUBSTRING} characters."
    return Clause(field, key, op, value, match["negated"] is not None)


def _page_token(offset: int) -> str:
    """An opaque cursor, as Stripe's ``next_page`` ("Pagination", search)."""
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _page_offset(page: str | None) -> int | None:
    if page is None:
        return 0
    try:
        kind, _, value = base64.urlsafe_b64decode(page.encode()).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return int(value) if kind == "offset" and value.isdigit() else None


# -- retrieve ------------------------------------------------------------------------------------


async def _retrieve(
    request: Request, config: SandboxConfig, state: SandboxState, request_id: str
) -> Response:
    await _execution_delay(state)
    customer_id = request.path_params["id"]
    customer = state.customer(customer_id)
    if customer is None:
        return _error(
            404,
            "invalid_request_error",
            f"No such customer: '{customer_id}'",
            code="resource_missing",
            param="id",
        )
    return json_response(200, customer)


async def _execution_delay(state: SandboxState) -> None:
    """``stripe_slow``: the endpoint takes ``ms`` to execute (an idempotency key is held)."""
    slow = state.take_behaviour(STRIPE, "stripe_slow")
    if slow is not None:
        await state.clock.sleep(slow["ms"] / 1000)


def _error(
    status: int, kind: str, message: str, *, code: str | None = None, param: str | None = None
) -> Response:
    """Stripe's error object (``error.type``, ``message``, ``code``, ``doc_url``, ``param``)."""
    error: dict[str, str] = {"message": message, "type": kind}
    if code is not None:
        error["code"] = code
        error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
    if param is not None:
        error["param"] = param
    return json_response(status, {"error": error})


def _new_id(prefix: str) -> str:
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(14))
