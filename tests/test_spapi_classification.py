"""The SP-API answer to the seller check, classified (docs/behaviour.md §5): 401, or 403
``Unauthorized`` whose details say the token is revoked or invalid, is a revoked seller; an
expired token, throttling and 5xx are transient; any other 403 proves nothing."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from discoveryctl.errors import ProviderError, SpApiTokenRefused, TransientProviderError
from discoveryctl.providers.spapi import parse_participations

PAYLOAD = {"payload": [{"marketplace": {"id": "ATVPDKIKX0DER"}}, {"marketplace": {"id": "X"}}]}


def answer(status: int, body: Any = None, *, raw: bytes | None = None, **headers: str) -> Any:
    content = raw if raw is not None else json.dumps(body).encode()
    try:
        return parse_participations(httpx.Response(status, content=content, headers=headers))
    except ProviderError as error:
        return error


def error_body(
    code: str, message: str = "Access to requested resource is denied.", details: str = ""
) -> dict[str, Any]:
    return {"errors": [{"code": code, "message": message, "details": details}]}


def test_an_answer_counts_the_marketplaces() -> None:
    assert answer(200, PAYLOAD) == 2
    assert answer(200, {"payload": []}) == 0


@pytest.mark.parametrize("body", [{}, {"payload": None}, {"payload": {"x": 1}}])
def test_200_without_a_payload_list_is_a_bad_answer(body: Any) -> None:
    error = answer(200, body)
    assert type(error) is TransientProviderError
    assert (error.error_type, error.status_code) == ("spapi_bad_response", 200)
    assert error.message == "SP-API answered 200 without a payload"


@pytest.mark.parametrize("status", [200, 401, 403, 429, 503])
@pytest.mark.parametrize("raw", [b"", b"<html>", b"[]", b'{"trunc'])
def test_a_body_that_is_not_a_json_object_is_transient(status: int, raw: bytes) -> None:
    error = answer(status, raw=raw, **{"Retry-After": "4"})
    assert type(error) is TransientProviderError
    assert (error.error_type, error.status_code) == ("spapi_bad_response", status)
    assert error.retry_after == 4.0
    assert error.message == f"SP-API answered {status} with a body that is not JSON"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, error_body("Unauthorized")),
        (401, {}),
        (
            403,
            error_body(
                "Unauthorized",
                details="The access token you provided is revoked, malformed or invalid.",
            ),
        ),
        (403, error_body("Unauthorized", details="The access token is INVALID")),
        (403, error_body("Unauthorized", details="The token is malformed")),
    ],
)
def test_a_refused_token_is_a_refusal_not_yet_a_verdict(status: int, body: Any) -> None:
    """Amazon says "revoked, malformed or invalid" of expired and mis-signed tokens too: the
    check confirms a refusal with a fresh token before anyone is revoked (amazon.check)."""
    error = answer(status, body)
    assert type(error) is SpApiTokenRefused
    assert (error.error_type, error.status_code) == ("spapi_token_refused", status)
    assert error.message.startswith(f"SP-API refused the seller's token ({status}): ")


def test_the_message_joins_message_and_details() -> None:
    error = answer(401, error_body("Unauthorized", message="Denied.", details="revoked"))
    assert error.message == "SP-API refused the seller's token (401): Denied. revoked"


@pytest.mark.parametrize(
    "body",
    [
        error_body("Unauthorized"),  # no details: it may be the app's role, not the token
        error_body("MissingAuthenticationToken"),
        error_body("AccessDenied", details="The access token is revoked"),  # not Unauthorized
        {"errors": []},
        {"errors": ["not an object"]},
        {},
    ],
)
def test_any_other_403_proves_nothing(body: Any) -> None:
    error = answer(403, body)
    assert type(error) is ProviderError
    assert (error.error_type, error.status_code) == ("spapi_forbidden", 403)


def test_an_unplaced_answer_says_what_came() -> None:
    error = answer(400, error_body("InvalidInput", message="Bad.", details=""))
    assert type(error) is ProviderError
    assert (error.error_type, error.message) == (
        "spapi_error",
        "SP-API answered 400 InvalidInput: Bad.",
    )
    bare = answer(404, {})
    assert bare.message == "SP-API answered 404: no details"


@pytest.mark.parametrize("code", ["Unauthorized", "AccessDenied"])
def test_an_expired_token_is_a_refusal_to_refresh_for(code: str) -> None:
    error = answer(403, error_body(code, details="The access token you provided has expired."))
    assert type(error) is SpApiTokenRefused
    assert (error.error_type, error.status_code) == ("spapi_token_expired", 403)
    assert error.message == (
        "SP-API refused the seller's token (403): Access to requested resource is denied. "
        "The access token you provided has expired."
    )


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (408, "spapi_server_error"),
        (429, "spapi_throttled"),
        (500, "spapi_server_error"),
        (503, "spapi_server_error"),
    ],
)
def test_throttling_and_server_errors_are_transient(status: int, error_type: str) -> None:
    error = answer(
        status, error_body("QuotaExceeded", message="Slow down."), **{"Retry-After": "2"}
    )
    assert type(error) is TransientProviderError
    assert (error.error_type, error.status_code, error.retry_after) == (error_type, status, 2.0)
    assert error.message == f"SP-API answered {status}: Slow down."


def test_a_throttle_without_words_names_its_code() -> None:
    error = answer(429, {"errors": [{"code": "QuotaExceeded"}]})
    assert error.message == "SP-API answered 429: QuotaExceeded"


def test_secrets_in_the_details_are_redacted() -> None:
    error = answer(400, error_body("X", details="token Atza|leaked"))
    assert "Atza|leaked" not in error.message
