"""The one email rule (``discoveryctl.support.emails``), and `stripe ensure-customer` refusing
an address that is not one before any call to Stripe: a mistyped email never reaches Stripe's
400, which would otherwise hold the user's idempotency key to it."""

from __future__ import annotations

from typing import Any

import pytest

from discoveryctl.errors import InvalidInput
from discoveryctl.sandbox import Sandbox
from discoveryctl.support.emails import MAX_LENGTH, is_email, valid_email


@pytest.mark.parametrize(
    "value", ["a@b.co", "first.last+tag@mail.example.com", "x@" + "d" * 300 + ".io"]
)
def test_these_are_emails(value: str) -> None:
    assert is_email(value)
    assert valid_email(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "not-an-email",
        "a@b",  # no dot in the domain
        "@b.co",
        "a@.co.",  # nothing before the dot is fine only with something after it
        "a@@b.co",
        "a b@c.co",
        "a@b.co\n",
        "\na@b.co",
        "a@b.co ",
    ],
)
def test_these_are_not(value: str) -> None:
    assert not is_email(value)
    with pytest.raises(InvalidInput, match="is not an email address"):
        valid_email(value)


def test_at_most_320_characters() -> None:
    longest = "a@" + "b" * (MAX_LENGTH - 5) + ".co"
    assert len(longest) == MAX_LENGTH == 320
    assert is_email(longest)
    assert not is_email("a" + longest)


def test_the_refusal_names_the_value_shortened() -> None:
    with pytest.raises(InvalidInput) as error:
        valid_email("x" * 100)
    assert error.value.message == f"{'x' * 80!r} is not an email address"


def test_ensure_customer_refuses_a_mistyped_email_before_any_call(
    db: Any, cli: Any, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    refused = cli("stripe", "ensure-customer", "--user", "u1", "--email", "not-an-email")
    assert refused.exit_code == 2
    assert "'not-an-email' is not an email address" in refused.stderr
    assert sandbox.state.stats()["requests"] == {}  # Stripe was never called
    assert db.rows("SELECT * FROM stripe_customers") == []
    fixed = cli("stripe", "ensure-customer", "--user", "u1", "--email", "u1@example.com")
    assert fixed.exit_code == 0, fixed.stderr
    assert len(sandbox.state.customers_for("u1")) == 1
