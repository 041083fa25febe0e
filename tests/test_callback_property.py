"""Arbitrary query strings thrown at the consent callback validator: it raises nothing but
the typed callback error, and stores nothing but the failure event."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discoveryctl.amazon import consent
from discoveryctl.config import Config
from discoveryctl.db.engine import Database
from discoveryctl.errors import OAuthCallbackError
from discoveryctl.providers.lwa import LwaClient, app_from
from discoveryctl.sandbox import SandboxConfig, run_in_thread

KNOWN = [
    "state",
    "spapi_oauth_code",
    "selling_partner_id",
    "error",
    "error_description",
    "mws_auth_token",
    "amazon_state",
]
values = st.one_of(
    st.text(max_size=300),
    st.lists(st.text(max_size=50), max_size=3),
    st.sampled_from(["", " ", "null", "eyJhbGciOiJub25lIn0.e30.", "a.b.c", "Atzr|x"]),
)
queries = st.dictionaries(
    st.one_of(st.sampled_from(KNOWN), st.text(max_size=20)), values, max_size=6
)


@pytest.fixture
def flow(db: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    sandbox = run_in_thread(SandboxConfig())
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("JWT_SECRET", "property-test-secret-" + "y" * 32)
    config = Config(environ=dict(os.environ), keyring=None)
    app = app_from(config)
    database = Database(config.database_url)
    with database.session() as session:
        start = consent.begin(
            session, app, config.jwt_secret(), user_id="prop", region="na", flow="paste"
        )
    with LwaClient(app) as lwa:
        yield {"config": config, "app": app, "database": database, "lwa": lwa, "start": start}
    database.dispose()
    sandbox.stop()


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(params=queries, with_real_state=st.booleans())
def test_callback_validator_raises_only_typed_errors_and_stores_nothing(
    flow: dict[str, Any], db: Any, params: dict[str, Any], with_real_state: bool
) -> None:
    if with_real_state:
        params = {**params, "state": flow["start"].state}
    with pytest.raises(OAuthCallbackError) as failure:
        consent.complete(
            flow["database"].session,
            flow["config"],
            flow["app"],
            flow["lwa"],
            params,
            expected_user="prop",
        )
    assert failure.value.reason in set(consent.Reason)
    assert db.scalar("SELECT count(*) FROM credentials") == 0
    assert db.scalar("SELECT count(*) FROM integration_status") == 0
    assert db.scalar("SELECT count(*) FROM notifications") == 0
