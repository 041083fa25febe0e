"""The HTTP API (`serve`) on a real uvicorn server: its endpoints and shapes, JWT bearer
auth in every way a token can be wrong, and one user never reaching another's rows."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from api_server import serving

from discoveryctl.integrations.events import SHOWN_TO_USERS
from discoveryctl.integrations.vocabulary import Status

from helpers import SEED_FIELDS, amazon_line, fail_transiently, set_status, stripe_line, write_lines

SECRET = "s" * 40


@pytest.fixture
def api(db: Any, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("JWT_SECRET", SECRET)
    monkeypatch.setenv("FRONTEND_URL", "https://app.example.com")
    lines = [amazon_line("alice"), stripe_line("alice"), amazon_line("bob")]
    assert cli("import", str(write_lines(tmp_path / "in.jsonl", *lines))).exit_code == 0
    with serving() as url:
        yield url


def token(user: str, **claims: Any) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + 600, **claims}, SECRET, "HS256")


def get(url: str, user: str | None = None, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token(user)}"} if user else {}
    return httpx.get(url, headers=headers, **kwargs)


def test_status_of_one_provider_is_the_seed_shape(api: str) -> None:
    answer = get(f"{api}/api/v1/integrations/status/amazon", "alice")
    assert answer.status_code == 200
    body = answer.json()
    assert body["success"] is True
    data = body["data"]
    assert set(data) == SEED_FIELDS
    assert (data["user_id"], data["provider"], data["status"]) == ("alice", "amazon", "active")
    assert data["updated_at"].endswith("Z")
    assert data["message"].startswith("Your amazon integration")
    assert get(f"{api}/api/v1/integrations/status/AMAZON", "alice").status_code == 200


def test_all_statuses_are_the_caller_s_only(api: str) -> None:
    alice = get(f"{api}/api/v1/integrations/status", "alice").json()
    assert alice["success"] is True
    assert sorted((d["user_id"], d["provider"]) for d in alice["data"]) == [
        ("alice", "amazon"),
        ("alice", "stripe"),
    ]
    bob = get(f"{api}/api/v1/integrations/status", "bob").json()["data"]
    assert [(d["user_id"], d["provider"]) for d in bob] == [("bob", "amazon")]
    assert get(f"{api}/api/v1/integrations/status", "carol").json() == {
        "success": True,
        "data": [],
    }
    # bob has no Stripe integration: alice's is never his
    missing = get(f"{api}/api/v1/integrations/status/stripe", "bob")
    assert missing.status_code == 404
    assert missing.json() == {"success": False, "error": "no stripe integration"}


def test_reconnect_counts_the_attempt_for_the_caller_only(api: str, db: Any) -> None:
    set_status(db.url, "bob", Status.revoked)
    answer = httpx.patch(
        f"{api}/api/v1/integrations/reconnect/amazon",
        headers={"Authorization": f"Bearer {token('bob')}"},
    )
    assert answer.status_code == 200
    assert answer.json() == {
        "success": True,
        "data": {
            "reconnectUrl": (
                "https://app.example.com/integrations/amazon/connect?reconnect=true&userId=bob"
            ),
            "message": "Redirect to this URL to reconnect your amazon integration",
        },
    }
    attempts = {
        r["user_id"]: json.loads(r["metadata"]) if isinstance(r["metadata"], str) else r["metadata"]
        for r in db.rows(
            "SELECT user_id, metadata FROM integration_status WHERE provider = 'amazon'"
        )
    }
    assert attempts["bob"]["reconnect_attempts"] == 1
    assert "reconnect_attempts" not in attempts["alice"]
    mine = httpx.patch(
        f"{api}/api/v1/integrations/reconnect/amazon",
        headers={"Authorization": f"Bearer {token('alice')}"},
    )
    assert mine.json()["data"]["reconnectUrl"].endswith("&userId=alice")
    counted = db.rows(
        "SELECT user_id, metadata FROM integration_status"
        " WHERE provider = 'amazon' ORDER BY user_id"
    )
    assert [
        (r["metadata"] if isinstance(r["metadata"], dict) else json.loads(r["metadata"]))[
            "reconnect_attempts"
        ]
        for r in counted
    ] == [1, 1]
    status = get(f"{api}/api/v1/integrations/status/amazon", "bob").json()["data"]
    assert status["status"] == "revoked"


def test_an_unknown_provider_is_a_404_in_the_same_shape(api: str) -> None:
    for method in ("GET", "PATCH"):
        path = "status" if method == "GET" else "reconnect"
        answer = httpx.request(
            method,
            f"{api}/api/v1/integrations/{path}/ebay",
            headers={"Authorization": f"Bearer {token('alice')}"},
        )
        assert answer.status_code == 404
        assert answer.json() == {
            "success": False,
            "error": "unknown provider 'ebay': amazon or stripe",
        }


def _unsigned(user: str) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    now = int(time.time())
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'sub': user, 'exp': now + 600})}."


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (None, "missing bearer token"),
        ("Basic YWxpY2U6eA==", "the Authorization header is not 'Bearer <token>'"),
        ("Bearer", "the Authorization header is not 'Bearer <token>'"),
        ("Bearer not.a.token", "malformed token"),
        ("Bearer " + _unsigned("alice"), "token not signed with HS256"),
        (
            "Bearer " + jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, "x" * 40),
            "token signature does not verify",
        ),
        (
            "Bearer " + jwt.encode({"sub": "alice", "exp": int(time.time()) - 120}, SECRET),
            "token expired",
        ),
        ("Bearer " + jwt.encode({"sub": "alice"}, SECRET), "token has no 'exp' claim"),
        (
            "Bearer " + jwt.encode({"exp": int(time.time()) + 600}, SECRET),
            "token has no 'sub' claim",
        ),
        (
            "Bearer "
            + jwt.encode(
                {
                    "sub": "alice",
                    "exp": int(time.time()) + 600,
                    "aud": "discoveryctl:amazon-consent",
                },
                SECRET,
            ),
            "token is for another audience",
        ),
        (
            "Bearer " + jwt.encode({"sub": "a\u202eb", "exp": int(time.time()) + 600}, SECRET),
            "token's 'sub' is not a valid user id",
        ),
    ],
    ids=lambda value: value if value is None or "Bearer " not in value else "token",
)
def test_every_bad_token_is_a_401_in_json(api: str, authorization: str | None, reason: str) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for path in ("status", "status/amazon"):
        answer = httpx.get(f"{api}/api/v1/integrations/{path}", headers=headers)
        assert answer.status_code == 401
        assert answer.json() == {"success": False, "error": reason}
        assert answer.headers["WWW-Authenticate"] == "Bearer"


def test_a_token_just_expired_is_within_the_leeway(api: str) -> None:
    fresh = jwt.encode({"sub": "alice", "exp": int(time.time()) - 5}, SECRET)
    answer = httpx.get(
        f"{api}/api/v1/integrations/status", headers={"Authorization": f"Bearer {fresh}"}
    )
    assert answer.status_code == 200


def test_health_needs_no_token_and_every_error_is_json(api: str) -> None:
    answer = httpx.get(f"{api}/health")
    assert answer.status_code == 200
    assert answer.json()["success"] is True
    assert answer.json()["data"]["status"] == "ok"
    nowhere = httpx.get(f"{api}/api/v1/nowhere")
    assert nowhere.status_code == 404
    assert nowhere.json() == {"success": False, "error": "Not Found"}
    wrong = httpx.delete(f"{api}/api/v1/integrations/status")
    assert wrong.status_code == 405
    assert wrong.json()["success"] is False


def test_openapi_names_every_route_and_its_bearer_auth(api: str) -> None:
    spec = httpx.get(f"{api}/openapi.json").json()
    assert set(spec["paths"]) == {
        "/health",
        "/api/v1/integrations/status",
        "/api/v1/integrations/status/{provider}",
        "/api/v1/integrations/reconnect/{provider}",
        "/api/v1/integrations/events",
        "/api/v1/integrations/amazon/connect",
        "/api/v1/integrations/amazon/login",
        "/api/v1/integrations/amazon/authorize",
        "/api/v1/integrations/amazon/callback",
        "/api/v1/integrations/history",
        "/api/v1/notifications",
        "/api/v1/notifications/{notification_id}/read",
    }
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    status = spec["paths"]["/api/v1/integrations/status"]["get"]
    assert status["security"] == [{"HTTPBearer": []}]
    assert "401" in status["responses"]
    assert "security" not in spec["paths"]["/health"]["get"]
    stream = spec["paths"]["/api/v1/integrations/events"]["get"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    assert stream["security"] == [{"HTTPBearer": []}]
    assert spec["paths"]["/api/v1/integrations/amazon/connect"]["get"]["security"] == [
        {"HTTPBearer": []}
    ]
    assert spec["paths"]["/api/v1/integrations/amazon/authorize"]["post"]["security"] == [
        {"HTTPBearer": []}
    ]
    assert set(spec["paths"]["/api/v1/integrations/amazon/login"]) == {"get", "post"}
    for browser_only in ("login", "callback"):  # Amazon sends the browser: no token
        route = spec["paths"][f"/api/v1/integrations/amazon/{browser_only}"]["get"]
        assert "security" not in route and "302" in route["responses"]


def test_token_mint_prints_a_token_the_api_takes(
    api: str, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    minted = cli("token", "mint", "--user", "alice", "--ttl", "15m")
    assert minted.exit_code == 0, minted.stderr
    value = minted.stdout.strip()
    claims = jwt.decode(value, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert 14 * 60 <= claims["exp"] - time.time() <= 15 * 60
    answer = httpx.get(
        f"{api}/api/v1/integrations/status", headers={"Authorization": f"Bearer {value}"}
    )
    assert [d["user_id"] for d in answer.json()["data"]] == ["alice", "alice"]
    assert cli("token", "mint", "--user", "a\u202eb").exit_code == 2
    assert cli("token", "mint", "--user", "alice", "--ttl", "soon").exit_code == 2


def test_audience_and_issuer_are_checked_when_set(
    db: Any, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JWT_SECRET", SECRET)
    monkeypatch.setenv("JWT_AUDIENCE", "discovery-web")
    monkeypatch.setenv("JWT_ISSUER", "https://auth.example.com")
    assert (
        cli("import", str(write_lines(tmp_path / "in.jsonl", amazon_line("alice")))).exit_code == 0
    )
    minted = cli("token", "mint", "--user", "alice").stdout.strip()
    with serving() as api:
        url = f"{api}/api/v1/integrations/status"
        ok = httpx.get(url, headers={"Authorization": f"Bearer {minted}"})
        assert ok.status_code == 200
        for claims, reason in (
            ({"iss": "https://auth.example.com"}, "token has no 'aud' claim"),
            ({"aud": "discovery-web"}, "token has no 'iss' claim"),
            (
                {"aud": "discovery-web", "iss": "https://other.example.com"},
                "token is from another issuer",
            ),
            ({"aud": "other", "iss": "https://auth.example.com"}, "token is for another audience"),
        ):
            bad = httpx.get(url, headers={"Authorization": f"Bearer {token('alice', **claims)}"})
            assert (bad.status_code, bad.json()["error"]) == (401, reason), claims


def test_access_log_never_shows_a_token_or_a_query(
    api: str, capfd: pytest.CaptureFixture[str]
) -> None:
    value = token("alice")
    httpx.get(
        f"{api}/api/v1/integrations/status?code=secret-code-123",
        headers={"Authorization": f"Bearer {value}"},
    )
    time.sleep(0.1)
    err = capfd.readouterr().err
    assert "api_request" in err and "/api/v1/integrations/status" in err
    assert value not in err and "secret-code-123" not in err


def test_minted_tokens_expire(cli: Any, db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_SECRET", SECRET)
    value = cli("token", "mint", "--user", "alice", "--ttl", "1h").stdout.strip()
    claims = jwt.decode(value, SECRET, algorithms=["HS256"])
    assert datetime.fromtimestamp(claims["exp"], UTC) - datetime.now(UTC) <= timedelta(hours=1)


def test_history_and_notifications_are_the_cli_s_objects_for_the_caller_only(
    api: str, db: Any, cli: Any
) -> None:
    set_status(db.url, "alice", Status.revoked)
    set_status(db.url, "bob", Status.revoked)
    fail_transiently(db.url, "alice", 3)  # an admin alert about alice: not hers to see

    history = get(f"{api}/api/v1/integrations/history", "alice").json()
    assert history["success"] is True
    everything = cli("events", "--user", "alice", "--json").json()
    assert history["data"] == [e for e in everything if e["kind"] in SHOWN_TO_USERS]
    assert {e["user_id"] for e in history["data"]} == {"alice"}
    assert "status_changed" in {e["kind"] for e in history["data"]}
    his = get(f"{api}/api/v1/integrations/history", "bob").json()["data"]
    assert his and {e["user_id"] for e in his} == {"bob"}
    # the operators' side of it (here: the admin alert about alice) is not hers to read
    assert "notification_created" in {e["kind"] for e in everything}
    assert "notification_created" not in {e["kind"] for e in history["data"]}
    stripe = get(f"{api}/api/v1/integrations/history?provider=stripe", "alice").json()["data"]
    assert stripe and {e["provider"] for e in stripe} == {"stripe"}
    assert len(get(f"{api}/api/v1/integrations/history?limit=1", "alice").json()["data"]) == 1

    mine = get(f"{api}/api/v1/notifications", "alice").json()["data"]
    assert mine == cli("notifications", "--user", "alice", "--json").json()
    assert mine and {(n["user_id"], n["audience"]) for n in mine} == {("alice", "user")}
    assert cli("notifications", "--admin", "--json").json()  # the admin alert is there

    bobs = cli("notifications", "--user", "bob", "--json").json()
    assert get(f"{api}/api/v1/notifications", "bob").json()["data"] == bobs
    alice = {"Authorization": f"Bearer {token('alice')}"}
    refused = httpx.post(f"{api}/api/v1/notifications/{bobs[0]['id']}/read", headers=alice)
    assert refused.status_code == 404
    assert refused.json() == {"success": False, "error": f"no notification with id {bobs[0]['id']}"}
    assert cli("notifications", "--user", "bob", "--unread", "--json").json() == bobs

    read = httpx.post(f"{api}/api/v1/notifications/{mine[0]['id']}/read", headers=alice)
    assert read.json() == {"success": True, "data": {"id": mine[0]["id"]}}
    unread = get(f"{api}/api/v1/notifications?unread=true", "alice").json()["data"]
    assert mine[0]["id"] not in {n["id"] for n in unread}
    assert cli("notifications", "--user", "alice", "--json").json()[0]["read_at"] is not None


def test_a_user_marks_only_her_own_notifications_read(api: str, db: Any, cli: Any) -> None:
    """Not an admin notification, even one about her, and not another user's: each is as
    unknown to her as a missing one, and stays unread for those it is addressed to."""
    set_status(db.url, "alice", Status.revoked)
    set_status(db.url, "bob", Status.revoked)
    fail_transiently(db.url, "alice", 3)  # an admin alert about alice
    admins = cli("notifications", "--admin", "--json").json()
    about_alice = [n for n in admins if n["user_id"] == "alice"]
    assert about_alice and about_alice[0]["audience"] == "admin"
    bobs = cli("notifications", "--user", "bob", "--json").json()
    assert bobs and bobs[0]["audience"] == "user"
    alice = {"Authorization": f"Bearer {token('alice')}"}

    for other in (about_alice[0]["id"], bobs[0]["id"]):
        refused = httpx.post(f"{api}/api/v1/notifications/{other}/read", headers=alice)
        assert refused.status_code == 404
        assert refused.json() == {"success": False, "error": f"no notification with id {other}"}
    assert cli("notifications", "--admin", "--unread", "--json").json() == admins
    assert cli("notifications", "--user", "bob", "--unread", "--json").json() == bobs
    assert db.scalar("SELECT count(*) FROM notifications WHERE read_at IS NOT NULL") == 0

    hers = cli("notifications", "--user", "alice", "--json").json()
    read = httpx.post(f"{api}/api/v1/notifications/{hers[0]['id']}/read", headers=alice)
    assert read.json() == {"success": True, "data": {"id": hers[0]["id"]}}
    assert db.scalar("SELECT count(*) FROM notifications WHERE read_at IS NOT NULL") == 1


def test_a_database_failure_is_its_kind_s_error_in_json(api: str, db: Any) -> None:
    with db.engine.begin() as connection:  # the table gone under a running server
        connection.exec_driver_sql("ALTER TABLE integration_status RENAME TO gone")
    answer = get(f"{api}/api/v1/integrations/status", "alice")
    assert answer.status_code in (500, 503)
    body = answer.json()
    assert body["success"] is False
    assert "integration_status" in body["error"]  # the database's own words, not a traceback
    health = httpx.get(f"{api}/health")
    assert health.status_code == 200  # the schema's revision is still the head's
