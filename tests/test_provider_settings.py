"""The providers as configured: what ``lwa.app_from`` and ``stripe.account_from`` make of the
settings (the commands' configuration errors, end to end, are in test_configuration_errors.py)."""

from __future__ import annotations

import pytest

from discoveryctl.config import Config
from discoveryctl.errors import ConfigurationError
from discoveryctl.providers.lwa import LWA_TOKEN_URL, AmazonApp, app_from
from discoveryctl.providers.stripe import STRIPE_API_BASE, StripeAccount, account_from

APP = {
    "AMAZON_LWA_CLIENT_ID": "amzn1.application-oa2-client.0123",
    "AMAZON_LWA_CLIENT_SECRET": "amzn1.oa2-cs.v1.secret",
    "AMAZON_SPAPI_APP_ID": "amzn1.sp.solution.4567",
}


def settings(**values: str) -> Config:
    return Config(values, keyring=None)


def test_the_app_as_amazon_serves_it_when_nothing_is_overridden() -> None:
    assert app_from(settings(**APP)) == AmazonApp(
        client_id="amzn1.application-oa2-client.0123",
        client_secret="amzn1.oa2-cs.v1.secret",
        application_id="amzn1.sp.solution.4567",
        redirect_uri="http://127.0.0.1:8765/callback",
        draft=False,
        seller_central_url=None,
        token_url=LWA_TOKEN_URL,
        spapi_url=None,
    )


def test_every_override_is_taken() -> None:
    app = app_from(
        settings(
            **APP,
            AMAZON_REDIRECT_URI="https://app.example.com/amazon/callback",
            AMAZON_APP_DRAFT="1",
            AMAZON_SELLER_CENTRAL_URL="http://127.0.0.1:8790/sellercentral",
            AMAZON_LWA_TOKEN_URL="http://127.0.0.1:8790/auth/o2/token",
            AMAZON_SPAPI_URL="http://127.0.0.1:8790/spapi",
        )
    )
    assert app.redirect_uri == "https://app.example.com/amazon/callback"
    assert app.draft is True
    assert app.seller_central("na") == "http://127.0.0.1:8790/sellercentral"
    assert app.token_url == "http://127.0.0.1:8790/auth/o2/token"
    assert app.spapi("eu") == "http://127.0.0.1:8790/spapi"


@pytest.mark.parametrize("missing", sorted(APP))
def test_each_of_the_app_s_settings_is_required_by_name(missing: str) -> None:
    given = {name: value for name, value in APP.items() if name != missing}
    with pytest.raises(ConfigurationError, match=missing):
        app_from(settings(**given))


def test_an_override_that_is_no_http_url_is_refused_by_name() -> None:
    with pytest.raises(ConfigurationError, match="AMAZON_SPAPI_URL must be an http"):
        app_from(settings(**APP, AMAZON_SPAPI_URL="ftp://127.0.0.1/spapi"))


def test_the_stripe_account_as_configured() -> None:
    assert account_from(settings(STRIPE_API_KEY="sk_test_123")) == StripeAccount(
        api_key="sk_test_123", api_base=STRIPE_API_BASE
    )
    sandbox = account_from(
        settings(STRIPE_API_KEY="sk_test_123", STRIPE_API_BASE="http://127.0.0.1:8790/stripe")
    )
    assert sandbox.api_base == "http://127.0.0.1:8790/stripe"
    with pytest.raises(ConfigurationError, match="STRIPE_API_KEY"):
        account_from(settings())
    with pytest.raises(ConfigurationError, match="STRIPE_API_BASE must be an http"):
        account_from(settings(STRIPE_API_KEY="sk_test_123", STRIPE_API_BASE="api.stripe.com"))
