"""Stripe customers through stripe-python's ``StripeClient``: create one under an idempotency
key, and find a user's customer again (list by email, then search by metadata). Every failure
leaves as one of the errors the core acts on (``classify``).

The SDK's own retries are off (``max_network_retries=0``): the core retries with tenacity and
records each attempt. Sources for what each answer means:

- "Idempotent requests", https://docs.stripe.com/api/idempotent_requests
- "Advanced error handling", https://docs.stripe.com/error-low-level
- "Error codes", https://docs.stripe.com/error-codes
- "Search", https://docs.stripe.com/search (the query language, its lag, and its
  limitations: search "is not available to merchants in India")
- stripe-python ``_http_client.py``, ``HTTPClient._should_retry``: the ``Stripe-Should-Retry``
  header decides first, then 409 and 5xx are retried; ``HTTPClient._sleep_time_seconds``: how
  long it waits before a retry (``STRIPE_PYTHON_SCHEDULE``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType
from typing import Any

import stripe

from discoveryctl.config import Config
from discoveryctl.errors import (
    AppCredentialsRejected,
    ProviderError,
    StripeIdempotencyConflict,
    StripeKeyInUse,
    StripeOutcomeUnknown,
    StripeParametersRefused,
    TransientProviderError,
)
from discoveryctl.support.retrying import IN_RUN, RetryPolicy

STRIPE_API_BASE = "https://api.stripe.com"
STRIPE_API_VERSION = "2026-10-28.endive"
"""The Stripe API version this code was written against (stripe-python 16.1.0's own), sent
as ``Stripe-Version`` on every request ("Versioning", https://docs.stripe.com/api/versioning:
without it, requests get the account's default version, which an upgrade in the Dashboard
changes). ``doctor`` shows it."""
TIMEOUT_SECONDS = 30.0
"""One call's limit (stripe-python's own default is 80 s, too long for a cron run)."""

LIST_PAGE_SIZE = 100  # the most "List all customers" returns a page

SEARCH_LAG = timedelta(minutes=1)
"""How far search trails writes "under normal operating conditions" ("Search", Data
freshness: "Don't use search for read-after-write flows")."""

STRIPE_PYTHON_SCHEDULE = RetryPolicy(
    first=0.5,
    factor=2.0,
    longest=5.0,
    jitter=(0.5, 1.0),
    shortest=0.5,
    longest_retry_after=IN_RUN.longest_retry_after,
)
"""The waits between tries of a Stripe call, as stripe-python waits between its own retries
(``HTTPClient._sleep_time_seconds``, 16.1.0: ``INITIAL_DELAY`` 0.5 s doubling up to
``MAX_DELAY`` 5 s, of which a random half to all, ``_add_jitter_time``, never under 0.5 s).
stripe-python reads no ``Retry-After`` there; here one is waited instead of the schedule, up
to 10 s, as by every wait within a run (``IN_RUN``). How many tries is the caller's to say."""


@dataclass(frozen=True)
class StripeAccount:
    """The secret key and where the API is (``STRIPE_API_BASE``, for the sandbox)."""

    api_key: str = field(repr=False)  # never in a log, a traceback or an error
    api_base: str = STRIPE_API_BASE


def account_from(config: Config) -> StripeAccount:
    """The Stripe secret key, and the API's address (``STRIPE_API_BASE``: the sandbox)."""
    return StripeAccount(
        api_key=config.require("STRIPE_API_KEY"),
        api_base=config.http_url("STRIPE_API_BASE", STRIPE_API_BASE),
    )


@dataclass(frozen=True)
class CreatedCustomer:
    """Stripe's answer to a create: the customer, the request that made it, and whether the
    answer is a replay of an earlier request under the same key."""

    customer_id: str
    request_id: str | None
    replayed: bool


@dataclass(frozen=True)
class Lookup:
    """What a look for a user's customer found: its id, or none; and, when Stripe refused
    the search (``search_refused``, Stripe's message), that a customer whose email was changed
    at Stripe could not be looked for: the list by email alone answered."""

    customer_id: str | None
    search_refused: str | None = None


class StripeCustomers:
    """``/v1/customers`` for one account, over one HTTP connection pool."""

    def __init__(self, account: StripeAccount, *, timeout: float = TIMEOUT_SECONDS) -> None:
        # Mutation testing: a call that hangs cannot be provoked on loopback, the SDK would
        # make the same client itself (ours is closed with us), and it does not retry unless
        # told to: those three are left to review.
        self._http = stripe.RequestsClient(timeout=timeout)  # pragma: no mutate
        self._client = stripe.StripeClient(
            account.api_key,
            base_addresses={"api": account.api_base},
            http_client=self._http,  # pragma: no mutate
            max_network_retries=0,  # pragma: no mutate
            # Mutation testing: stripe-python 16.1 sends this same version by default; it is
            # named so that another SDK release cannot change it unseen.
            stripe_version=STRIPE_API_VERSION,  # pragma: no mutate
        )

    def __enter__(self) -> StripeCustomers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()  # type: ignore[no-untyped-call]

    def create(
        self, *, user_id: str, email: str, name: str | None, idempotency_key: str
    ) -> CreatedCustomer:
        """Create the user's customer (``metadata.user_id`` set) under ``idempotency_key``."""
        params: dict[str, Any] = {"email": email, "metadata": {"user_id": user_id}}
        if name:
            params["name"] = name
        try:
            customer = self._client.v1.customers.create(
                params,  # type: ignore[arg-type]
                {"idempotency_key": idempotency_key},
            )
        except stripe.StripeError as error:
            raise classify(error, keyed=True) from None
        response = customer.last_response  # the SDK sets it on every object it returns
        assert response is not None
        return CreatedCustomer(
            customer_id=customer.id,
            request_id=response.request_id,
            replayed=_replayed(response.headers),
        )

    def find(self, *, user_id: str, email: str, search: bool = True) -> Lookup:
        """A customer made for ``user_id``, if Stripe has one: first among those listed under
        ``email`` (a list sees every write at once), then, with ``search``, by a search on
        ``metadata['user_id']``, which finds one whose email was changed at Stripe but lags
        behind writes ("Search": "searchable in under 1 minute", longer during an outage).

        Search is a second source only. Where Stripe refuses it ("Search", Limitations: it
        "is not available to merchants in India"; any refusal that is neither transient nor
        the API key's), the list's answer stands and the lookup says so (``search_refused``).
        A search that failed for now (5xx, 429, a connection error) fails the lookup: a later
        try can ask again."""
        try:
            listed = self._client.v1.customers.list({"email": email, "limit": LIST_PAGE_SIZE})
            for customer in listed.auto_paging_iter():
                if _metadata(customer).get("user_id") == user_id:
                    return Lookup(str(customer.id))
        except stripe.StripeError as error:
            raise classify(error) from None
        if not search:
            return Lookup(None)
        query = f"metadata['user_id']:'{_quoted(user_id)}'"
        try:
            found = self._client.v1.customers.search(
                {"query": query, "limit": 1}  # pragma: no mutate  (the first is all we read)
            )
        except stripe.StripeError as error:
            return Lookup(None, search_refused=_search_refusal(error))
        return Lookup(str(found.data[0].id) if found.data else None)


def _search_refusal(error: stripe.StripeError) -> str:
    """Stripe's message when it refused a search for good; the error itself otherwise. The
    list under the same API key has just answered, so a 403 here is the search's refusal
    (what status Stripe gives "search unavailable" is not public), not the key's; a 401 is."""
    if isinstance(error, stripe.PermissionError):
        return _summary(error)
    classified = classify(error)
    if isinstance(classified, TransientProviderError | AppCredentialsRejected):
        raise classified from None
    return _summary(error)


def _metadata(customer: stripe.Customer) -> dict[str, Any]:
    """A customer's metadata as a plain dict (the SDK hands back a StripeObject)."""
    metadata: Any = customer.metadata  # always there ("Customers": a hash, maybe empty)
    return dict(metadata.to_dict())


def _quoted(value: str) -> str:
    """``value`` inside a search query's single quotes ("Search": quotes inside quotes are
    escaped with a backslash)."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def classify(error: stripe.StripeError, *, keyed: bool = False) -> ProviderError:
    """What a Stripe failure means for the run; ``keyed``: the request carried an idempotency
    key (a create), so a 500 may be one the key keeps."""
    status = error.http_status
    request = f" (request {error.request_id})" if error.request_id else ""

    def transient(error_type: str) -> TransientProviderError:
        return TransientProviderError(
            f"Stripe failed: {_summary(error)}{request}",
            error_type=error_type,
            status_code=status,
            request_id=error.request_id,
        )

    if isinstance(error, stripe.AuthenticationError | stripe.PermissionError):
        return AppCredentialsRejected(
            f"Stripe refused the API key ({status}): check STRIPE_API_KEY",
            error_type="stripe_auth_rejected",
            status_code=status,
            request_id=error.request_id,
        )
    if isinstance(error, stripe.IdempotencyError):
        # "Idempotent requests": a key reused with other parameters. Ours are frozen with
        # the key, so something changed them: stop and report, never a new key silently.
        return StripeIdempotencyConflict(
            f"Stripe refused the retry: its parameters differ from the first request's under "
            f"the same idempotency key{request}",
            error_type="stripe_idempotency_error",
            status_code=status,
            request_id=error.request_id,
        )
    if isinstance(error, stripe.APIConnectionError):
        return transient("stripe_connection_error")
    headers = error.headers or {}
    if status == 409 and _code(error) == "idempotency_key_in_use":
        # "Error codes": idempotency_key_in_use, "another API request with the same
        # idempotency key is still in progress". Another caller's create, not a failure:
        # the core waits for its outcome (and stripe-python's _should_retry retries a 409).
        return StripeKeyInUse(
            f"another request under the same idempotency key is still in flight{request}",
            error_type="stripe_idempotency_key_in_use",
            status_code=status,
            request_id=error.request_id,
        )
    if (
        keyed
        and status == 400
        and isinstance(error, stripe.InvalidRequestError)
        and _code(error) != "rate_limit"
        and not _replayed(headers)
    ):
        # "Idempotent requests": results are saved only once an endpoint began executing;
        # a request that fails validation is not, and may be sent again. Stripe answers those
        # with 400 invalid_request_error ("Error codes": email_invalid, parameter_unknown…).
        # A 400 replayed under the key (Idempotent-Replayed: true) was saved: the key keeps
        # it for 24 hours, and it falls through to a plain refusal below.
        param = _param(error)
        return StripeParametersRefused(
            f"Stripe refused the customer's parameters: {_summary(error)}"
            + (f" (parameter {param})" if param else "")
            + request,
            error_type=f"stripe_{_code(error) or 'invalid_request'}",
            status_code=status,
            request_id=error.request_id,
        )
    should_retry = headers.get("stripe-should-retry")
    if status == 500 and (keyed or should_retry == "false"):
        # "Idempotent requests": once execution began, the key keeps the status and body,
        # "including 500 errors" (the page promises nothing of the headers, so a replayed 500
        # may come without Stripe-Should-Retry). stripe-python's _should_retry: a 500 the
        # idempotency framework "would typically replay anyway". The customer may or may
        # not exist, and the key answers 500 from now on: look before sending again.
        replayed = " (a replay of an earlier try)" if _replayed(headers) else ""
        return StripeOutcomeUnknown(
            f"Stripe failed after it began{replayed}: {_summary(error)}{request}",
            error_type="stripe_outcome_unknown",
            status_code=status,
            request_id=error.request_id,
        )
    if should_retry == "true":
        return transient(f"stripe_{_code(error) or status}")
    if should_retry == "false":  # Stripe says a retry now would not help: the next run's
        return ProviderError(
            f"Stripe failed ({status}) and asked not to be retried: {_summary(error)}{request}",
            error_type=f"stripe_{_code(error) or status}",
            status_code=status,
            request_id=error.request_id,
        )
    if status == 409:  # "Error codes": a conflict with another request, maybe the key's
        return transient("stripe_conflict")
    if status == 429 or (status == 400 and _code(error) == "rate_limit"):
        # "Error codes": rate_limit, "too many requests hit the API too quickly"; Stripe
        # answered it with 400 before the 429 existed ("Rate limits"), so either is a wait.
        return transient("stripe_rate_limited")
    if status is None or status >= 500:  # an edge page with no JSON is an APIError too
        return transient("stripe_server_error")
    replayed = " (a replay of an earlier try: the key keeps it)" if _replayed(headers) else ""
    return ProviderError(
        f"Stripe refused the request ({status}){replayed}: {_summary(error)}{request}",
        error_type=f"stripe_{_code(error) or 'invalid_request'}",
        status_code=status,
        request_id=error.request_id,
    )


def _replayed(headers: Any) -> bool:
    """Whether Stripe answered with what an earlier request under the same key got
    (``Idempotent-Replayed: true``, "Advanced error handling"), on a success or an error."""
    # Mutation testing: header names are case-insensitive ("IDEMPOTENT-REPLAYED").
    return bool(headers.get("idempotent-replayed") == "true")  # pragma: no mutate


def _code(error: stripe.StripeError) -> str | None:
    """Stripe's error code (``lock_timeout``, ``rate_limit``…): the SDK sets ``code`` on some
    error classes only; the parsed body has it on all."""
    body = error.error
    return error.code or (body.code if body is not None else None)


def _param(error: stripe.StripeError) -> str | None:
    """The parameter Stripe named in its refusal, if any."""
    body = error.error
    return body.param if body is not None else None


def _summary(error: stripe.StripeError) -> str:
    """Stripe's own message, on one line."""
    message = str(error.user_message or type(error).__name__)
    return " ".join(message.split())
