"""The sandbox's Stripe ``/v1/customers``: authentication, create/list/search/retrieve, Stripe's
idempotency-key rules (with truly concurrent requests) and the Stripe switches."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from discoveryctl.sandbox import Sandbox, SandboxConfig, run_in_thread

KEY = SandboxConfig().stripe_api_key
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, headers=AUTH) as http:
        yield http


def create(client: httpx.Client, key: str | None = None, **params: str) -> httpx.Response:
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.post("/v1/customers", data=params, headers=headers)


def test_create_returns_a_customer_object(client: httpx.Client, sandbox: Sandbox) -> None:
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
    assert abs(customer["created"] - time.time()) < 60
    assert customer["livemode"] is False
    assert response.headers["request-id"].startswith("req_")
    assert sandbox.state.customers_for("u1") == [customer]
    assert sandbox.state.stats()["customers_per_user"] == {"u1": 1}


def test_a_missing_key_is_refused(sandbox: Sandbox) -> None:
    with httpx.Client(base_url=sandbox.url) as anonymous:
        response = anonymous.post("/v1/customers", data={"email": "a@example.com"})
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("You did not provide an API key.")
    assert sandbox.state.customers() == []


def test_a_wrong_key_is_refused_and_masked(sandbox: Sandbox) -> None:
    with httpx.Client(
        base_url=sandbox.url, headers={"Authorization": "Bearer sk_test_wrong-key-123456"}
    ) as wrong:
        response = wrong.get("/v1/customers")
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("Invalid API Key provided: sk_test_****")
    assert "wrong-key" not in error["message"]


def test_a_non_ascii_key_is_refused(sandbox: Sandbox) -> None:
    with httpx.Client(
        base_url=sandbox.url, headers={"Authorization": b"Bearer sk_test_\xc3\xbc"}
    ) as client:
        assert client.get("/v1/customers").status_code == 401


def test_basic_authentication_with_the_key_as_user_name(sandbox: Sandbox) -> None:
    basic = base64.b64encode(f"{KEY}:".encode()).decode()
    with httpx.Client(base_url=sandbox.url, headers={"Authorization": f"Basic {basic}"}) as client:
        assert client.get("/v1/customers").status_code == 200


def test_list_filters_by_email_newest_first_with_limit(client: httpx.Client) -> None:
    first = create(client, email="a@example.com").json()
    second = create(client, email="a@example.com").json()
    create(client, email="b@example.com")
    listed = client.get("/v1/customers", params={"email": "a@example.com"}).json()
    assert listed == {
        "object": "list",
        "data": [second, first],
        "has_more": False,
        "url": "/v1/customers",
    }
    limited = client.get("/v1/customers", params={"limit": 2}).json()
    assert (len(limited["data"]), limited["has_more"]) == (2, True)
    assert client.get("/v1/customers", params={"limit": 0}).status_code == 400


def test_search_by_metadata_and_email(client: httpx.Client) -> None:
    jenny = create(client, email="Jenny@Example.com", **{"metadata[user_id]": "u1"}).json()
    other = create(client, email="other@example.com", **{"metadata[user_id]": "u2"}).json()

    def search(query: str) -> list[str]:
        response = client.get("/v1/customers/search", params={"query": query})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["object"], body["has_more"]) == ("search_result", False)
        return [customer["id"] for customer in body["data"]]

    assert search("metadata['user_id']:'u1'") == [jenny["id"]]
    assert search('metadata["user_id"]:"u2"') == [other["id"]]
    assert search("email:'jenny@example.com'") == [jenny["id"]]
    assert search("metadata['user_id']:'u1' AND email:'other@example.com'") == []
    assert search("metadata['user_id']:'u1' OR metadata['user_id']:'u2'") == [
        other["id"],
        jenny["id"],
    ]
    assert search("metadata['user_id']:'nobody'") == []


@pytest.mark.parametrize(
    "query", ["", "user_id:'u1'", "metadata['user_id']:u1", "email:'a' AND name:'b' OR name:'c'"]
)
def test_search_rejects_queries_it_does_not_understand(client: httpx.Client, query: str) -> None:
    response = client.get("/v1/customers/search", params={"query": query})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "query"


def test_retrieve(client: httpx.Client) -> None:
    customer = create(client, email="a@example.com").json()
    assert client.get(f"/v1/customers/{customer['id']}").json() == customer
    missing = client.get("/v1/customers/cus_missing")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "resource_missing"
    assert missing.json()["error"]["message"] == "No such customer: 'cus_missing'"


@pytest.mark.parametrize(
    ("params", "code"),
    [({"colour": "blue"}, "parameter_unknown"), ({"email": "not-an-email"}, "email_invalid")],
)
def test_invalid_parameters_are_refused_and_not_kept(
    client: httpx.Client, sandbox: Sandbox, params: dict[str, str], code: str
) -> None:
    response = create(client, "key-1", **params)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
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


def test_a_key_in_flight_is_refused_with_409(sandbox: Sandbox) -> None:
    sandbox.state.set_behaviour("stripe", "stripe_slow", ms=500, times=1)
    params = {"email": "a@example.com", "metadata[user_id]": "u1"}

    def post() -> httpx.Response:
        with httpx.Client(base_url=sandbox.url, headers=AUTH) as own_client:
            return create(own_client, "key-1", **params)

    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(post)
        while sandbox.state.stats()["requests"].get("POST /v1/customers") != 1:
            time.sleep(0.005)
        second = post()
        first_response = first.result()

    assert second.status_code == 409
    error = second.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "idempotency_key_in_use")
    assert "key-1" in error["message"]
    assert first_response.status_code == 200
    replay = post()
    assert replay.content == first_response.content
    assert replay.headers["idempotent-replayed"] == "true"
    assert len(sandbox.state.customers_for("u1")) == 1


def test_forgotten_keys_create_again(client: httpx.Client, sandbox: Sandbox) -> None:
    params = {"email": "a@example.com", "metadata[user_id]": "u1"}
    first = create(client, "key-1", **params).json()
    assert client.delete("/_sandbox/idempotency-keys").status_code == 204
    second = create(client, "key-1", **params).json()
    assert first["id"] != second["id"]
    assert sandbox.state.stats()["customers_per_user"] == {"u1": 2}


# -- switches ---------------------------------------------------------------------------------


def test_stripe_5xx_fails_before_executing_so_the_key_stays_usable(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    sandbox.state.set_behaviour("stripe", "stripe_5xx", times=2)
    failures = [create(client, "key-1", email="a@example.com") for _ in range(2)]
    assert [f.status_code for f in failures] == [500, 500]
    assert failures[0].json()["error"]["type"] == "api_error"
    assert failures[0].headers["request-id"].startswith("req_")
    created = create(client, "key-1", email="a@example.com")
    assert created.status_code == 200
    assert "idempotent-replayed" not in created.headers
    assert len(sandbox.state.customers()) == 1


def test_a_500_after_executing_is_kept_under_the_key_and_replayed(
    client: httpx.Client, sandbox: Sandbox
) -> None:
    sandbox.state.set_behaviour("stripe", "stripe_500_after_create", times=1)
    params = {"email": "a@example.com", "metadata[user_id]": "u1"}
    failed = create(client, "key-1", **params)
    assert failed.status_code == 500
    assert failed.json()["error"]["type"] == "api_error"
    assert len(sandbox.state.customers_for("u1")) == 1  # it was created all the same
    replayed = create(client, "key-1", **params)
    assert replayed.status_code == 500
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.content == failed.content
    found = client.get("/v1/customers/search", params={"query": "metadata['user_id']:'u1'"})
    assert [c["id"] for c in found.json()["data"]] == [sandbox.state.customers_for("u1")[0]["id"]]
    assert len(sandbox.state.customers_for("u1")) == 1


def test_search_can_trail_writes_as_stripe_does(client: httpx.Client, sandbox: Sandbox) -> None:
    sandbox.state.set_behaviour("stripe", "stripe_search_lag", ms=400)
    created = create(client, "key-1", email="a@example.com", **{"metadata[user_id]": "u1"})
    query = {"query": "metadata['user_id']:'u1'"}
    assert client.get("/v1/customers/search", params=query).json()["data"] == []
    listed = client.get("/v1/customers", params={"email": "a@example.com"}).json()["data"]
    assert [c["id"] for c in listed] == [created.json()["id"]]  # list is not an index
    time.sleep(0.5)
    found = client.get("/v1/customers/search", params=query).json()["data"]
    assert [c["id"] for c in found] == [created.json()["id"]]


def test_list_refuses_what_stripe_refuses_and_pages(client: httpx.Client) -> None:
    ids = [create(client, email="a@example.com").json()["id"] for _ in range(3)]
    refused = client.get("/v1/customers", params={"metadata[user_id]": "u1"})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "parameter_unknown"
    assert refused.json()["error"]["param"] == "metadata[user_id]"
    first = client.get("/v1/customers", params={"limit": 2}).json()
    assert [c["id"] for c in first["data"]] == ids[::-1][:2]
    assert first["has_more"] is True
    rest = client.get(
        "/v1/customers", params={"limit": 2, "starting_after": first["data"][-1]["id"]}
    ).json()
    assert [c["id"] for c in rest["data"]] == [ids[0]]
    assert rest["has_more"] is False


def test_stripe_5xx_from_the_edge_is_an_html_page(client: httpx.Client, sandbox: Sandbox) -> None:
    sandbox.state.set_behaviour("stripe", "stripe_5xx", status=502, html=1, times=1)
    failed = create(client, "key-1", email="a@example.com")
    assert failed.status_code == 502
    assert failed.headers["content-type"].startswith("text/html")
    assert "502" in failed.text
    assert create(client, "key-1", email="a@example.com").status_code == 200


def test_search_pages_with_next_page(client: httpx.Client) -> None:
    ids = [create(client, email="p@example.com").json()["id"] for _ in range(3)]
    query = {"query": "email:'p@example.com'", "limit": 2}
    first = client.get("/v1/customers/search", params=query).json()
    assert first["has_more"] is True
    assert first["next_page"]
    rest = client.get("/v1/customers/search", params={**query, "page": first["next_page"]}).json()
    assert rest["has_more"] is False
    assert rest["next_page"] is None
    assert sorted(c["id"] for c in first["data"] + rest["data"]) == sorted(ids)
    bad = client.get("/v1/customers/search", params={**query, "page": "nonsense!"})
    assert bad.status_code == 400


def test_stripe_429_is_a_rate_limit(client: httpx.Client) -> None:
    response = client.post(
        "/_sandbox/behaviours",
        json={"target": "stripe", "behaviour": "stripe_429", "params": {"times": 1}},
    )
    assert response.status_code == 200
    limited = client.get("/v1/customers")
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limit"
    assert client.get("/v1/customers").status_code == 200


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


def test_fail_rate_fails_stripe_before_executing() -> None:
    with (
        run_in_thread(SandboxConfig(fail_rate=1.0)) as sandbox,
        httpx.Client(base_url=sandbox.url, headers=AUTH) as client,
    ):
        response = create(client, "key-1", email="a@example.com")
        assert response.status_code == 500
        assert response.json()["error"]["type"] == "api_error"
        assert response.headers["request-id"].startswith("req_")
        assert sandbox.state.customers() == []
