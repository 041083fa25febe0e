"""The audit history never stores a secret: event detail is redacted before it is written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy.orm import sessionmaker

from discoveryctl.integrations import events
from discoveryctl.support.redaction import REDACTED

SECRETS = (
    "IwEBIRefreshSecret",  # an LWA refresh token, Atzr|…
    "AccessSecret",  # an LWA access token, Atza|…
    "StripeSecret",  # a Stripe key, sk_test_…
    "ANCodeSecret",  # an authorization code
    "ClientSecretValue",  # the app's client secret
    "BearerSecret",  # a bearer header
)

DETAIL = {
    "refresh_token": "Atzr|IwEBIRefreshSecret-1",
    "note": "exchanged Atzr|IwEBIRefreshSecret-2 for Atza|AccessSecret-3",
    "stripe": "key sk_test_StripeSecret4 was rejected",
    "code": "ANCodeSecret5",
    "client_secret": "amzn1.oa2-cs.v1.ClientSecretValue6",
    "headers": {"Authorization": "Bearer BearerSecret7.abc", "Accept": "application/json"},
    "request": "GET /orders/v0/orders with Bearer BearerSecret8",
    "selling_partner_id": "A2EUQ1WTGCTBG2",
    "region": "na",
    "status_code": 401,
    "attempts": [1, 2],
    "idempotency_key": "user-u1-stripe-1",
}

REDACTED_DETAIL = {
    "refresh_token": REDACTED,
    "note": f"exchanged {REDACTED} for {REDACTED}",
    "stripe": f"key {REDACTED} was rejected",
    "code": REDACTED,
    "client_secret": REDACTED,
    "headers": {"Authorization": REDACTED, "Accept": "application/json"},
    "request": f"GET /orders/v0/orders with {REDACTED}",
    "selling_partner_id": "A2EUQ1WTGCTBG2",
    "region": "na",
    "status_code": 401,
    "attempts": [1, 2],
    "idempotency_key": "user-u1-stripe-1",
}


def test_event_detail_is_stored_and_shown_without_secrets(db: Any, cli: Any) -> None:
    with sessionmaker(db.engine)() as session, session.begin():
        events.record(
            session,
            "token_refresh_failed",
            outcome=events.FAILURE,
            user_id="u1",
            provider="amazon",
            error_type="invalid_grant",
            **DETAIL,
        )

    rows = db.rows("SELECT * FROM events WHERE kind = 'token_refresh_failed'")
    assert len(rows) == 1
    stored = rows[0]["detail"]
    assert (json.loads(stored) if isinstance(stored, str) else stored) == REDACTED_DETAIL
    assert_no_secret(json.dumps(rows, default=str))

    shown = cli("events", "--json")
    assert shown.exit_code == 0, shown.stderr
    [event] = [e for e in shown.json() if e["kind"] == "token_refresh_failed"]
    assert event["detail"] == REDACTED_DETAIL
    assert (event["user_id"], event["provider"], event["outcome"], event["error_type"]) == (
        "u1",
        "amazon",
        "failure",
        "invalid_grant",
    )
    assert_no_secret(shown.stdout + shown.stderr)

    table = cli("events")
    assert table.exit_code == 0, table.stderr
    assert "selling_partner_id=A2EUQ1WTGCTBG2" in table.stdout
    assert_no_secret(table.stdout + table.stderr)

    if db.kind == "sqlite":  # not in the file, its WAL or its journal either
        db.engine.dispose()
        database = Path(db.url.removeprefix("sqlite:///"))
        files = [p for p in database.parent.iterdir() if p.name.startswith(database.name)]
        assert files
        for path in files:
            assert_no_secret(path.read_bytes().decode("latin-1"))


def assert_no_secret(text: str) -> None:
    leaked = [secret for secret in SECRETS if secret in text]
    assert leaked == [], leaked
