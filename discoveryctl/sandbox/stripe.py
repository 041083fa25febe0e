"""Stripe's ``/v1/customers``: create (with Stripe's idempotency-key rules), list, search and
retrieve, behind secret-key authentication, with the global Stripe switches.

Idempotency as Stripe documents it: a key's first answer is kept once the endpoint starts
executing and replayed byte for byte (``Idempotent-Replayed: true``) to a retry with the same
parameters; other parameters get an ``idempotency_error``; a retry while the first request is
still executing gets 409 ``idempotency_key_in_use``. Requests that fail validation, are rate
limited or fail before executing (``stripe_429``, ``stripe_5xx``, ``fail_rate``) keep nothing.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import string
from collections.abc import Awaitable, Callable
from typing import Any

from discoveryctl.sandbox.asgi import Request, Response, html_response, json_response
from discoveryctl.sandbox.config import SandboxConfig
from discoveryctl.sandbox.state import STRIPE, SandboxState, StoredResponse

CUSTOMERS_PATH = "/v1/customers"
SEARCH_PATH = "/v1/customers/search"
CUSTOMER_PATH = "/v1/customers/{id}"

_CUSTOMER_FIELDS = ("email", "name", "description", "phone")
_METADATA = re.compile(r"metadata\[(?P<key>[^\]]+)\]\Z")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+\Z")
_CLAUSE = re.compile(
    r"""\s*(?P<field>metadata\[(?P<kq>['"])(?P<key>[^'"]+)(?P=kq)\]|[a-z_]+)"""
    r"""\s*:\s*(?P<vq>['"])(?P<value>[^'"]*)(?P=vq)\s*"""
)
_JOIN = re.compile(r"(AND|OR)\s+")
_SEARCHABLE = frozenset({"email", "name", "phone", "description"})
_NO_KEY = (
    "You did not provide an API key. You need to provide your API key in the Authorization "
    "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See "
    "https://stripe.com/docs/api#authentication for details, or we can help at "
    "https://support.stripe.com/."
)

Endpoint = Callable[[Request, SandboxState, str], Awaitable[Response]]


async def create_customer(request: Request, config: SandboxConfig, state: SandboxState) -> Response:
    """``POST /v1/customers``."""
    return await _serve(request, config, state, _create)


async def list_customers(request: Request, config: SandboxConfig, state: SandboxState) -> Response:
    """``GET /v1/customers?email=&limit=``, newest first."""
    return await _serve(request, config, state, _list)


async def search_customers(
    request: Request, config: SandboxConfig, state: SandboxState
) -> Response:
    """``GET /v1/customers/search?query=``."""
    return await _serve(request, config, state, _search)


async def retrieve_customer(
    request: Request, config: SandboxConfig, state: SandboxState
) -> Response:
    """``GET /v1/customers/{id}``."""
    return await _serve(request, config, state, _retrieve)


def server_error(status: int) -> Response:
    """What Stripe answers when it fails on its side."""
    response = _api_error(status)
    response.headers.append(("request-id", _new_id("req_")))
    return response


async def _serve(
    request: Request, config: SandboxConfig, state: SandboxState, endpoint: Endpoint
) -> Response:
    """Authenticate, apply the switches that act before an endpoint runs, then run it."""
    request_id = _new_id("req_")
    response = _authenticate(request, config) or _refuse_before_executing(state)
    if response is None:
        response = await endpoint(request, state, request_id)
    response.headers.append(("request-id", request_id))
    return response


def _refuse_before_executing(state: SandboxState) -> Response | None:
    """``stripe_429`` and ``stripe_5xx``: Stripe's edge answers, the endpoint never runs."""
    if state.take_behaviour(STRIPE, "stripe_429") is not None:
        return _error(
            429,
            "invalid_request_error",
            "Request rate limit exceeded. Learn more about rate limits here "
            "https://stripe.com/docs/rate-limits.",
            code="rate_limit",
        )
    failure = state.take_behaviour(STRIPE, "stripe_5xx")
    if failure is not None:
        status = failure.get("status", 500)
        if failure.get("html"):  # the edge in front of the API answers with a page
            return html_response(
                status, f"<html><body><h1>{status} Server Error</h1></body></html>"
            )
        return _api_error(status)
    return None


def _api_error(status: int) -> Response:
    return _error(
        status,
        "api_error",
        "Sorry, something went wrong. We've already been notified of the problem, but if you "
        "need any help, you can reach us at support.stripe.com/contact.",
    )


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


async def _create(request: Request, state: SandboxState, request_id: str) -> Response:
    params = request.form_pairs
    invalid = _invalid_customer_params(params)
    if invalid is not None:
        return invalid
    key = request.header("idempotency-key")
    if key is None:
        return await _execute_create(params, state, request_id, None)
    claim = state.claim_idempotency_key(key, ("POST", request.path, tuple(sorted(params))))
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
            [("idempotent-replayed", "true"), ("original-request", stored.request_id)],
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
    if state.take_behaviour(STRIPE, "stripe_500_after_create") is not None:
        # Stripe failed after it began executing: the customer may exist, and the 500 is
        # what the key replays from now on (Stripe saves results "including 500 errors").
        response = _api_error(500)
    if key is not None:
        state.store_idempotent_response(
            key, StoredResponse(response.status, response.body, request_id)
        )
    response.lost_in_transit = state.take_behaviour(STRIPE, "stripe_drop_after_create") is not None
    return response


_LIST_PARAMS = frozenset({"email", "limit", "starting_after", "ending_before", "created"})
_SEARCH_PARAMS = frozenset({"query", "limit", "page"})


def _invalid_customer_params(params: list[tuple[str, str]]) -> Response | None:
    for name, value in params:
        if name not in _CUSTOMER_FIELDS and not _METADATA.match(name):
            return _unknown_parameter(name)
        if name == "email" and value and not _EMAIL.match(value):
            return _error(
                400,
                "invalid_request_error",
                f"Invalid email address: {value}",
                code="email_invalid",
                param="email",
            )
    return None


async def _list(request: Request, state: SandboxState, request_id: str) -> Response:
    limit = _page_size(request, _LIST_PARAMS)
    if isinstance(limit, Response):
        return limit
    await _execution_delay(state)
    email = request.query.get("email")
    found = [c for c in state.customers() if email is None or c["email"] == email]
    after = request.query.get("starting_after")
    if after is not None:
        ids = [c["id"] for c in found]
        if after not in ids:
            return _error(
                400,
                "invalid_request_error",
                f"No such customer: '{after}'",
                code="resource_missing",
                param="starting_after",
            )
        found = found[ids.index(after) + 1 :]
    return json_response(
        200,
        {
            "object": "list",
            "data": found[:limit],
            "has_more": len(found) > limit,
            "url": CUSTOMERS_PATH,
        },
    )


def _page_size(request: Request, known: frozenset[str]) -> int | Response:
    """A list or search request's ``limit``, after refusing parameters the endpoint does not
    take (Stripe's list cannot filter by metadata)."""
    for name in request.query:
        if name not in known:
            return _unknown_parameter(name)
    return _limit(request)


def _unknown_parameter(name: str) -> Response:
    return _error(
        400,
        "invalid_request_error",
        f"Received unknown parameter: {name}",
        code="parameter_unknown",
        param=name,
    )


async def _search(request: Request, state: SandboxState, request_id: str) -> Response:
    limit = _page_size(request, _SEARCH_PARAMS)
    if isinstance(limit, Response):
        return limit
    query = request.query.get("query", "")
    parsed = _parse_query(query)
    if parsed is None:
        return _error(
            400,
            "invalid_request_error",
            f"Invalid search query: {query!r}. Use clauses such as email:'jenny@example.com' or "
            "metadata['user_id']:'u1', joined by AND or by OR.",
            param="query",
        )
    clauses, combine = parsed
    await _execution_delay(state)
    # Stripe's search index trails writes ("under a minute", longer in outages): with the
    # switch on, new customers are invisible to search for ``ms``; list still sees them.
    lag = state.take_behaviour(STRIPE, "stripe_search_lag")
    indexed = state.customers(older_than=lag["ms"] / 1000 if lag else 0.0)
    found = [c for c in indexed if combine(_matches(c, f, k, v) for f, k, v in clauses)]
    offset = _page_offset(request.query.get("page"))
    if offset is None:
        return _error(400, "invalid_request_error", "Invalid page.", param="page")
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


def _page_token(offset: int) -> str:
    """An opaque cursor, as Stripe's ``next_page``."""
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _page_offset(page: str | None) -> int | None:
    if page is None:
        return 0
    try:
        kind, _, value = base64.urlsafe_b64decode(page.encode()).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return int(value) if kind == "offset" and value.isdigit() else None


async def _retrieve(request: Request, state: SandboxState, request_id: str) -> Response:
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


def _limit(request: Request) -> int | Response:
    raw = request.query.get("limit", "10")
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        return _error(
            400,
            "invalid_request_error",
            f"Invalid limit: must be an integer between 1 and 100 (it currently is '{raw}')",
            code="parameter_invalid_integer",
            param="limit",
        )
    return int(raw)


Clause = tuple[str, str | None, str]


def _parse_query(query: str) -> tuple[list[Clause], Callable[[Any], bool]] | None:
    """The clauses of a search query and how they combine (``all`` or ``any``), or ``None``
    when the query is not one this emulator understands."""
    clauses: list[Clause] = []
    joins: set[str] = set()
    position = 0
    while True:
        match = _CLAUSE.match(query, position)
        if match is None:
            return None
        field = "metadata" if match["key"] else match["field"]
        if field != "metadata" and field not in _SEARCHABLE:
            return None
        clauses.append((field, match["key"], match["value"]))
        position = match.end()
        if position == len(query):
            break
        join = _JOIN.match(query, position)
        if join is None:
            return None
        joins.add(join[1])
        position = join.end()
    if len(joins) > 1:
        return None
    return clauses, (any if joins == {"OR"} else all)


def _matches(customer: dict[str, Any], field: str, key: str | None, value: str) -> bool:
    if key is not None:
        return bool(customer["metadata"].get(key) == value)
    actual = customer.get(field)
    if field == "email":
        return isinstance(actual, str) and actual.casefold() == value.casefold()
    return bool(actual == value)


def _error(
    status: int, kind: str, message: str, *, code: str | None = None, param: str | None = None
) -> Response:
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
