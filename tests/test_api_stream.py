"""`GET /api/v1/integrations/events`: the caller's status changes as Server-Sent Events, written
by the CLI in another process, resumed from Last-Event-ID, ended when the token expires."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from api_server import serving

from discoveryctl.sandbox import Sandbox

from helpers import import_sellers

SECRET = "s" * 40


def token(user: str, ttl: float = 600) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time() + ttl)}, SECRET, "HS256")


@dataclass
class Stream:
    """An open stream, read in a thread: its events (and comments) arrive in ``items``."""

    status: int = 0
    items: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    ended: threading.Event = field(default_factory=threading.Event)

    def next(self, timeout: float) -> dict[str, Any]:
        return self.items.get(timeout=timeout)

    def events(self, kind: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            item = self.next(max(0.01, deadline - time.monotonic()))
            if item.get("event") == kind:
                return item


@pytest.fixture
def listen() -> Iterator[Any]:
    clients: list[httpx.Client] = []

    def open_stream(url: str, headers: dict[str, str]) -> Stream:
        stream = Stream()
        ready = threading.Event()
        client = httpx.Client(timeout=httpx.Timeout(5, read=30))
        clients.append(client)

        def read() -> None:
            try:
                with client.stream("GET", url, headers=headers) as response:
                    stream.status = response.status_code
                    ready.set()
                    item: dict[str, Any] = {}
                    for line in response.iter_lines():
                        if not line:
                            if item:
                                stream.items.put(item)
                            item = {}
                        elif line.startswith(":"):
                            stream.items.put({"comment": line[1:].strip()})
                        else:
                            name, _, value = line.partition(":")
                            item[name] = value.strip()
            except httpx.HTTPError:
                pass
            finally:
                ready.set()
                stream.ended.set()

        threading.Thread(target=read, daemon=True).start()
        assert ready.wait(10)
        return stream

    yield open_stream
    for client in clients:
        client.close()


@pytest.fixture
def sellers(
    db: Any, cli: Any, sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> list[Any]:
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("JWT_SECRET", SECRET)
    return import_sellers(cli, sandbox, tmp_path, 2)


def _refresh_in_another_process(user: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "discoveryctl", "refresh", "amazon", "--user", user],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr  # revoked


def test_a_change_made_by_the_cli_elsewhere_reaches_the_stream_within_2_s(
    sellers: list[Any], sandbox: Sandbox, listen: Any
) -> None:
    with serving() as api:
        url = f"{api}/api/v1/integrations/events"
        mine = listen(url, {"Authorization": f"Bearer {token('u0')}"})
        other = listen(url, {"Authorization": f"Bearer {token('u1')}"})
        assert mine.status == 200
        sandbox.state.revoke(sellers[0].selling_partner_id)
        _refresh_in_another_process("u0")
        written = time.monotonic()
        change = mine.events("status", timeout=2)
        assert time.monotonic() - written < 2
        data = json.loads(change["data"])
        assert data["provider"] == "amazon"
        assert (data["previous_status"], data["status"]) == ("active", "revoked")
        assert data["message"].startswith("Your amazon")
        assert int(change["id"]) > 0
        time.sleep(1.2)  # two more ticks: u1 hears nothing of u0's change
        assert all(i.get("event") != "status" for i in list(other.items.queue))


def test_last_event_id_resumes_after_the_last_change_seen(
    sellers: list[Any], sandbox: Sandbox, listen: Any
) -> None:
    with serving(keepalive=0.3) as api:
        url = f"{api}/api/v1/integrations/events"
        auth = {"Authorization": f"Bearer {token('u0')}"}
        sandbox.state.revoke(sellers[0].selling_partner_id)
        _refresh_in_another_process("u0")  # while no stream is open
        missed = listen(url, {**auth, "Last-Event-ID": "0"}).events("status", timeout=5)
        assert json.loads(missed["data"])["status"] == "revoked"
        caught_up = listen(url, {**auth, "Last-Event-ID": missed["id"]})
        assert caught_up.next(timeout=5) == {"comment": "keep-alive"}  # nothing before it


def test_last_event_id_replays_the_caller_s_changes_only(
    db: Any, sellers: list[Any], listen: Any
) -> None:
    last = int(db.scalar("SELECT max(id) FROM events"))
    _write_change(db, last + 1, "u1", "revoked")  # another user's, after the id resumed from
    _write_change(db, last + 2, "u0", "expired")
    with serving(keepalive=0.3) as api:  # written before: only the replay can send them
        resumed = listen(
            f"{api}/api/v1/integrations/events",
            {"Authorization": f"Bearer {token('u0')}", "Last-Event-ID": str(last)},
        )
        replayed = resumed.next(timeout=5)
        assert (replayed.get("event"), replayed.get("id")) == ("status", str(last + 2))
        assert json.loads(replayed["data"])["status"] == "expired"
        assert resumed.next(timeout=5) == {"comment": "keep-alive"}  # and nothing else


def test_anonymous_and_bad_tokens_are_refused_before_any_event(
    sellers: list[Any], listen: Any
) -> None:
    with serving() as api:
        url = f"{api}/api/v1/integrations/events"
        answer = httpx.get(url)
        assert answer.status_code == 401
        assert answer.headers["content-type"] == "application/json"
        assert answer.json() == {"success": False, "error": "missing bearer token"}
        forged = jwt.encode({"sub": "u0", "exp": int(time.time()) + 600}, "f" * 40, "HS256")
        refused = httpx.get(url, headers={"Authorization": f"Bearer {forged}"})
        assert refused.status_code == 401


def test_the_stream_ends_when_its_token_expires(sellers: list[Any], listen: Any) -> None:
    with serving(keepalive=0.5) as api:
        began = time.monotonic()
        stream = listen(
            f"{api}/api/v1/integrations/events", {"Authorization": f"Bearer {token('u0', 2)}"}
        )
        assert stream.status == 200
        ended = stream.events("expired", timeout=6)
        assert json.loads(ended["data"]) == {"error": "token expired"}
        assert stream.ended.wait(3)
        assert 1 <= time.monotonic() - began < 5


def _write_change(db: Any, event_id: int, user: str, to: str) -> None:
    """A status change written as another process commits it, with the id it was given."""
    import sqlalchemy as sa

    from discoveryctl.db.models import Event, table_of

    row = {
        "id": event_id,
        "occurred_at": datetime.now(UTC),
        "user_id": user,
        "provider": "amazon",
        "kind": "status_changed",
        "outcome": "failure",
        "detail": {"from": "active", "to": to, "reason": "test"},
    }
    with db.engine.begin() as connection:
        connection.execute(sa.insert(table_of(Event)), [row])


def test_a_change_whose_id_shows_up_late_is_still_streamed(
    db: Any, sellers: list[Any], listen: Any
) -> None:
    with serving() as api:
        stream = listen(
            f"{api}/api/v1/integrations/events", {"Authorization": f"Bearer {token('u0')}"}
        )
        time.sleep(0.7)  # the poller has read up to here
        last = int(db.scalar("SELECT max(id) FROM events"))
        _write_change(db, last + 2, "u0", "revoked")  # committed first
        first = stream.events("status", timeout=3)
        _write_change(db, last + 1, "u0", "expired")  # a slower transaction's, committed after
        late = stream.events("status", timeout=3)
    assert (int(first["id"]), json.loads(first["data"])["status"]) == (last + 2, "revoked")
    assert (int(late["id"]), json.loads(late["data"])["status"]) == (last + 1, "expired")


def test_the_stream_outlives_a_database_failure(
    db: Any, sellers: list[Any], sandbox: Sandbox, listen: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    """The poller's reads fail for a while (the table gone, as a database gone away would
    make them): it says so in the log, keeps polling, and streams the next change."""
    with serving() as api:
        stream = listen(
            f"{api}/api/v1/integrations/events", {"Authorization": f"Bearer {token('u0')}"}
        )
        with db.engine.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE events RENAME TO events_away")
        time.sleep(1.2)  # two failed polls
        with db.engine.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE events_away RENAME TO events")
        assert "status_feed_poll_failed" in capfd.readouterr().err
        sandbox.state.revoke(sellers[0].selling_partner_id)
        _refresh_in_another_process("u0")
        assert json.loads(stream.events("status", timeout=5)["data"])["status"] == "revoked"
