"""The LWA classifier, table by table: every status and body shape that can come back from the
token endpoint, and what it makes of the seller (docs/behaviour.md §5).

``parse_token_response`` decides whether a seller is revoked, whether the app's own credentials
are broken, or whether to retry; each row below is one branch of that decision, so deleting or
bending any branch fails a row. The same outcomes over real sockets are in
``test_lwa_client.py``.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from discoveryctl.errors import (
    AppCredentialsRejected,
    ErrorKind,
    ProviderError,
    SellerAuthorizationRevoked,
    TransientProviderError,
)
from discoveryctl.providers.lwa import TokenGrant, lifetime, parse_token_response, retry_after

GRANT = {
    "access_token": "Atza|access",
    "refresh_token": "Atzr|refresh",
    "token_type": "bearer",
    "expires_in": 3600,
}


def answer(status: int, body: Any = None, *, raw: bytes | None = None, **headers: str) -> Any:
    """What ``parse_token_response`` makes of this answer: a grant, or the error it raised."""
    content = raw if raw is not None else json.dumps(body).encode()
    response = httpx.Response(status, content=content, headers=headers)
    try:
        return parse_token_response(response)
    except ProviderError as error:
        return error


def lwa_error(status: int, error: str, **headers: str) -> Any:
    return answer(status, {"error": error, "error_description": f"about {error}"}, **headers)


# -- success ----------------------------------------------------------------------------------


def test_a_grant_carries_both_tokens_and_their_lifetime() -> None:
    grant = answer(200, GRANT)
    assert grant == TokenGrant("Atza|access", "Atzr|refresh", 3600)


@pytest.mark.parametrize(
    ("expires_in", "seconds"),
    [(3600, 3600), ("3600", 3600), (1, 1), ("60", 60), ("0000120", 120), (3600.0, 3600)],
)
def test_expires_in_as_a_number_or_a_decimal_string(expires_in: Any, seconds: int) -> None:
    assert answer(200, GRANT | {"expires_in": expires_in}).expires_in == seconds


def test_a_missing_expires_in_means_lwa_s_documented_hour() -> None:
    body = {k: v for k, v in GRANT.items() if k != "expires_in"}
    assert answer(200, body).expires_in == 3600


@pytest.mark.parametrize(
    "expires_in",
    [
        0,
        -1,
        "0",
        "-3600",
        "3600.0",
        3600.5,
        float("inf"),
        float("nan"),
        10**9 + 1,
        10**12,
        " 3600",
        "3600s",
        "",
        "\uff13\uff16\uff10\uff10",
        True,
        None,
        [3600],
    ],
)
def test_an_unusable_expires_in_is_a_bad_answer_to_retry(expires_in: Any) -> None:
    error = answer(200, GRANT | {"expires_in": expires_in})
    assert isinstance(error, TransientProviderError)
    assert error.error_type == "lwa_bad_response"
    assert error.status_code == 200
    assert error.message == f"LWA answered 200 with expires_in={str(expires_in)[:20]!r}"


def test_a_long_expires_in_is_cut_short_in_the_message() -> None:
    error = answer(200, GRANT | {"expires_in": "9" * 30})
    assert error.message == f"LWA answered 200 with expires_in={'9' * 20!r}"


@pytest.mark.parametrize("refresh_token", [None, "", 42, ["Atzr|x"]])
def test_a_grant_without_a_usable_refresh_token_has_none(refresh_token: Any) -> None:
    grant = answer(200, GRANT | {"refresh_token": refresh_token})
    assert grant.refresh_token is None
    assert grant.access_token == "Atza|access"


def test_a_grant_that_omits_the_refresh_token_has_none() -> None:
    body = {k: v for k, v in GRANT.items() if k != "refresh_token"}
    assert answer(200, body).refresh_token is None


@pytest.mark.parametrize("access_token", [None, "", 7, {"t": 1}])
def test_200_without_an_access_token_is_a_bad_answer_to_retry(access_token: Any) -> None:
    body = GRANT | {"access_token": access_token}
    if access_token is None:
        del body["access_token"]
    error = answer(200, body)
    assert isinstance(error, TransientProviderError)
    assert error.error_type == "lwa_bad_response"
    assert error.status_code == 200
    assert error.message == "LWA answered 200 without an access token"


def test_tokens_stay_out_of_the_grant_s_repr() -> None:
    shown = repr(answer(200, GRANT))
    assert "Atza|" not in shown and "Atzr|" not in shown
    assert "3600" in shown


# -- the seller's authorization is gone --------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401])
def test_invalid_grant_means_the_seller_s_authorization_is_gone(status: int) -> None:
    error = lwa_error(status, "invalid_grant")
    assert type(error) is SellerAuthorizationRevoked
    assert error.kind is ErrorKind.seller
    assert error.error_type == "oauth_token_revoked"
    assert error.status_code == status
    assert error.message == "LWA refused the grant: about invalid_grant"


# -- the app's own credentials -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"), [(401, "invalid_client"), (400, "unauthorized_client")]
)
def test_client_errors_blame_the_app_never_the_seller(status: int, code: str) -> None:
    error = lwa_error(status, code)
    assert type(error) is AppCredentialsRejected
    assert error.kind is ErrorKind.app_credentials
    assert error.error_type == "lwa_app_credentials_rejected"
    assert error.status_code == status
    assert error.message == (
        f"LWA rejected the app's credentials ({code}): check AMAZON_LWA_CLIENT_ID and "
        "AMAZON_LWA_CLIENT_SECRET"
    )


# -- transient: throttling, server errors ----------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (408, "lwa_timeout"),
        (429, "lwa_throttled"),
        (500, "lwa_server_error"),
        (502, "lwa_server_error"),
        (503, "lwa_server_error"),
        (599, "lwa_server_error"),
    ],
)
def test_throttling_and_server_errors_are_retried(status: int, error_type: str) -> None:
    error = lwa_error(status, "server_error")
    assert type(error) is TransientProviderError
    assert error.error_type == error_type
    assert error.status_code == status
    assert error.retry_after is None
    assert error.message == f"LWA answered {status}: about server_error"


@pytest.mark.parametrize("status", [429, 500, 503])
def test_an_error_code_cannot_turn_a_server_error_into_a_revocation(status: int) -> None:
    """A 5xx or 429 is LWA's trouble, whatever its body says: the seller keeps its status."""
    assert type(lwa_error(status, "invalid_grant")) is TransientProviderError
    assert type(lwa_error(status, "invalid_client")) is TransientProviderError


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("300", 300.0),
        ("301", 300.0),  # never longer than LONGEST_RETRY_AFTER
        ("1e308", 300.0),
        ("inf", None),
        ("nan", None),
        ("soon", None),
        ("Wed, 21 Oct 2026 07:28:00 GMT", None),
    ],
)
def test_retry_after_is_honoured_when_present(header: str, seconds: float | None) -> None:
    error = lwa_error(429, "too_many_requests", **{"Retry-After": header})
    assert isinstance(error, TransientProviderError)
    assert error.retry_after == seconds


def test_retry_after_on_a_non_json_503_is_kept() -> None:
    error = answer(503, raw=b"<html>busy</html>", **{"Retry-After": "12"})
    assert isinstance(error, TransientProviderError)
    assert error.retry_after == 12.0


def test_retry_after_reads_the_header_alone() -> None:
    assert retry_after(httpx.Response(429)) is None
    assert retry_after(httpx.Response(429, headers={"Retry-After": "2"})) == 2.0


# -- bodies that are not a JSON object ------------------------------------------------------

NOT_AN_OBJECT = {
    "empty": b"",
    "html": b"<html><head><title>502 Bad Gateway</title></head><body></body></html>",
    "truncated": b'{"access_token": "Atza|acc',
    "text": b"Service Unavailable",
    "array": b"[]",
    "string": b'"invalid_grant"',
    "null": b"null",
    "number": b"3600",
    "latin-1": b"\xff\xfe\x00",
}


@pytest.mark.parametrize(
    "status", [200, 201, 204, 302, 400, 401, 403, 404, 408, 413, 429, 500, 502, 503, 504]
)
@pytest.mark.parametrize("body", NOT_AN_OBJECT.values(), ids=NOT_AN_OBJECT.keys())
def test_a_body_that_is_not_a_json_object_is_retried_whatever_the_status(
    status: int, body: bytes
) -> None:
    """LWA's own answers are JSON: anything else came from something in front of it
    (docs/behaviour.md §5: non-JSON bodies are transient), never a verdict on the seller or
    the app."""
    error = answer(status, raw=body)
    assert type(error) is TransientProviderError
    assert error.error_type == "lwa_bad_response"
    assert error.status_code == status
    assert error.message == f"LWA answered {status} with a body that is not JSON"


# -- everything else: an answer the classifier cannot place -------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "invalid_request"),
        (400, "unsupported_grant_type"),
        (400, "invalid_scope"),
        (400, "server_error"),
        (403, "access_denied"),
        (404, "not_found"),
    ],
)
def test_other_error_codes_are_unplaced_answers(status: int, code: str) -> None:
    error = lwa_error(status, code)
    assert type(error) is ProviderError
    assert error.error_type == f"lwa_{code}"
    assert error.status_code == status
    assert error.message == f"LWA answered {status} {code}: about {code}"


@pytest.mark.parametrize("status", [201, 202, 204, 301, 400, 401, 418])
def test_a_json_object_without_an_error_code_is_unplaced(status: int) -> None:
    error = answer(status, {"message": "something"})
    assert type(error) is ProviderError
    assert error.error_type == "lwa_error"
    assert error.message == f"LWA answered {status}: HTTP {status}"


def test_an_error_without_a_description_names_the_code() -> None:
    error = answer(400, {"error": "invalid_request"})
    assert error.message == "LWA answered 400 invalid_request: invalid_request"


def test_a_long_error_code_is_cut_short() -> None:
    code = "x" * 45
    error = answer(400, {"error": code, "error_description": "d"})
    assert error.error_type == f"lwa_{'x' * 40}…"
    assert error.message == f"LWA answered 400 {'x' * 40}…: d"


def test_a_200_carrying_an_error_code_is_not_a_grant() -> None:
    error = answer(200, {"error": "invalid_grant"})
    assert type(error) is TransientProviderError
    assert error.error_type == "lwa_bad_response"


def test_secrets_echoed_in_an_error_description_are_redacted() -> None:
    body = {
        "error": "invalid_request",
        "error_description": "bad refresh_token Atzr|leaked secret amzn1.oa2-cs.v1.leaked",
    }
    error = answer(400, body)
    assert "Atzr|leaked" not in error.message
    assert "amzn1.oa2-cs.v1.leaked" not in error.message
    assert "[redacted]" in error.message


@pytest.mark.parametrize(
    ("description", "shown"),
    [
        ("x" * 200, "x" * 200),
        ("x" * 201, "x" * 200 + "…"),
        ("x" * 5000, "x" * 200 + "…"),
        ("line\nbreak \x1b[31mred\u202e", "line\\nbreak \\x1b[31mred\\u202e"),
    ],
)
def test_a_description_is_escaped_and_cut_at_200_characters(description: str, shown: str) -> None:
    error = answer(400, {"error": "invalid_request", "error_description": description})
    assert error.message == f"LWA answered 400 invalid_request: {shown}"


# -- the lifetime rule on its own ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (1, 1),
        (3600, 3600),
        ("3600", 3600),
        ("1", 1),
        (10**9, 10**9),
        ("1000000000", 10**9),
        ("0000000001", 1),
        (7.0, 7),
    ],
)
def test_lifetime_accepts_positive_integers_and_their_decimal_strings(
    value: Any, seconds: int
) -> None:
    assert lifetime(value) == seconds


@pytest.mark.parametrize(
    "value",
    [
        0,
        -5,
        "0",
        "1000000001",
        "00000000001",  # eleven digits: not read, whatever their value
        "9" * 5000,
        "99999999999",
        10**9 + 1,
        "1e3",
        "0x10",
        "+5",
        False,
        True,
        2.5,
        -2.0,
        float("inf"),
        None,
        "",
        "\u0663",
    ],
)
def test_lifetime_refuses_everything_else(value: Any) -> None:
    assert lifetime(value) is None
