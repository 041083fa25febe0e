"""The real stripe-python SDK, unchanged, against the sandbox over real sockets: what it sees is
what it would see from Stripe, including its own retry rules (``HTTPClient._should_retry``
honours ``Stripe-Should-Retry``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import stripe
from stripe.params import CustomerCreateParams

from discoveryctl.sandbox import Sandbox, SandboxConfig, run_in_thread

from sandbox_fixtures import FrozenClock

KEY = SandboxConfig().stripe_api_key

Connect = Callable[..., stripe.StripeClient]


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """The default configuration on a clock that stands still."""
    with run_in_thread(clock=FrozenClock()) as running:
        yield running


@pytest.fixture
def connect(sandbox: Sandbox) -> Iterator[Connect]:
    """``connect(api_key=KEY, max_network_retries=0)``: a StripeClient pointed at the sandbox,
    its HTTP connections closed after the test."""
    http_clients: list[stripe.RequestsClient] = []

    def client(api_key: str = KEY, max_network_retries: int = 0) -> stripe.StripeClient:
        http = stripe.RequestsClient()
        http_clients.append(http)
        return stripe.StripeClient(
            api_key,
            base_addresses={"api": sandbox.url},
            http_client=http,
            max_network_retries=max_network_retries,
        )

    yield client
    for http in http_clients:
        http.close()  # type: ignore[no-untyped-call]


def posts(sandbox: Sandbox) -> int:
    return int(sandbox.state.stats()["requests"].get("POST /v1/customers", 0))


def test_create_replay_and_changed_parameters(connect: Connect, sandbox: Sandbox) -> None:
    customers = connect().v1.customers
    params: CustomerCreateParams = {
        "email": "jenny@example.com",
        "metadata": {"user_id": "u1"},
    }
    first = customers.create(params, {"idempotency_key": "onboard-u1"})
    again = customers.create(params, {"idempotency_key": "onboard-u1"})
    assert again.id == first.id
    assert sandbox.state.customer(first.id) == first.to_dict()
    assert again.last_response is not None
    assert again.last_response.headers["idempotent-replayed"] == "true"
    with pytest.raises(stripe.IdempotencyError) as changed:
        customers.create(
            {"email": "other@example.com", "metadata": {"user_id": "u1"}},
            {"idempotency_key": "onboard-u1"},
        )
    assert changed.value.http_status == 400
    with pytest.raises(stripe.IdempotencyError):
        customers.create(params, {"idempotency_key": "k" * 256})
    assert [c["id"] for c in sandbox.state.customers_for("u1")] == [first.id]


def test_list_by_email_search_and_paging(connect: Connect, sandbox: Sandbox) -> None:
    customers = connect().v1.customers
    created = [
        customers.create({"email": "p@example.com", "metadata": {"n": str(n)}}).id for n in range(5)
    ]
    customers.create({"email": "q@example.com"})
    listed = customers.list({"email": "p@example.com", "limit": 2})
    assert [c.id for c in listed.data] == created[::-1][:2]
    assert [c.id for c in listed.auto_paging_iter()] == created[::-1]
    query = "email:'p@example.com'"
    assert customers.search({"query": query}).data == []  # search trails writes
    sandbox.state.clock.advance(60)
    found = customers.search({"query": query, "limit": 2})
    assert found.has_more is True
    assert sorted(c.id for c in found.auto_paging_iter()) == sorted(created)
    assert [c.id for c in customers.search({"query": "metadata['n']:'3'"}).data] == [created[3]]


def test_errors_the_sdk_raises(connect: Connect, sandbox: Sandbox) -> None:
    with pytest.raises(stripe.AuthenticationError):
        connect(api_key="sk_test_wrong").v1.customers.list()
    sandbox.state.set_behaviour("stripe", "stripe_429", times=1)
    with pytest.raises(stripe.RateLimitError) as limited:
        connect(max_network_retries=2).v1.customers.create({"email": "a@example.com"})
    assert limited.value.error is not None
    assert limited.value.error.code == "rate_limit"
    assert posts(sandbox) == 1  # stripe-python does not retry a 429 Stripe does not mark
    sandbox.state.set_behaviour("stripe", "stripe_edge_4xx", times=1)
    with pytest.raises(stripe.APIError, match="Invalid response body from API"):
        connect().v1.customers.list()
    with pytest.raises(stripe.InvalidRequestError) as bad_query:
        connect().v1.customers.search({"query": "email:'a@example.com' OR name:'a' AND x:'y'"})
    assert bad_query.value.param == "query"


def test_the_sdk_retries_a_lock_timeout(connect: Connect, sandbox: Sandbox) -> None:
    sandbox.state.set_behaviour("stripe", "stripe_lock_timeout", times=1)
    customer = connect(max_network_retries=1).v1.customers.create({"email": "a@example.com"})
    assert posts(sandbox) == 2
    assert [c["id"] for c in sandbox.state.customers()] == [customer.id]


def test_the_sdk_honours_should_retry_on_a_500(connect: Connect, sandbox: Sandbox) -> None:
    client = connect(max_network_retries=2)
    sandbox.state.set_behaviour("stripe", "stripe_5xx", times=1)
    with pytest.raises(stripe.APIError):
        client.v1.customers.create({"email": "a@example.com"})
    assert posts(sandbox) == 1  # Stripe-Should-Retry: false
    sandbox.state.set_behaviour("stripe", "stripe_5xx", should_retry=1, times=1)
    customer = client.v1.customers.create({"email": "a@example.com"})
    assert posts(sandbox) == 3
    assert [c["id"] for c in sandbox.state.customers()] == [customer.id]
