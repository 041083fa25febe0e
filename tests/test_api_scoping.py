"""The API's scoping, in-process (the app ``create_app`` builds, driven through httpx's ASGI
transport over a migrated SQLite file): the caller is the bearer token's ``sub``
(``server/deps.py``), and every per-user route shows and changes the caller's own rows alone:

- status (all, and one provider by name in any case; an unknown provider is a 404);
- history (the caller's events of the kinds shown to users);
- notifications (the caller's own user notifications; marking read only those);
- reconnect (the caller's attempt counted, not another's);
- the live stream's replay after ``Last-Event-ID`` (the caller's status changes alone, sent
  as SSE frames; a header that is not an ASCII number replays nothing).

Tokens are minted with the server's secret (``server/tokens.py``); a token for an audience
or issuer the server expects is checked for them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from discoveryctl.config import Config
from discoveryctl.db.engine import Database
from discoveryctl.integrations import events, lifecycle
from discoveryctl.integrations.vocabulary import Provider, Status
from discoveryctl.server import tokens
from discoveryctl.server.app import create_app

SECRET = "s" * 40
FRONTEND = "https://app.example.com"


class API:
    """The app, called in-process: each request on an event loop of its own, its answer read
    whole (a stream too: the streams here end by themselves)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.raise_app_exceptions = True  # False: as a server answers them, 500

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(
                app=self.app, raise_app_exceptions=self.raise_app_exceptions
            )
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(send())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", path, **kwargs)


Serve = Callable[[], API]


@pytest.fixture
def serve(sqlite_db: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Serve]:
    """``serve()``: the API over the database as it is now (the app is built when called)."""
    monkeypatch.setenv("JWT_SECRET", SECRET)
    monkeypatch.setenv("FRONTEND_URL", FRONTEND)
    apps: list[Any] = []

    def build() -> API:
        app = create_app(Config())
        apps.append(app)
        return API(app)  # no lifespan: the status feed's poller is not needed here

    yield build
    for app in apps:
        app.state.database.dispose()


@pytest.fixture
def sellers(sqlite_db: Any) -> Iterator[Database]:
    """alice on Amazon (revoked, failing: an admin alert about her) and Stripe; bob on Amazon
    (revoked)."""
    database = Database(sqlite_db.url)
    with database.session() as session:
        alice = lifecycle.create(session, "alice", Provider.amazon, Status.active)
        lifecycle.create(session, "alice", Provider.stripe, Status.pending)
        bob = lifecycle.create(session, "bob", Provider.amazon, Status.active)
        for integration in (alice, bob):
            lifecycle.change_status(
                session, integration, Status.revoked, reason="test", frontend_url=FRONTEND
            )
        for _ in range(3):
            lifecycle.record_transient_failure(
                session, alice, error_type="lwa_timeout", message="timed out"
            )
    yield database
    database.dispose()


def bearer(user: str, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.mint(SECRET, user, timedelta(minutes=5), **claims)}"}


def test_status_is_the_caller_s_integrations_only(serve: Serve, sellers: Database) -> None:
    api = serve()
    alice = api.get("/api/v1/integrations/status", headers=bearer("alice")).json()
    assert alice["success"] is True
    assert sorted((d["user_id"], d["provider"]) for d in alice["data"]) == [
        ("alice", "amazon"),
        ("alice", "stripe"),
    ]
    bob = api.get("/api/v1/integrations/status", headers=bearer("bob")).json()["data"]
    assert [(d["user_id"], d["provider"], d["status"]) for d in bob] == [
        ("bob", "amazon", "revoked")
    ]
    nobody = api.get("/api/v1/integrations/status", headers=bearer("carol"))
    assert nobody.json() == {"success": True, "data": []}


def test_one_provider_s_status_is_the_caller_s_by_name_in_any_case(
    serve: Serve, sellers: Database
) -> None:
    api = serve()
    for name in ("amazon", "AMAZON", "Amazon"):
        answer = api.get(f"/api/v1/integrations/status/{name}", headers=bearer("bob"))
        assert answer.status_code == 200, name
        assert (answer.json()["data"]["user_id"], answer.json()["data"]["provider"]) == (
            "bob",
            "amazon",
        )
    missing = api.get("/api/v1/integrations/status/stripe", headers=bearer("bob"))
    assert (missing.status_code, missing.json()) == (
        404,
        {"success": False, "error": "no stripe integration"},
    )  # alice's Stripe integration is never bob's
    unknown = api.get("/api/v1/integrations/status/ebay", headers=bearer("bob"))
    assert (unknown.status_code, unknown.json()) == (
        404,
        {"success": False, "error": "unknown provider 'ebay': amazon or stripe"},
    )


def test_history_is_the_caller_s_events_of_the_kinds_shown_to_users(
    serve: Serve, sellers: Database
) -> None:
    api = serve()
    hers = api.get("/api/v1/integrations/history", headers=bearer("alice")).json()["data"]
    with sellers.session() as session:
        expected = [
            events.view(e)
            for e in events.history(session, user_id="alice", kinds=events.SHOWN_TO_USERS)
        ]
        everything = events.history(session, user_id="alice")
    assert hers == expected and {e["user_id"] for e in hers} == {"alice"}
    assert "notification_created" in {e.kind for e in everything}  # not hers to see
    assert "notification_created" not in {e["kind"] for e in hers}
    his = api.get("/api/v1/integrations/history", headers=bearer("bob")).json()["data"]
    assert his and {e["user_id"] for e in his} == {"bob"}
    stripe = api.get(
        "/api/v1/integrations/history?provider=STRIPE", headers=bearer("alice")
    ).json()["data"]
    assert stripe and {(e["user_id"], e["provider"]) for e in stripe} == {("alice", "stripe")}


def test_notifications_are_the_caller_s_own_and_she_marks_only_those_read(
    serve: Serve, sellers: Database
) -> None:
    api = serve()
    mine = api.get("/api/v1/notifications", headers=bearer("alice")).json()["data"]
    assert mine and {(n["user_id"], n["audience"]) for n in mine} == {("alice", "user")}
    his = api.get("/api/v1/notifications", headers=bearer("bob")).json()["data"]
    assert his and {(n["user_id"], n["audience"]) for n in his} == {("bob", "user")}
    refused = api.post(f"/api/v1/notifications/{his[0]['id']}/read", headers=bearer("alice"))
    assert (refused.status_code, refused.json()) == (
        404,
        {"success": False, "error": f"no notification with id {his[0]['id']}"},
    )
    assert api.get("/api/v1/notifications?unread=true", headers=bearer("bob")).json()["data"] == his
    read = api.post(f"/api/v1/notifications/{mine[0]['id']}/read", headers=bearer("alice"))
    assert read.json() == {"success": True, "data": {"id": mine[0]["id"]}}
    unread = api.get("/api/v1/notifications?unread=true", headers=bearer("alice")).json()
    assert mine[0]["id"] not in {n["id"] for n in unread["data"]}


def test_reconnect_counts_the_caller_s_attempt_only(serve: Serve, sellers: Database) -> None:
    api = serve()
    answer = api.patch("/api/v1/integrations/reconnect/amazon", headers=bearer("bob"))
    assert answer.json() == {
        "success": True,
        "data": {
            "reconnectUrl": f"{FRONTEND}/integrations/amazon/connect?reconnect=true&userId=bob",
            "message": "Redirect to this URL to reconnect your amazon integration",
        },
    }
    with sellers.session() as session:
        attempts = {
            user: (lifecycle.find(session, user, "amazon") or pytest.fail()).meta.get(
                "reconnect_attempts"
            )
            for user in ("alice", "bob")
        }
    assert attempts == {"alice": None, "bob": 1}
    missing = api.patch("/api/v1/integrations/reconnect/stripe", headers=bearer("bob"))
    assert (missing.status_code, missing.json()["error"]) == (404, "no stripe integration")


def test_without_a_good_token_no_route_answers(serve: Serve, sellers: Database) -> None:
    api = serve()
    wrong_secret = tokens.mint("x" * 40, "alice", timedelta(minutes=5))
    for headers, reason in (
        ({}, "missing bearer token"),
        ({"Authorization": f"Bearer {wrong_secret}"}, "token signature does not verify"),
    ):
        for method, path in (
            ("GET", "/api/v1/integrations/status"),
            ("GET", "/api/v1/integrations/history"),
            ("GET", "/api/v1/notifications"),
            ("PATCH", "/api/v1/integrations/reconnect/amazon"),
            ("GET", "/api/v1/integrations/events"),
        ):
            answer = api.request(method, path, headers=headers)
            assert (answer.status_code, answer.json()) == (
                401,
                {"success": False, "error": reason},
            ), path


def test_an_unexpected_failure_is_a_500_without_details_and_logged(
    serve: Serve, sellers: Database, sqlite_db: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    with sqlite_db.engine.begin() as connection:  # a row no notification can be read from
        connection.exec_driver_sql("UPDATE notifications SET detail = 'not json'")
    api = serve()
    api.raise_app_exceptions = False
    answer = api.get("/api/v1/notifications", headers=bearer("alice"))
    assert (answer.status_code, answer.json()) == (
        500,
        {"success": False, "error": "internal error"},
    )
    out, err = capfd.readouterr()  # where structlog writes depends on how it was set up
    [logged] = [line for line in (out + err).splitlines() if "api_error" in line]
    assert "/api/v1/notifications" in logged and "JSONDecodeError" in logged


def test_the_server_s_audience_and_issuer_are_required_of_a_token(
    serve: Serve, sellers: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JWT_AUDIENCE", "discovery-web")
    monkeypatch.setenv("JWT_ISSUER", "https://auth.example.com")
    api = serve()
    url = "/api/v1/integrations/status"
    expected = {"audience": "discovery-web", "issuer": "https://auth.example.com"}
    assert api.get(url, headers=bearer("alice", **expected)).status_code == 200
    for claims, reason in (
        ({"issuer": "https://auth.example.com"}, "token has no 'aud' claim"),
        ({"audience": "discovery-web"}, "token has no 'iss' claim"),
    ):
        answer = api.get(url, headers=bearer("alice", **claims))
        assert (answer.status_code, answer.json()["error"]) == (401, reason)


def test_openapi_names_the_bearer_scheme_on_the_per_user_routes(serve: Serve) -> None:
    spec = serve().get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An HS256 JWT whose `sub` is the user.",
    }
    for path in (
        "/api/v1/integrations/status",
        "/api/v1/integrations/history",
        "/api/v1/notifications",
        "/api/v1/integrations/events",
    ):
        assert spec["paths"][path]["get"]["security"] == [{"HTTPBearer": []}], path


def ending(user: str) -> dict[str, str]:
    """A token that expired 10 s ago, within the leeway: the stream opens, replays what the
    caller missed, and ends at once with ``event: expired``."""
    minted = tokens.mint(
        SECRET, user, timedelta(seconds=10), now=datetime.now(UTC) - timedelta(seconds=20)
    )
    return {"Authorization": f"Bearer {minted}"}


def stream(api: API, user: str, last_event_id: str | bytes | None) -> str:
    headers: dict[str, Any] = ending(user)
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    answer = api.get("/api/v1/integrations/events", headers=headers)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    return answer.text


EXPIRED = 'event: expired\ndata: {"error": "token expired"}\n\n'


def status_changes(database: Database, user: str) -> list[Any]:
    with database.session() as session:
        return list(events.status_changes_of(session, user, after=0))


def test_a_resumed_stream_replays_the_caller_s_status_changes_only(
    serve: Serve, sellers: Database
) -> None:
    with sellers.session() as session:  # two more changes of alice's, one of bob's
        for user, status in (("alice", Status.active), ("bob", Status.active)):
            found = lifecycle.find(session, user, "amazon")
            assert found is not None
            lifecycle.change_status(session, found, status, reason="back", frontend_url=FRONTEND)
        alice = lifecycle.find(session, "alice", "amazon")
        assert alice is not None
        lifecycle.change_status(session, alice, Status.expired, reason="old", frontend_url=FRONTEND)
    hers = status_changes(sellers, "alice")
    assert len(hers) == 3
    api = serve()
    replayed = stream(api, "alice", str(hers[0].id))
    frames = [
        f"id: {change.id}\nevent: status\n"
        f"data: {json.dumps(events.status_change_view(change), separators=(',', ':'))}\n\n"
        for change in hers[1:]
    ]
    assert replayed == "".join(frames) + EXPIRED
    data = [json.loads(line[6:]) for line in replayed.splitlines() if line.startswith("data: {")]
    assert [(d["previous_status"], d["status"]) for d in data[:2]] == [
        ("revoked", "active"),
        ("active", "expired"),
    ]
    his = stream(api, "bob", " 0 ")
    assert [line for line in his.splitlines() if line.startswith("id: ")] == [
        f"id: {change.id}" for change in status_changes(sellers, "bob")
    ]


def test_a_last_event_id_that_is_not_an_ascii_number_replays_nothing(
    serve: Serve, sellers: Database
) -> None:
    api = serve()
    assert stream(api, "alice", None) == EXPIRED
    for header in ("", "abc", "-1", "1.5", b"\xb2"):  # b"\xb2": "²", a digit, not ASCII
        assert stream(api, "alice", header) == EXPIRED, header
    assert stream(api, "alice", "0").startswith("id: ")
