"""What each Stripe failure means (``providers.stripe.classify``), on stripe-python's own error
classes as its requestor builds them from an answer: status, headers, body. The same answers
come from the sandbox over real sockets in tests/test_stripe_customers.py; these are fast
enough for mutation testing."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from discoveryctl.errors import (
    AppCredentialsRejected,
    ProviderError,
    StripeIdempotencyConflict,
    StripeKeyInUse,
    StripeOutcomeUnknown,
    StripeParametersRefused,
    TransientProviderError,
)
from discoveryctl.providers.stripe import classify


def answer(
    kind: type[stripe.StripeError],
    status: int | None,
    *,
    code: str | None = None,
    should_retry: str | None = None,
    message: str | None = "Stripe says   so\nhere",
    request_id: str | None = "req_123",
    json: bool = True,
    replayed: bool = False,
    param: str | None = None,
) -> stripe.StripeError:
    headers = {} if request_id is None else {"request-id": request_id}
    if should_retry is not None:
        headers["stripe-should-retry"] = should_retry
    if replayed:
        headers["idempotent-replayed"] = "true"
    body: dict[str, Any] | None = {"error": {"message": message, "type": "api_error"}}
    if code is not None and body is not None:
        body["error"]["code"] = code
    if param is not None and body is not None:
        body["error"]["param"] = param
    if not json:
        body = None
    if kind is stripe.InvalidRequestError:  # (message, param, code, …), as the SDK builds it
        return stripe.InvalidRequestError(
            message, None, code, http_status=status, json_body=body, headers=headers
        )
    return kind(message, http_status=status, json_body=body, headers=headers)


CASES = [
    (answer(stripe.AuthenticationError, 401), AppCredentialsRejected, "stripe_auth_rejected"),
    (answer(stripe.PermissionError, 403), AppCredentialsRejected, "stripe_auth_rejected"),
    (answer(stripe.IdempotencyError, 400), StripeIdempotencyConflict, "stripe_idempotency_error"),
    (
        stripe.APIConnectionError("connection reset"),
        TransientProviderError,
        "stripe_connection_error",
    ),
    (
        answer(stripe.RateLimitError, 429, code="lock_timeout", should_retry="true"),
        TransientProviderError,
        "stripe_lock_timeout",
    ),
    (
        answer(stripe.APIError, 503, should_retry="true"),
        TransientProviderError,
        "stripe_503",
    ),
    (
        answer(stripe.APIError, 500, should_retry="false"),
        StripeOutcomeUnknown,
        "stripe_outcome_unknown",
    ),
    (answer(stripe.APIError, 503, should_retry="false"), ProviderError, "stripe_503"),
    (
        answer(stripe.InvalidRequestError, 409, code="idempotency_key_in_use"),
        StripeKeyInUse,
        "stripe_idempotency_key_in_use",
    ),
    (answer(stripe.APIError, 409), TransientProviderError, "stripe_conflict"),
    (
        answer(stripe.APIError, 409, code="idempotency_key_in_use", should_retry="true"),
        StripeKeyInUse,
        "stripe_idempotency_key_in_use",
    ),
    (answer(stripe.RateLimitError, 429), TransientProviderError, "stripe_rate_limited"),
    (answer(stripe.APIError, 502), TransientProviderError, "stripe_server_error"),
    (answer(stripe.APIError, 500), TransientProviderError, "stripe_server_error"),
    (
        answer(stripe.APIError, 503, should_retry="true", json=False),
        TransientProviderError,
        "stripe_503",
    ),
    (answer(stripe.APIError, None), TransientProviderError, "stripe_server_error"),
    (
        answer(stripe.InvalidRequestError, 400, code="email_invalid"),
        ProviderError,
        "stripe_email_invalid",
    ),
    (answer(stripe.InvalidRequestError, 404), ProviderError, "stripe_invalid_request"),
    (
        answer(stripe.InvalidRequestError, 400, code="rate_limit"),  # the legacy rate limit
        TransientProviderError,
        "stripe_rate_limited",
    ),
]


@pytest.mark.parametrize(("error", "kind", "error_type"), CASES)
def test_each_answer_is_classified(
    error: stripe.StripeError, kind: type[ProviderError], error_type: str
) -> None:
    found = classify(error)
    assert type(found) is kind
    assert found.error_type == error_type
    assert found.status_code == error.http_status
    assert found.request_id == error.request_id


def test_the_message_names_stripe_s_words_and_the_request_on_one_line() -> None:
    found = classify(answer(stripe.APIError, 502))
    assert found.message == "Stripe failed: Stripe says so here (request req_123)"
    refused = classify(answer(stripe.InvalidRequestError, 400, code="email_invalid"))
    assert (
        refused.message == "Stripe refused the request (400): Stripe says so here (request req_123)"
    )
    assert "STRIPE_API_KEY" in classify(answer(stripe.AuthenticationError, 401)).message


def test_each_message_says_what_happened() -> None:
    unknown = classify(answer(stripe.APIError, 500, should_retry="false"))
    assert unknown.message == "Stripe failed after it began: Stripe says so here (request req_123)"
    declined = classify(answer(stripe.APIError, 503, should_retry="false"))
    assert declined.message == (
        "Stripe failed (503) and asked not to be retried: Stripe says so here (request req_123)"
    )
    conflict = classify(answer(stripe.IdempotencyError, 400))
    assert conflict.message == (
        "Stripe refused the retry: its parameters differ from the first request's under the "
        "same idempotency key (request req_123)"
    )


def test_without_a_request_id_or_a_message_the_error_is_still_named() -> None:
    bare = classify(answer(stripe.APIError, 502, message=None, request_id=None))
    assert bare.message == "Stripe failed: APIError"
    assert bare.request_id is None


@pytest.mark.parametrize("should_retry", [None, "false", "true"])
def test_a_500_to_a_keyed_create_leaves_the_outcome_unknown_whatever_the_headers(
    should_retry: str | None,
) -> None:
    found = classify(answer(stripe.APIError, 500, should_retry=should_retry), keyed=True)
    assert type(found) is StripeOutcomeUnknown
    assert found.error_type == "stripe_outcome_unknown"


def test_other_failures_of_a_keyed_create_are_what_they_are_elsewhere() -> None:
    assert type(classify(answer(stripe.APIError, 502), keyed=True)) is TransientProviderError
    assert classify(answer(stripe.APIError, 500)).error_type == "stripe_server_error"


def test_a_replayed_error_says_so() -> None:
    found = classify(answer(stripe.APIError, 500, replayed=True), keyed=True)
    assert found.message == (
        "Stripe failed after it began (a replay of an earlier try): Stripe says so here "
        "(request req_123)"
    )


def test_a_400_stripe_did_not_keep_refuses_a_keyed_create_s_parameters() -> None:
    """ "Idempotent requests": a request that fails validation is not saved under its key.
    Only a keyed create's first-hand 400 invalid_request_error is such a refusal."""
    refused = classify(
        answer(stripe.InvalidRequestError, 400, code="email_invalid", param="email"), keyed=True
    )
    assert type(refused) is StripeParametersRefused
    assert refused.error_type == "stripe_email_invalid"
    assert (refused.status_code, refused.request_id) == (400, "req_123")
    assert refused.message == (
        "Stripe refused the customer's parameters: Stripe says so here (parameter email) "
        "(request req_123)"
    )
    plain = classify(answer(stripe.InvalidRequestError, 400, request_id=None), keyed=True)
    assert type(plain) is StripeParametersRefused
    assert plain.error_type == "stripe_invalid_request"
    assert plain.message == "Stripe refused the customer's parameters: Stripe says so here"
    bare = classify(answer(stripe.InvalidRequestError, 400, json=False), keyed=True)
    assert type(bare) is StripeParametersRefused
    assert bare.message == (
        "Stripe refused the customer's parameters: Stripe says so here (request req_123)"
    )


def test_a_key_in_use_says_another_request_is_in_flight() -> None:
    found = classify(answer(stripe.APIError, 409, code="idempotency_key_in_use"), keyed=True)
    assert found.message == (
        "another request under the same idempotency key is still in flight (request req_123)"
    )


@pytest.mark.parametrize(
    ("error", "keyed", "kind"),
    [
        (answer(stripe.InvalidRequestError, 400, code="email_invalid"), False, ProviderError),
        (answer(stripe.InvalidRequestError, 404), True, ProviderError),
        (answer(stripe.InvalidRequestError, 400, replayed=True), True, ProviderError),
        (answer(stripe.APIError, 400), True, ProviderError),
        (
            answer(stripe.InvalidRequestError, 400, code="rate_limit"),
            True,
            TransientProviderError,
        ),
        (answer(stripe.IdempotencyError, 400), True, StripeIdempotencyConflict),
    ],
    ids=["not-keyed", "404", "replayed", "not-invalid-request", "rate-limit", "idempotency"],
)
def test_other_400s_are_no_refusal_of_the_parameters(
    error: stripe.StripeError, keyed: bool, kind: type[ProviderError]
) -> None:
    """A 400 replayed under the key (Idempotent-Replayed: true) was saved: the key keeps it."""
    assert type(classify(error, keyed=keyed)) is kind


def test_a_replayed_400_says_the_key_keeps_it() -> None:
    found = classify(answer(stripe.InvalidRequestError, 400, replayed=True), keyed=True)
    assert found.message == (
        "Stripe refused the request (400) (a replay of an earlier try: the key keeps it): "
        "Stripe says so here (request req_123)"
    )
