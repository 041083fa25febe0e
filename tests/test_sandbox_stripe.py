"""The sandbox's Stripe ``/v1/customers`` over real sockets: authentication, create, list,
search and retrieve, Stripe's idempotency-key rules (with truly concurrent requests), its search
lag, search syntax, list paging, rate limits and the Stripe switches.

Here the sandbox's clock stands still (``FrozenClock``) unless a test moves it, so ages, expiry
and requests per second are exact and nothing waits on the wall clock.
"""

from __future__ import annotations

import asyncio
import base64
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from discoveryctl.sandbox import Sandbox, SandboxConfig, run_in_thread
from discoveryctl.sandbox.clock import ManualClock

from sandbox_fixtures import FrozenClock

KEY = SandboxConfig().stripe_api_key
AUTH = {"Authorization": f"Bearer {KEY}"}
DAY = 24 * 60 * 60


class GatedClock(FrozenClock):
    """A frozen clock whose injected sleeps wait until the test opens ``gate``; ``asleep``
    is set once a request has begun sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self.asleep = threading.Event()
        self.gate = threading.Event()

    async def sleep(self, seconds: float) -> None:
        self.asleep.set()
        await asyncio.to_thread(self.gate.wait, 10)
        await super().sleep(seconds)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """The default configuration on a clock that stands still."""
    with run_in_thread(clock=FrozenClock()) as running:
        yield running


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, headers=AUTH) as http:
        yield http


def create(client: httpx.Client, key: str | None = None, **params: str) -> httpx.Response:
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.post("/v1/customers", data=params, headers=headers)


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [customer["id"] for customer in response.json()["data"]]


def search(client: httpx.Client, query: str, **params: Any) -> httpx.Response:
    return client.get("/v1/customers/search", params={"query": query, **params})


def error_of(response: httpx.Response, status: int) -> dict[str, str]:
    assert response.status_code == status, response.text
    error: dict[str, str] = response.json()["error"]
    return error


def test_create_returns_a_customer_object(client: httpx.Client, sandbox: Sandbox) -> None:
    sandbox.state.clock.advance(10 * DAY)
    response = create(
        client,
        email="jenny@example.com",
        name="Jenny",
        **{"metadata[user_id]": "u1", "metadata[plan]": "pro"},
    )
    assert response.status_code == 200
    customer = response.json()
    assert re.fullmatch(r"cus_[A-Za-z0-9]{14}", customer["id"])
    assert customer["object"] == "customer"
    assert (customer["email"], customer["name"]) == ("jenny@example.com", "Jenny")
    assert customer["metadata"] == {"user_id": "u1", "plan": "pro"}
    assert customer["created"] == int(sandbox.state.clock.now())  # the sandbox's time
    assert customer["livemode"] is False
    assert response.headers["request-id"].startswith("req_")
    assert sandbox.state.customers_for("u1") == [customer]
    assert sandbox.state.stats()["customers_per_user"] == {"u1": 1}


def test_a_missing_key_is_refused(sandbox: Sandbox) -> None:
    with httpx.Client(base_url=sandbox.url) as anonymous:
        response = anonymous.post("/v1/customers", data={"email": "a@example.com"})
    error = error_of(response, 401)
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("You did not provide an API key.")
    assert sandbox.state.customers() == []


def test_a_wrong_key_is_refused_and_masked(sandbox: Sandbox) -> None:
    with httpx.Client(
        base_url=sandbox.url, headers={"Authorization": "Bearer sk_test_wrong-key-123456"}
    ) as wrong:
        response = wrong.get("/v1/customers")
    error = error_of(response, 401)
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("Invalid API Key provided: sk_test_****")
    assert "wrong-key" not in error["message"]


def test_a_non_ascii_key_is_refused(sandbox: Sandbox) -> None:
    with httpx.Client(
        base_url=sandbox.url, headers={b"Authorization": b"Bearer sk_test_\xc3\xbc"}
    ) as client:
        assert client.get("/v1/customers").status_code == 401


def test_basic_authentication_with_the_key_as_user_name(sandbox: Sandbox) -> None:
    basic = base64.b64encode(f"{KEY}:".encode()).decode()
    with httpx.Client(base_url=sandbox.url, headers={"Authorization": f"Basic {basic}"}) as client:
        assert client.get("/v1/customers").status_code == 200


def test_retrieve(client: httpx.Client) -> None:
    customer = create(client, email="a@example.com").json()
    assert client.get(f"/v1/customers/{customer['id']}", params={"expand[]": "x"}).json() == (
        customer
    )
    missing = client.get("/v1/customers/cus_missing")
    error = error_of(missing, 404)
    assert error["code"] == "resource_missing"
    assert error["message"] == "No such customer: 'cus_missing'"


@pytest.mark.parametrize(
    ("params", "code"),
    [({"colour": "blue"}, "parameter_unknown"), ({"email": "not-an-email"}, "email_invalid")],
)
def test_invalid_parameters_are_refused_and_not_kept(
    client: httpx.Client, sandbox: Sandbox, params: dict[str, str], code: str
) -> None:
    assert error_of(create(client, "key-1", **params), 400)["code"] == code
    assert sandbox.state.customers() == []
    assert create(client, "key-1", email="a@example.com").status_code == 200


# -- idempotency ------------------------------------------------------------------------------


def test_same_key_same_parameters_replays_the_first_answer(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    params = {"email": "a@example.com", "metadata[user_id]": "u1"}
    first = create(client, "key-1", **params)
    again = create(client, "key-1", **params)
    assert again.status_code == first.status_code == 200
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["original-request"] == first.headers["request-id"]
    assert "idempotent-replayed" not in first.headers
    assert len(sandbox.state.customers_for("u1")) == 1


def test_same_key_other_parameters_is_an_idempotency_error(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    create(client, "key-1", email="a@example.com")
    response = create(client, "key-1", email="b@example.com")
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "type": "idempotency_error",
            "message": "Keys for idempotent requests can only be used with the same parameters "
            "they were first used with. Try using a key other than 'key-1' if you meant to "
            "execute a different request.",
        }
    }
    assert len(sandbox.state.customers()) == 1


def test_a_key_in_flight_is_refused_with_409() -> None:
    clock = GatedClock()
    params = {"email": "a@example.com", "metadata[user_id]": "u1"}
    with run_in_thread(clock=clock) as sandbox, ThreadPoolExecutor(max_workers=1) as pool:
        sandbox.state.set_behaviour("stripe", "stripe_slow", ms=500, times=1)

        def post() -> httpx.Response:
            with httpx.Client(base_url=sandbox.url, headers=AUTH) as own_client:
                return create(own_client, "key-1", **params)

        try:
            first = pool.submit(post)
            assert clock.asleep.wait(10)  # the first request holds the key, executing
            second = post()
        finally:
            clock.gate.set()
        first_response = first.result()

        error = error_of(second, 409)
        assert (error["type"], error["code"]) == ("invalid_request_error", "idempotency_key_in_use")
        assert "key-1" in error["message"]
        assert first_response.status_code == 200
        replay = post()
        assert replay.content == first_response.content
        assert replay.headers["idempotent-replayed"] == "true"
        assert len(sandbox.state.customers_for("u1")) == 1
        assert clock.sleeps == [0.5]


def test_a_key_expires_24_hours_after_first_use(client: httpx.Client, sandbox: Sandbox) -> None:
    params = {"email": "a@example.com", "metadata[user_id]": "u1"}
    first = create(client, "key-1", **params).json()
    sandbox.state.clock.advance(DAY - 1)
    replayed = create(client, "key-1", **params)
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.json()["id"] == first["id"]
    sandbox.state.clock.advance(1)
    second = create(client, "key-1", **params)
    assert "idempotent-replayed" not in second.headers
    assert second.json()["id"] != first["id"]  # a new customer, as Stripe documents
    assert sandbox.state.stats()["customers_per_user"] == {"u1": 2}
    # The key now stands for the second request, for another 24 hours, whatever its params.
    assert create(client, "key-1", **params).json()["id"] == second.json()["id"]
    assert error_of(create(client, "key-1", email="b@example.com"), 400)["type"] == (
        "idempotency_error"
    )


def test_forgotten_keys_create_again(client: httpx.Client, sandbox: Sandbox) -> None:
    params = {"email": "a@example.com", "metadata[user_id]": "u1"}
    first = create(client, "key-1", **params).json()
    assert client.delete("/_sandbox/idempotency-keys").status_code == 204
    second = create(client, "key-1", **params).json()
    assert first["id"] != second["id"]
    assert sandbox.state.stats()["customers_per_user"] == {"u1": 2}


@pytest.mark.parametrize("length", [0, 256, 1000])
def test_a_key_of_the_wrong_length_is_refused(
    client: httpx.Client, sandbox: Sandbox, length: int
) -> None:
    error = error_of(create(client, "k" * length, email="a@example.com"), 400)
    assert error == {
        "type": "idempotency_error",
        "message": f"Idempotent key length is {length} characters long, which is outside "
        "accepted lengths. Idempotent Keys must be 1-255 characters long. If you're looking "
        "for a decent generator, try using a UUID defined by IETF RFC 4122.",
    }
    assert sandbox.state.customers() == []
    assert create(client, "k" * 255, email="a@example.com").status_code == 200


# -- search -----------------------------------------------------------------------------------


def test_search_by_metadata_and_email(client: httpx.Client, sandbox: Sandbox) -> None:
    jenny = create(client, email="Jenny@Example.com", **{"metadata[user_id]": "u1"}).json()
    other = create(client, email="other@example.com", **{"metadata[user_id]": "u2"}).json()
    sandbox.state.clock.advance(60)

    def found(query: str) -> list[str]:
        response = search(client, query)
        body = response.json()
        assert (body["object"], body["has_more"]) == ("search_result", False)
        return ids(response)

    assert found("metadata['user_id']:'u1'") == [jenny["id"]]
    assert found('metadata["user_id"]:"u2"') == [other["id"]]
    assert found("email:'jenny@example.com'") == [jenny["id"]]  # strings: case insensitive
    assert found("metadata['user_id']:'U1'") == []  # metadata: case sensitive
    assert found("metadata['user_id']:'u1' AND email:'other@example.com'") == []
    assert found("metadata['user_id']:'u1' OR metadata['user_id']:'u2'") == [
        other["id"],
        jenny["id"],
    ]
    assert found("metadata['user_id']:'nobody'") == []


def test_search_syntax(client: httpx.Client, sandbox: Sandbox) -> None:
    ann = create(client, email="ann@example.com", name="Ann Lee", phone="+15550001").json()
    sandbox.state.clock.advance(100)
    bob = create(
        client, email="bob@example.org", name="Bob Ann Lee Jr", **{"metadata[vip]": "yes"}
    ).json()
    sandbox.state.clock.advance(60)
    ann_id, bob_id = ann["id"], bob["id"]

    def found(query: str) -> list[str]:
        return ids(search(client, query))

    assert found("name:'ann lee'") == [bob_id, ann_id]  # words of the query, in order
    assert found("name:'lee ann'") == []
    assert found("email:'ann@example.com' name:'ann'") == [ann_id]  # whitespace is AND
    assert found("email:'ann@example.com' and name:'bob'") == []
    assert found("email:'ann@example.com' or name:'bob'") == [bob_id, ann_id]
    assert found("-email:'ann@example.com'") == [bob_id]
    assert found("email~'example.org'") == [bob_id]
    assert found("phone~'555'") == [ann_id]
    assert found('name:"Bob \\"Ann\\" Lee"') == []  # escaped quotes are part of the value
    assert found(f"created>{ann['created']}") == [bob_id]
    assert found(f"created<={ann['created']}") == [ann_id]
    assert found(f"created:'{bob['created']}'") == [bob_id]
    assert found("metadata['vip']:null") == [ann_id]
    assert found("-metadata['vip']:null") == [bob_id]


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("", "empty"),
        ("user_id:'u1'", "not a customer search field"),
        ("description:'x'", "not searchable on customers"),
        ("metadata['user_id']:u1", "strings must be quoted"),
        ("email:'a@x.io' AND name:'b' OR name:'c'", "AND and OR together"),
        ("email:'a@x.io' name:'b' OR name:'c'", "implicit AND and OR together"),
        ("email~'ab'", "substring shorter than 3"),
        ("email>'a'", "numeric comparison on a string"),
        ("metadata['k']~'abc'", "substring on metadata"),
        ("created>'yesterday'", "not a number"),
        ("email:'a@x.io' AND", "dangling AND"),
        ("email : 'a@x.io'", "spaces around the operator"),
    ],
)
def test_search_refuses_what_stripe_refuses(client: httpx.Client, query: str, why: str) -> None:
    error = error_of(search(client, query), 400)
    assert (error["type"], error["param"]) == ("invalid_request_error", "query"), why


def test_search_needs_a_query(client: httpx.Client) -> None:
    error = error_of(client.get("/v1/customers/search"), 400)
    assert (error["code"], error["param"]) == ("parameter_missing", "query")


def test_search_trails_writes_by_a_minute_by_default(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    created = create(client, "key-1", email="a@example.com", **{"metadata[user_id]": "u1"})
    query = "metadata['user_id']:'u1'"
    assert ids(search(client, query)) == []
    listed = client.get("/v1/customers", params={"email": "a@example.com"})
    assert ids(listed) == [created.json()["id"]]  # list is not an index
    assert client.get(f"/v1/customers/{created.json()['id']}").status_code == 200
    sandbox.state.clock.advance(59)
    assert ids(search(client, query)) == []
    sandbox.state.clock.advance(1)
    assert ids(search(client, query)) == [created.json()["id"]]


def test_search_lag_can_be_switched_off_or_changed(client: httpx.Client, sandbox: Sandbox) -> None:
    created = create(client, email="a@example.com").json()
    query = "email:'a@example.com'"
    response = client.post(
        "/_sandbox/behaviours",
        json={"target": "stripe", "behaviour": "stripe_search_lag", "params": {"ms": 0}},
    )
    assert response.status_code == 200
    assert ids(search(client, query)) == [created["id"]]
    sandbox.state.set_behaviour("stripe", "stripe_search_lag", ms=5000)
    assert ids(search(client, query)) == []
    sandbox.state.clock.advance(5)
    assert ids(search(client, query)) == [created["id"]]
    with (
        run_in_thread(SandboxConfig(stripe_search_lag_seconds=0)) as immediate,
        httpx.Client(base_url=immediate.url, headers=AUTH) as other,
    ):
        at_once = create(other, email="a@example.com").json()
        assert ids(search(other, query)) == [at_once["id"]]


def test_search_pages_with_next_page(client: httpx.Client, sandbox: Sandbox) -> None:
    created = [create(client, email="p@example.com").json()["id"] for _ in range(3)]
    sandbox.state.clock.advance(60)
    params = {"limit": 2, "expand[]": "total_count"}
    first = search(client, "email:'p@example.com'", **params).json()
    assert first["has_more"] is True
    assert first["next_page"]
    rest = search(client, "email:'p@example.com'", page=first["next_page"], **params).json()
    assert rest["has_more"] is False
    assert rest["next_page"] is None
    assert sorted(c["id"] for c in first["data"] + rest["data"]) == sorted(created)
    assert search(client, "email:'p@example.com'", page="nonsense!").status_code == 400


# -- list -------------------------------------------------------------------------------------


def test_list_filters_by_email_newest_first_with_limit(client: httpx.Client) -> None:
    first = create(client, email="a@example.com").json()
    second = create(client, email="a@example.com").json()
    create(client, email="b@example.com")
    create(client, email="A@example.com")  # list's email filter is case-sensitive
    listed = client.get("/v1/customers", params={"email": "a@example.com"}).json()
    assert listed == {
        "object": "list",
        "data": [second, first],
        "has_more": False,
        "url": "/v1/customers",
    }
    limited = client.get("/v1/customers", params={"limit": 2}).json()
    assert (len(limited["data"]), limited["has_more"]) == (2, True)


def test_list_pages_forwards_and_backwards(client: httpx.Client) -> None:
    oldest_first = [create(client, email="a@example.com").json()["id"] for _ in range(5)]
    newest_first = oldest_first[::-1]
    page = client.get("/v1/customers", params={"limit": 2}).json()
    assert ([c["id"] for c in page["data"]], page["has_more"]) == (newest_first[:2], True)
    after = {"limit": 2, "starting_after": newest_first[1]}
    page = client.get("/v1/customers", params=after).json()
    assert ([c["id"] for c in page["data"]], page["has_more"]) == (newest_first[2:4], True)
    after["starting_after"] = newest_first[3]
    page = client.get("/v1/customers", params=after).json()
    assert ([c["id"] for c in page["data"]], page["has_more"]) == (newest_first[4:], False)
    before = {"limit": 2, "ending_before": newest_first[4]}
    page = client.get("/v1/customers", params=before).json()
    assert ([c["id"] for c in page["data"]], page["has_more"]) == (newest_first[2:4], True)
    before["ending_before"] = newest_first[2]
    page = client.get("/v1/customers", params=before).json()
    assert ([c["id"] for c in page["data"]], page["has_more"]) == (newest_first[:2], False)
    both = client.get(
        "/v1/customers",
        params={"starting_after": newest_first[0], "ending_before": newest_first[4]},
    )
    assert error_of(both, 400)["type"] == "invalid_request_error"
    missing = client.get("/v1/customers", params={"ending_before": "cus_missing"})
    assert error_of(missing, 400)["code"] == "resource_missing"


def test_list_filters_by_created(client: httpx.Client, sandbox: Sandbox) -> None:
    stamps = []
    for _ in range(3):
        customer = create(client, email="a@example.com").json()
        stamps.append((customer["created"], customer["id"]))
        sandbox.state.clock.advance(10)
    (t0, c0), (t1, c1), (t2, c2) = stamps

    def listed(**params: Any) -> list[str]:
        return ids(client.get("/v1/customers", params=params))

    assert listed(**{"created[gt]": t0}) == [c2, c1]
    assert listed(**{"created[gte]": t1, "created[lt]": t2}) == [c1]
    assert listed(**{"created[lte]": t1, "expand[]": "data.default_source"}) == [c1, c0]
    assert listed(created=t2) == [c2]
    assert listed(test_clock="clock_1") == []  # none of the sandbox's customers has one
    bad = client.get("/v1/customers", params={"created[gt]": "yesterday"})
    assert error_of(bad, 400) | {"doc_url": ""} == {
        "type": "invalid_request_error",
        "message": "Invalid integer: yesterday",
        "code": "parameter_invalid_integer",
        "param": "created[gt]",
        "doc_url": "",
    }


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        ("0", "This value must be greater than or equal to 1."),
        ("101", "This value must be less than or equal to 100."),
        ("ten", "Invalid integer: ten"),
    ],
)
def test_list_limit_is_1_to_100(client: httpx.Client, limit: str, message: str) -> None:
    error = error_of(client.get("/v1/customers", params={"limit": limit}), 400)
    assert (error["code"], error["param"], error["message"]) == (
        "parameter_invalid_integer",
        "limit",
        message,
    )
    for allowed in ("1", "100"):
        assert client.get("/v1/customers", params={"limit": allowed}).status_code == 200


def test_list_refuses_what_stripe_refuses(client: httpx.Client) -> None:
    refused = client.get("/v1/customers", params={"metadata[user_id]": "u1"})
    error = error_of(refused, 400)
    assert (error["code"], error["param"]) == ("parameter_unknown", "metadata[user_id]")


# -- rate limits ------------------------------------------------------------------------------


def test_sandbox_rate_limits_by_the_sandbox_clock(client: httpx.Client, sandbox: Sandbox) -> None:
    writes = [create(client, f"key-{n}", email="a@example.com") for n in range(20)]
    reads = [client.get("/v1/customers", params={"limit": 1}) for _ in range(6)]
    statuses = [r.status_code for r in writes + reads]
    assert statuses == [200] * 25 + [429]  # 25 operations a second in total
    assert error_of(reads[-1], 429)["code"] == "rate_limit"
    assert len(sandbox.state.customers()) == 20
    sandbox.state.clock.advance(1)
    searches = [search(client, "email:'a@example.com'") for _ in range(21)]
    assert [s.status_code for s in searches] == [200] * 20 + [429]
    assert client.get("/v1/customers").status_code == 200  # searches count in the 25 too
    assert [client.get("/v1/customers").status_code for _ in range(5)] == [200] * 4 + [429]
    sandbox.state.clock.advance(1)
    retried = create(client, "key-20", email="a@example.com")  # the limited key kept nothing
    assert retried.status_code == 200
    assert "idempotent-replayed" not in retried.headers
    assert len(sandbox.state.customers()) == 21


def test_rate_limits_can_be_switched_off() -> None:
    with (
        run_in_thread(SandboxConfig(stripe_rate_limits=False), clock=FrozenClock()) as sandbox,
        httpx.Client(base_url=sandbox.url, headers=AUTH) as client,
    ):
        assert {client.get("/v1/customers").status_code for _ in range(30)} == {200}


# -- switches ---------------------------------------------------------------------------------


def test_stripe_5xx_fails_before_executing_so_the_key_stays_usable(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    sandbox.state.set_behaviour("stripe", "stripe_5xx", times=2)
    failures = [create(client, "key-1", email="a@example.com") for _ in range(2)]
    assert [f.status_code for f in failures] == [500, 500]
    assert failures[0].json()["error"]["type"] == "api_error"
    assert failures[0].headers["request-id"].startswith("req_")
    assert failures[0].headers["stripe-should-retry"] == "false"
    created = create(client, "key-1", email="a@example.com")
    assert created.status_code == 200
    assert "idempotent-replayed" not in created.headers
    assert len(sandbox.state.customers()) == 1


def test_stripe_5xx_can_say_whether_to_retry(client: httpx.Client, sandbox: Sandbox) -> None:
    sandbox.state.set_behaviour("stripe", "stripe_5xx", should_retry=1, times=1)
    assert client.get("/v1/customers").headers["stripe-should-retry"] == "true"
    sandbox.state.set_behaviour("stripe", "stripe_5xx", status=503, times=1)
    unavailable = client.get("/v1/customers")
    assert unavailable.status_code == 503
    assert "stripe-should-retry" not in unavailable.headers


def test_a_500_after_executing_is_kept_under_the_key_and_replayed(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    sandbox.state.set_behaviour("stripe", "stripe_500_after_create", times=1)
    params = {"email": "a@example.com", "metadata[user_id]": "u1"}
    failed = create(client, "key-1", **params)
    assert error_of(failed, 500)["type"] == "api_error"
    assert failed.headers["stripe-should-retry"] == "false"
    assert len(sandbox.state.customers_for("u1")) == 1  # it was created all the same
    replayed = create(client, "key-1", **params)
    assert replayed.status_code == 500
    assert replayed.headers["idempotent-replayed"] == "true"
    assert "stripe-should-retry" not in replayed.headers  # status and body are what is kept
    assert replayed.content == failed.content
    sandbox.state.clock.advance(60)
    found = search(client, "metadata['user_id']:'u1'")
    assert ids(found) == [sandbox.state.customers_for("u1")[0]["id"]]
    assert len(sandbox.state.customers_for("u1")) == 1


def test_a_replayed_500_carries_the_should_retry_header_only_when_asked(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    sandbox.state.set_behaviour("stripe", "stripe_500_after_create", times=1, replay_should_retry=1)
    params = {"email": "a@example.com", "metadata[user_id]": "u1"}
    assert create(client, "key-1", **params).status_code == 500
    replayed = create(client, "key-1", **params)
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.headers["stripe-should-retry"] == "false"


def test_stripe_5xx_from_the_edge_is_an_html_page(client: httpx.Client, sandbox: Sandbox) -> None:
    sandbox.state.set_behaviour("stripe", "stripe_5xx", status=502, html=1, times=1)
    failed = create(client, "key-1", email="a@example.com")
    assert failed.status_code == 502
    assert failed.headers["content-type"].startswith("text/html")
    assert "502" in failed.text
    assert create(client, "key-1", email="a@example.com").status_code == 200


def test_stripe_edge_4xx_is_an_html_page_before_authentication(sandbox: Sandbox) -> None:
    sandbox.state.set_behaviour("stripe", "stripe_edge_4xx", times=1)
    sandbox.state.set_behaviour("stripe", "stripe_edge_4xx", edge_status=400, times=1)
    with httpx.Client(base_url=sandbox.url) as anonymous:
        page = anonymous.get("/v1/customers")
        assert page.status_code == 400
        assert page.headers["content-type"].startswith("text/html")
        assert anonymous.get("/v1/customers").status_code == 401
    sandbox.state.set_behaviour("stripe", "stripe_edge_4xx", times=1)
    with httpx.Client(base_url=sandbox.url, headers=AUTH) as client:
        forbidden = create(client, "key-1", email="a@example.com")
        assert (forbidden.status_code, forbidden.headers["content-type"][:9]) == (403, "text/html")
        assert create(client, "key-1", email="a@example.com").status_code == 200


def test_stripe_429_is_a_rate_limit(client: httpx.Client) -> None:
    response = client.post(
        "/_sandbox/behaviours",
        json={"target": "stripe", "behaviour": "stripe_429", "params": {"times": 1}},
    )
    assert response.status_code == 200
    limited = client.get("/v1/customers")
    assert error_of(limited, 429)["code"] == "rate_limit"
    assert "stripe-should-retry" not in limited.headers
    assert client.get("/v1/customers").status_code == 200


def test_a_lock_timeout_is_a_429_stripe_asks_to_retry(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    sandbox.state.set_behaviour("stripe", "stripe_lock_timeout", times=1)
    locked = create(client, "key-1", email="a@example.com")
    error = error_of(locked, 429)
    assert (error["type"], error["code"]) == ("invalid_request_error", "lock_timeout")
    assert locked.headers["stripe-should-retry"] == "true"
    retried = create(client, "key-1", email="a@example.com")  # nothing was kept
    assert retried.status_code == 200
    assert "idempotent-replayed" not in retried.headers


def test_a_dropped_answer_is_replayed_to_the_retry(client: httpx.Client, sandbox: Sandbox) -> None:
    sandbox.state.set_behaviour("stripe", "stripe_drop_after_create", times=1)
    params = {"email": "a@example.com", "metadata[user_id]": "u1"}
    with pytest.raises(httpx.RemoteProtocolError):
        create(client, "key-1", **params)
    [customer] = sandbox.state.customers_for("u1")
    retry = create(client, "key-1", **params)
    assert retry.status_code == 200
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json() == customer
    assert len(sandbox.state.customers_for("u1")) == 1


def test_without_a_key_a_retry_after_a_drop_creates_a_duplicate(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    sandbox.state.set_behaviour("stripe", "stripe_drop_after_create", times=1)
    with pytest.raises(httpx.RemoteProtocolError):
        create(client, **{"metadata[user_id]": "u1"})
    assert create(client, **{"metadata[user_id]": "u1"}).status_code == 200
    assert sandbox.state.stats()["customers_per_user"] == {"u1": 2}


def test_stripe_slow_sleeps_on_the_sandbox_clock(client: httpx.Client, sandbox: Sandbox) -> None:
    clock = sandbox.state.clock
    assert isinstance(clock, ManualClock)
    before = clock.now()
    sandbox.state.set_behaviour("stripe", "stripe_slow", ms=90_000, times=1)
    created = create(client, email="a@example.com").json()
    assert clock.sleeps == [90.0]
    assert created["created"] == int(before + 90)  # created once the delay was over
    assert clock.now() == before + 90


def test_fail_rate_fails_stripe_before_executing() -> None:
    with (
        run_in_thread(SandboxConfig(fail_rate=1.0)) as sandbox,
        httpx.Client(base_url=sandbox.url, headers=AUTH) as client,
    ):
        response = create(client, "key-1", email="a@example.com")
        assert error_of(response, 500)["type"] == "api_error"
        assert response.headers["request-id"].startswith("req_")
        assert response.headers["stripe-should-retry"] == "false"
        assert sandbox.state.customers() == []
