"""``providers.stripe.StripeCustomers`` against the sandbox over real sockets: what a create
sends and returns, and how a user's customer is found again (list by email, then search)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from discoveryctl.errors import (
    AppCredentialsRejected,
    StripeOutcomeUnknown,
    TransientProviderError,
)
from discoveryctl.providers.stripe import (
    STRIPE_API_VERSION,
    Lookup,
    StripeAccount,
    StripeCustomers,
)
from discoveryctl.sandbox import Sandbox, SandboxConfig, run_in_thread

KEY = SandboxConfig().stripe_api_key


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with run_in_thread(SandboxConfig(stripe_rate_limits=False)) as running:
        yield running


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[StripeCustomers]:
    with StripeCustomers(StripeAccount(KEY, sandbox.url)) as customers:
        yield customers


def test_a_create_sends_the_user_and_the_key_and_a_retry_is_a_replay(
    client: StripeCustomers, sandbox: Sandbox
) -> None:
    made = client.create(user_id="u1", email="a@example.com", name="Ann", idempotency_key="k1")
    stored = sandbox.state.customer(made.customer_id)
    assert stored is not None
    assert (stored["email"], stored["name"], stored["metadata"]) == (
        "a@example.com",
        "Ann",
        {"user_id": "u1"},
    )
    assert made.request_id is not None and made.request_id.startswith("req_")
    assert made.replayed is False
    again = client.create(user_id="u1", email="a@example.com", name="Ann", idempotency_key="k1")
    assert (again.customer_id, again.replayed) == (made.customer_id, True)
    nameless = client.create(user_id="u2", email="b@example.com", name=None, idempotency_key="k2")
    assert sandbox.state.customer(nameless.customer_id)["name"] is None  # type: ignore[index]


def test_every_request_names_the_pinned_api_version(
    client: StripeCustomers, sandbox: Sandbox
) -> None:
    client.create(user_id="u1", email="a@example.com", name=None, idempotency_key="k1")
    sandbox.state.clock.advance(120)  # past the search lag: the search runs too
    client.find(user_id="u9", email="z@example.com")
    stats = sandbox.state.stats()
    assert stats["requests"]["GET /v1/customers/search"] == 1
    assert stats["stripe_versions"] == {STRIPE_API_VERSION: 3}


def test_a_replayed_500_without_its_header_leaves_the_outcome_unknown(
    client: StripeCustomers, sandbox: Sandbox
) -> None:
    sandbox.state.set_behaviour("stripe", "stripe_500_after_create", times=1)
    for _ in range(2):  # the first answer, then the key's replay (no Stripe-Should-Retry)
        with pytest.raises(StripeOutcomeUnknown):
            client.create(user_id="u1", email="a@example.com", name=None, idempotency_key="k1")
    assert len(sandbox.state.customers_for("u1")) == 1


def test_a_failure_leaves_as_the_core_s_error(client: StripeCustomers, sandbox: Sandbox) -> None:
    sandbox.state.set_behaviour("stripe", "stripe_5xx", status=502, times=1)
    with pytest.raises(TransientProviderError):
        client.create(user_id="u1", email="a@example.com", name=None, idempotency_key="k1")
    sandbox.state.set_behaviour("stripe", "stripe_5xx", status=502, times=1)
    with pytest.raises(TransientProviderError):
        client.find(user_id="u1", email="a@example.com")


def test_a_wrong_key_is_the_app_s_credentials(sandbox: Sandbox) -> None:
    with (
        StripeCustomers(StripeAccount("sk_test_not_ours_0000", sandbox.url)) as wrong,
        pytest.raises(AppCredentialsRejected),
    ):
        wrong.create(user_id="u1", email="a@example.com", name=None, idempotency_key="k1")


def test_find_lists_by_email_and_checks_the_user(client: StripeCustomers) -> None:
    assert client.find(user_id="u1", email="a@example.com").customer_id is None
    other = client.create(user_id="u2", email="a@example.com", name=None, idempotency_key="k2")
    mine = client.create(user_id="u1", email="a@example.com", name=None, idempotency_key="k1")
    assert client.find(user_id="u1", email="a@example.com").customer_id == mine.customer_id
    assert client.find(user_id="u2", email="a@example.com").customer_id == other.customer_id
    assert client.find(user_id="u3", email="a@example.com").customer_id is None


def test_find_without_search_asks_the_list_alone(client: StripeCustomers, sandbox: Sandbox) -> None:
    made = client.create(user_id="u1", email="old@example.com", name=None, idempotency_key="k")
    sandbox.state.clock.advance(61)  # searchable now, but not asked
    assert client.find(user_id="u1", email="new@example.com", search=False).customer_id is None
    assert (
        client.find(user_id="u1", email="old@example.com", search=False).customer_id
        == made.customer_id
    )
    assert "GET /v1/customers/search" not in sandbox.state.stats()["requests"]
    assert client.find(user_id="u1", email="new@example.com").customer_id == made.customer_id


def test_find_searches_by_metadata_when_the_email_changed_at_stripe(
    client: StripeCustomers, sandbox: Sandbox
) -> None:
    """The list by email misses a customer whose email is not the one we sent; the search by
    metadata finds it once it is searchable (the sandbox's lag: a minute, by its clock)."""
    made = client.create(user_id="o'neil", email="old@example.com", name=None, idempotency_key="k")
    assert (
        client.find(user_id="o'neil", email="new@example.com").customer_id is None
    )  # not searchable yet
    sandbox.state.clock.advance(61)
    assert client.find(user_id="o'neil", email="new@example.com").customer_id == made.customer_id
    assert client.find(user_id="someone", email="new@example.com").customer_id is None
    slash = client.create(user_id="a\\b", email="x@example.com", name=None, idempotency_key="s")
    sandbox.state.clock.advance(61)
    assert client.find(user_id="a\\b", email="new@example.com").customer_id == slash.customer_id


def test_a_refused_search_leaves_the_list_s_answer_and_says_so(
    client: StripeCustomers, sandbox: Sandbox
) -> None:
    """ "Search": not offered everywhere. Refused for good (the sandbox's 400, or a 403: the
    list under the same key has just answered), the list by email decides alone and the
    lookup carries Stripe's message; a customer found by the list needs no search at all."""
    made = client.create(user_id="u1", email="old@example.com", name=None, idempotency_key="k")
    sandbox.state.clock.advance(61)
    sandbox.state.set_behaviour("stripe", "stripe_search_unavailable")
    assert client.find(user_id="u1", email="new@example.com") == Lookup(
        None, search_refused="search feature unavailable for merchant"
    )
    assert client.find(user_id="u1", email="old@example.com") == Lookup(made.customer_id)
    sandbox.state.set_behaviour("stripe", "stripe_search_unavailable", refusal_status=403)
    refused = client.find(user_id="u1", email="new@example.com")
    assert refused == Lookup(None, search_refused="search feature unavailable for merchant")
    assert sandbox.state.stats()["requests"]["GET /v1/customers/search"] == 2


@pytest.mark.parametrize(
    ("refusal_status", "error"),
    [(429, TransientProviderError), (401, AppCredentialsRejected)],
    ids=["rate-limited", "key-refused"],
)
def test_a_search_failing_for_now_or_refusing_the_key_fails_the_lookup(
    client: StripeCustomers, sandbox: Sandbox, refusal_status: int, error: type[Exception]
) -> None:
    """A 429 is a wait, not a refusal (a later try asks again); a 401 is the key's."""
    sandbox.state.clock.advance(61)
    sandbox.state.set_behaviour(
        "stripe", "stripe_search_unavailable", refusal_status=refusal_status
    )
    with pytest.raises(error):
        client.find(user_id="u1", email="a@example.com")
