"""Where the seller's browser is sent: the consent URL, and the login-URI step's way back to
Amazon, which must never be an open redirect (docs/behaviour.md §5)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from discoveryctl.amazon.consent import seller_region
from discoveryctl.errors import InvalidInput
from discoveryctl.providers.lwa import (
    MARKETPLACES,
    AmazonApp,
    amazon_callback_hosts,
    consent_url,
    login_continue_url,
    marketplace,
)

APP = AmazonApp(
    client_id="amzn1.application-oa2-client.x",
    client_secret="amzn1.oa2-cs.v1.secret",
    application_id="amzn1.sp.solution.app",
    redirect_uri="https://127.0.0.1:8765/callback",
)
CONFIRM = "/apps/authorize/confirm/amzn1.sp.solution.app"


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


@pytest.mark.parametrize(
    ("region", "host"),
    [
        ("na", "sellercentral.amazon.com"),
        ("eu", "sellercentral-europe.amazon.com"),
        ("fe", "sellercentral.amazon.co.jp"),
    ],
)
def test_consent_goes_to_the_region_s_seller_central(region: str, host: str) -> None:
    url = consent_url(APP, region, "the-state")
    assert url.startswith(f"https://{host}/apps/authorize/consent?")
    assert query(url) == {
        "application_id": ["amzn1.sp.solution.app"],
        "state": ["the-state"],
        "redirect_uri": ["https://127.0.0.1:8765/callback"],
    }


def test_a_draft_app_asks_for_version_beta() -> None:
    draft = AmazonApp(**{**APP.__dict__, "draft": True})
    assert query(consent_url(draft, "na", "s"))["version"] == ["beta"]
    assert query(login_continue_url(draft, "na", CONFIRM, "a", "s"))["version"] == ["beta"]


def test_an_overridden_seller_central_is_used_without_its_trailing_slash() -> None:
    local = AmazonApp(**{**APP.__dict__, "seller_central_url": "http://127.0.0.1:9/"})
    assert consent_url(local, "eu", "s").startswith("http://127.0.0.1:9/apps/authorize/consent?")
    assert local.spapi("eu") == "https://sellingpartnerapi-eu.amazon.com"
    other = AmazonApp(**{**APP.__dict__, "spapi_url": "http://127.0.0.1:9/"})
    assert other.spapi("fe") == "http://127.0.0.1:9"
    under = AmazonApp(
        **{**APP.__dict__, "seller_central_url": "http://h:9/sc-X/", "spapi_url": "http://h:9/X/"}
    )
    assert under.seller_central("na") == "http://h:9/sc-X"  # only the slash goes
    assert under.spapi("na") == "http://h:9/X"


@pytest.mark.parametrize(
    "target",
    [
        f"https://amazon.com{CONFIRM}",  # as Amazon documents it
        f"https://www.amazon.com{CONFIRM}",
        f"https://AMAZON.COM{CONFIRM}",
        f"https://amazon.com:443{CONFIRM}",
        f"https://sellercentral.amazon.com{CONFIRM}",
        f"https://amazon.ca{CONFIRM}",
        f"https://sellercentral.amazon.com.br{CONFIRM}",
    ],
)
def test_the_way_back_may_be_amazon_s_hosts_for_the_region(target: str) -> None:
    url = login_continue_url(APP, "na", target, "amazon-state", "our-state")
    assert url.startswith(target + "?")
    assert query(url) == {
        "amazon_state": ["amazon-state"],
        "state": ["our-state"],
        "redirect_uri": ["https://127.0.0.1:8765/callback"],
    }


@pytest.mark.parametrize(
    ("region", "target"),
    [
        ("eu", f"https://amazon.de{CONFIRM}"),
        ("eu", f"https://sellercentral-europe.amazon.com{CONFIRM}"),
        ("eu", f"https://amazon.com{CONFIRM}"),
        ("fe", f"https://amazon.co.jp{CONFIRM}"),
        ("fe", f"https://www.amazon.com.au{CONFIRM}"),
    ],
)
def test_each_region_has_its_own_hosts(region: str, target: str) -> None:
    assert login_continue_url(APP, region, target, "a", "s").startswith(target + "?")


@pytest.mark.parametrize(
    ("region", "target"),
    [
        ("na", f"http://amazon.com{CONFIRM}"),  # https only
        ("na", f"https://amazon.com.evil.test{CONFIRM}"),
        ("na", f"https://evil.test/amazon.com{CONFIRM}"),
        ("na", f"https://notamazon.com{CONFIRM}"),
        ("na", f"https://amazon.com.{CONFIRM}"),
        ("na", f"https://amazon.com:8443{CONFIRM}"),
        ("na", f"https://amazon.com:notaport{CONFIRM}"),
        ("na", f"https://user@amazon.com{CONFIRM}"),
        ("na", f"https://amazon.com@evil.test{CONFIRM}"),
        ("na", f"https://user:pw@amazon.com{CONFIRM}"),
        ("na", f"https://amazon.com{CONFIRM}#frag"),
        ("na", "//evil.test/apps/authorize/confirm"),
        ("na", "javascript:alert(1)"),
        ("na", f"ftp://amazon.com{CONFIRM}"),
        ("na", f"https://amazon.de{CONFIRM}"),  # another region's marketplace
        ("eu", f"https://amazon.co.jp{CONFIRM}"),
        ("fe", f"https://sellercentral.amazon.com{CONFIRM}"),
    ],
)
def test_anything_else_is_refused(region: str, target: str) -> None:
    with pytest.raises(ValueError, match=r"^amazon_callback_uri does not point at Amazon$"):
        login_continue_url(APP, region, target, "a", "s")


def test_a_relative_way_back_is_seller_central_s() -> None:
    url = login_continue_url(APP, "eu", CONFIRM, "a", "s")
    assert url.startswith(f"https://sellercentral-europe.amazon.com{CONFIRM}?")


def test_an_overridden_seller_central_is_accepted_on_its_own_scheme_only() -> None:
    local = AmazonApp(**{**APP.__dict__, "seller_central_url": "http://127.0.0.1:9"})
    assert login_continue_url(local, "na", f"http://127.0.0.1:9{CONFIRM}", "a", "s")
    assert login_continue_url(local, "na", f"https://amazon.com{CONFIRM}", "a", "s")
    with pytest.raises(ValueError):
        login_continue_url(local, "na", f"https://127.0.0.1:9{CONFIRM}", "a", "s")
    with pytest.raises(ValueError):
        login_continue_url(local, "na", f"http://127.0.0.1:10{CONFIRM}", "a", "s")


def test_version_beta_that_amazon_sent_is_passed_on() -> None:
    plain = login_continue_url(APP, "na", CONFIRM, "a", "s")
    assert "version" not in query(plain)
    assert query(login_continue_url(APP, "na", CONFIRM, "a", "s", beta=True))["version"] == ["beta"]


def test_a_way_back_with_its_own_query_keeps_it() -> None:
    url = login_continue_url(APP, "na", CONFIRM + "?x=1", "a", "s")
    assert url.startswith(f"https://sellercentral.amazon.com{CONFIRM}?x=1&amazon_state=a&")


def test_the_allow_list_is_explicit() -> None:
    assert amazon_callback_hosts("na") >= {"amazon.com", "www.amazon.com", "amazon.ca"}
    assert "amazon.de" not in amazon_callback_hosts("na")
    assert "www.amazon.co.jp" in amazon_callback_hosts("fe")


# -- every marketplace's own Seller Central ---------------------------------------------------


@pytest.mark.parametrize(
    ("code", "region", "host"),
    [
        ("US", "na", "sellercentral.amazon.com"),
        ("CA", "na", "sellercentral.amazon.ca"),
        ("MX", "na", "sellercentral.amazon.com.mx"),
        ("BR", "na", "sellercentral.amazon.com.br"),
        ("UK", "eu", "sellercentral-europe.amazon.com"),
        ("DE", "eu", "sellercentral-europe.amazon.com"),
        ("IE", "eu", "sellercentral.amazon.ie"),
        ("NL", "eu", "sellercentral.amazon.nl"),
        ("BE", "eu", "sellercentral.amazon.com.be"),
        ("SE", "eu", "sellercentral.amazon.se"),
        ("PL", "eu", "sellercentral.amazon.pl"),
        ("TR", "eu", "sellercentral.amazon.com.tr"),
        ("AE", "eu", "sellercentral.amazon.ae"),
        ("SA", "eu", "sellercentral.amazon.sa"),
        ("EG", "eu", "sellercentral.amazon.eg"),
        ("ZA", "eu", "sellercentral.amazon.co.za"),
        ("IN", "eu", "sellercentral.amazon.in"),
        ("JP", "fe", "sellercentral.amazon.co.jp"),
        ("AU", "fe", "sellercentral.amazon.com.au"),
        ("SG", "fe", "sellercentral.amazon.sg"),
    ],
)
def test_a_marketplace_s_seller_goes_to_its_own_seller_central(
    code: str, region: str, host: str
) -> None:
    assert seller_region(None, code.lower()) == (region, code)
    url = consent_url(APP, region, "s", code)
    assert url.startswith(f"https://{host}/apps/authorize/consent?")
    back = login_continue_url(APP, region, CONFIRM, "a", "s", marketplace=code)
    assert back.startswith(f"https://{host}{CONFIRM}?")  # a relative way back: its own host
    assert host in amazon_callback_hosts(region)
    assert marketplace(code).retail in amazon_callback_hosts(region)


def test_every_marketplace_is_in_its_region_s_allow_list_only() -> None:
    assert len(MARKETPLACES) == 23
    for found in MARKETPLACES.values():
        for region in ("na", "eu", "fe"):
            listed = f"sellercentral.{found.retail}" in amazon_callback_hosts(region)
            assert listed == (region == found.region), found


def test_a_region_alone_keeps_its_default_seller_central() -> None:
    assert seller_region(None, None) == ("na", None)
    assert seller_region("fe", None) == ("fe", None)
    assert consent_url(APP, "fe", "s", None).startswith("https://sellercentral.amazon.co.jp/")


def test_the_uk_may_be_written_gb() -> None:
    assert seller_region(None, "gb") == ("eu", "UK")
    assert seller_region("eu", " Uk ") == ("eu", "UK")


def test_an_unknown_marketplace_is_refused_with_the_codes() -> None:
    with pytest.raises(InvalidInput, match=r"'XX' is not an Amazon marketplace: use one of US, CA"):
        seller_region(None, "XX")


def test_a_region_that_is_not_the_marketplace_s_is_refused() -> None:
    with pytest.raises(InvalidInput, match="marketplace AU is in the fe region, not na"):
        seller_region("na", "AU")


def test_a_configured_seller_central_wins_over_the_marketplace() -> None:
    local = AmazonApp(**{**APP.__dict__, "seller_central_url": "http://127.0.0.1:9/"})
    assert consent_url(local, "fe", "s", "AU").startswith("http://127.0.0.1:9/apps/")
