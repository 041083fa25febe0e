"""The admin alert webhook: each admin notification is POSTed, signed, when it opens and when it
resolves, once each, to a receiver on a real socket; retried on 5xx and network errors; never
failing the command that raised it; delivered once when two processes drain at the same time."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from webhook_receiver import Receiver, receiving

from discoveryctl.alerts import delivery, signing
from discoveryctl.db.engine import Database, lock_for_writing
from discoveryctl.db.leases import ALERT_DELIVERIES
from discoveryctl.integrations import notifications, outbox
from discoveryctl.sandbox import Sandbox

from helpers import fail_transiently, import_sellers

SECRET = "whsec-test-0123456789abcdef"


@contextmanager
def closed_port() -> Iterator[str]:
    """A webhook URL on a port bound and held, where nothing listens: every connection is
    refused, and no other test can start a server there meanwhile."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{held.getsockname()[1]}/services/T000/B000/secret-token"


def raise_alert(url: str, user: str = "u1", kind: str = "repeated_failures") -> int:
    """Open an admin notification, as the core does when it raises an alert."""
    database = Database(url)
    with database.session() as session:
        opened, created = notifications.notify(
            session,
            audience=notifications.ADMIN,
            kind=kind,
            title="Amazon failing repeatedly",
            message=f"3 consecutive lwa_timeout failures for user {user}: timed out after 10s",
            user_id=user,
            provider="amazon",
            detail={"consecutive_failures": 3},
        )
        assert created
        notification_id = opened.id
    database.dispose()
    outbox.take_queued_here()  # as if raised by another process
    return notification_id


def resolve_alert(url: str, user: str = "u1", kind: str = "repeated_failures") -> None:
    database = Database(url)
    with database.session() as session:
        assert notifications.resolve(session, notifications.dedupe_key(kind, "amazon", user)) == 1
    database.dispose()
    outbox.take_queued_here()


def expected_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The signature computed here from the scheme alone, not with the code under test."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def signature_parts(received: Any) -> dict[str, str]:
    header = received.headers["Discovery-Signature"]
    return dict(item.split("=", 1) for item in header.split(","))


def deliveries(db: Any) -> list[dict[str, Any]]:
    return db.rows("SELECT * FROM alert_deliveries ORDER BY id")


@pytest.fixture
def amazon(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    """The sandbox, with discoveryctl's settings pointing at it."""
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    return sandbox


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Any:
    with receiving() as receiver:
        monkeypatch.setenv("DISCOVERY_ADMIN_WEBHOOK_URL", receiver.url)
        monkeypatch.setenv("DISCOVERY_ADMIN_WEBHOOK_SECRET", SECRET)
        yield receiver


def test_an_alert_is_posted_signed_when_it_opens_and_once_more_when_it_resolves(
    db: Any, cli: Any, webhook: Receiver
) -> None:
    notification_id = raise_alert(db.url)
    first = cli("notifications", "deliver", "--json")
    assert first.exit_code == 0, first.stderr
    assert first.json()["delivered"] == 1
    assert first.json()["webhook"] == webhook.url.split("/services")[0]  # never the token path
    [opened] = webhook.received
    body = opened.json()
    assert body["state"] == "open"
    assert body["text"] == (
        ":rotating_light: Amazon failing repeatedly: 3 consecutive lwa_timeout failures for "
        "user u1: timed out after 10s"
    )
    assert body["alert"]["id"] == notification_id
    assert body["alert"]["kind"] == "repeated_failures"
    assert body["alert"]["user_id"] == "u1"
    assert body["alert"]["detail"] == {"consecutive_failures": 3}
    assert body["alert"]["resolved_at"] is None
    assert opened.headers["Discovery-Delivery"] == body["delivery_id"]
    assert opened.headers["Content-Type"] == "application/json"
    parts = signature_parts(opened)
    assert parts["v1"] == expected_signature(SECRET, parts["t"], opened.body)
    assert abs(int(parts["t"]) - time.time()) < 60

    assert cli("notifications", "deliver").exit_code == 0  # nothing new: nothing sent
    assert len(webhook.received) == 1

    resolve_alert(db.url)
    assert cli("notifications", "deliver").exit_code == 0
    assert cli("notifications", "deliver").exit_code == 0
    [_, resolved] = webhook.received
    again = resolved.json()
    assert again["state"] == "resolved"
    assert again["text"] == ":white_check_mark: Resolved: Amazon failing repeatedly (user u1)"
    assert again["alert"]["id"] == notification_id
    assert again["alert"]["resolved_at"] is not None
    assert again["delivery_id"] != body["delivery_id"]
    assert [(d["state"], d["outcome"], d["attempts"]) for d in deliveries(db)] == [
        ("open", "delivered", 1),
        ("resolved", "delivered", 1),
    ]


def test_a_wrong_secret_a_changed_body_or_an_old_signature_fails_verification(
    db: Any, cli: Any, webhook: Receiver
) -> None:
    raise_alert(db.url)
    assert cli("notifications", "deliver").exit_code == 0
    [received] = webhook.received
    header = received.headers["Discovery-Signature"]
    now = time.time()
    assert signing.verify(SECRET, header, received.body, now=now)
    assert not signing.verify("another-secret", header, received.body, now=now)
    assert not signing.verify(SECRET, header, received.body + b" ", now=now)
    assert not signing.verify(SECRET, header, received.body, now=now + 301)
    assert not signing.verify(SECRET, "v1=" + "0" * 64, received.body, now=now)
    parts = signature_parts(received)
    assert parts["v1"] != expected_signature("another-secret", parts["t"], received.body)


def test_without_a_secret_alerts_go_unsigned(
    db: Any, cli: Any, webhook: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISCOVERY_ADMIN_WEBHOOK_SECRET")
    raise_alert(db.url)
    assert cli("notifications", "deliver").exit_code == 0
    [received] = webhook.received
    assert "Discovery-Signature" not in received.headers


def test_a_500_is_retried_with_the_same_delivery_and_body(
    db: Any, cli: Any, webhook: Receiver
) -> None:
    raise_alert(db.url)
    webhook.statuses = [500]
    result = cli("notifications", "deliver", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["delivered"] == 1
    failed, delivered = webhook.received
    assert failed.body == delivered.body
    assert failed.headers["Discovery-Delivery"] == delivered.headers["Discovery-Delivery"]
    [row] = deliveries(db)
    assert (row["outcome"], row["attempts"]) == ("delivered", 2)


def drain(db: Any, webhook: Receiver, **options: Any) -> tuple[delivery.Drained, list[float]]:
    """One drain in this process, its waits between posts recorded rather than slept."""
    waits: list[float] = []
    database = Database(db.url)
    try:
        drained = delivery.deliver(
            database.session,
            delivery.AdminWebhook(webhook.url, SECRET),
            sleep=waits.append,
            **options,
        )
    finally:
        database.dispose()
    return drained, waits


@pytest.mark.parametrize("status", [408, 429, 500, 503])
def test_a_quick_failure_is_posted_again_at_once_half_a_second_then_up_to_a_second_later(
    db: Any, webhook: Receiver, status: int
) -> None:
    raise_alert(db.url)
    webhook.statuses = [status, status]
    drained, waits = drain(db, webhook)
    assert (drained.delivered, drained.later) == (1, 0)
    assert len(webhook.received) == 3
    assert len({r.headers["Discovery-Delivery"] for r in webhook.received}) == 1
    [row] = deliveries(db)
    assert (row["outcome"], row["attempts"]) == ("delivered", 3)
    assert waits[0] == 0.5 and 0.5 <= waits[1] <= 1.0 and len(waits) == 2


def test_a_post_again_that_would_outlast_the_budget_is_left_for_a_later_drain(
    db: Any, webhook: Receiver
) -> None:
    raise_alert(db.url)
    webhook.statuses = [503, 503, 503]
    # Half a second's wait and a post's whole timeout do not fit in what is left of 2 s.
    drained, waits = drain(db, webhook, budget=2.0)
    assert (drained.delivered, drained.later) == (0, 1)
    assert len(webhook.received) == 1 and waits == []
    [row] = deliveries(db)
    assert (row["outcome"], row["attempts"], row["last_error"]) == (None, 1, "HTTP 503")


def test_a_receiver_still_failing_is_tried_again_at_a_later_drain(
    db: Any, cli: Any, webhook: Receiver
) -> None:
    raise_alert(db.url)
    webhook.statuses = [503, 503, 503]
    result = cli("notifications", "deliver", "--json")
    assert result.exit_code == 1
    assert result.json()["later"] == 1
    assert result.json()["waiting"] == 1
    assert "HTTP 503, will try again" in result.stderr
    assert len(webhook.received) == 3
    [row] = deliveries(db)
    assert row["outcome"] is None and row["last_error"] == "HTTP 503"
    assert row["lease_owner"] is None
    soon = cli("notifications", "deliver")  # not yet due: nothing posted, still failing
    assert soon.exit_code == 1
    assert "1 waiting after a failed post (last error: HTTP 503)" in soon.stderr
    assert len(webhook.received) == 3
    with db.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alert_deliveries SET next_attempt_at = created_at")
    assert cli("notifications", "deliver").exit_code == 0
    assert len(webhook.received) == 4
    assert [d["outcome"] for d in deliveries(db)] == ["delivered"]
    failures = db.rows("SELECT error_type FROM events WHERE kind = 'alert_delivery_failed'")
    assert failures == [{"error_type": "alert_webhook_server_error"}]


def test_a_4xx_is_refused_for_good(db: Any, cli: Any, webhook: Receiver) -> None:
    raise_alert(db.url)
    webhook.statuses = [404]
    result = cli("notifications", "deliver", "--json")
    assert result.exit_code == 1
    assert result.json()["given_up"] == 1
    assert len(webhook.received) == 1
    assert [d["outcome"] for d in deliveries(db)] == ["refused"]
    with db.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alert_deliveries SET next_attempt_at = created_at")
    assert cli("notifications", "deliver").exit_code == 0
    assert len(webhook.received) == 1


def test_a_resolved_state_waits_for_its_open_one(db: Any, cli: Any, webhook: Receiver) -> None:
    raise_alert(db.url)
    webhook.statuses = [503, 503, 503]
    assert cli("notifications", "deliver").exit_code == 1
    resolve_alert(db.url)
    assert cli("notifications", "deliver").exit_code == 1  # the open one is not due yet
    assert len(webhook.received) == 3
    with db.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alert_deliveries SET next_attempt_at = created_at")
    assert cli("notifications", "deliver").exit_code == 0
    assert [r.json()["state"] for r in webhook.received[3:]] == ["open", "resolved"]


def _age(db: Any, **columns: Any) -> None:
    mark = "?" if db.kind == "sqlite" else "%s"
    with db.engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE alert_deliveries SET " + ", ".join(f"{c} = {mark}" for c in columns),
            tuple(columns.values()),
        )


def test_an_alert_failing_for_a_day_is_given_up(db: Any, cli: Any, webhook: Receiver) -> None:
    raise_alert(db.url)
    webhook.statuses = [503, 503, 503]
    assert cli("notifications", "deliver").exit_code == 1
    old = datetime.now(UTC) - timedelta(days=1, minutes=1)
    _age(db, created_at=old, next_attempt_at=old)
    result = cli("notifications", "deliver", "--json")
    assert result.exit_code == 1
    assert result.json()["given_up"] == 1
    assert "not delivered within 1 day (HTTP 503)" in result.stderr
    assert len(webhook.received) == 3  # not posted again
    assert [d["outcome"] for d in deliveries(db)] == ["expired"]


def test_an_alert_raised_a_day_before_the_webhook_was_set_is_not_posted(
    db: Any, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    raise_alert(db.url)  # no webhook set: it waits in the outbox, not a failure
    assert cli("doctor", "--json").json()  # doctor runs
    assert _doctor(cli)["alert deliveries"] == ("ok", "no webhook set: admin alerts are not posted")
    old = datetime.now(UTC) - timedelta(days=1, minutes=1)
    _age(db, created_at=old, next_attempt_at=old)
    raise_alert(db.url, user="u2")
    with receiving() as receiver:
        monkeypatch.setenv("DISCOVERY_ADMIN_WEBHOOK_URL", receiver.url)
        result = cli("notifications", "deliver", "--json")
        assert result.exit_code == 0, result.stderr
        assert (result.json()["skipped"], result.json()["delivered"]) == (1, 1)
        assert [b["alert"]["user_id"] for b in receiver.bodies()] == ["u2"]
    assert [d["outcome"] for d in deliveries(db)] == ["expired", "delivered"]


def test_a_command_that_raised_no_alert_leaves_the_outbox_alone(
    db: Any, cli: Any, webhook: Receiver
) -> None:
    raise_alert(db.url)  # by another process
    assert cli("status").exit_code == 0
    assert cli("notifications", "--admin").exit_code == 0
    assert webhook.received == []
    assert [d["outcome"] for d in deliveries(db)] == [None]


def test_deliver_test_posts_a_signed_test_message(db: Any, cli: Any, webhook: Receiver) -> None:
    result = cli("notifications", "deliver", "--test")
    assert result.exit_code == 0, result.stderr
    assert "delivered a test message to http://127.0.0.1:" in result.stderr
    [received] = webhook.received
    assert received.json()["state"] == "test"
    parts = signature_parts(received)
    assert parts["v1"] == expected_signature(SECRET, parts["t"], received.body)
    webhook.statuses = [404]
    refused = cli("notifications", "deliver", "--test")
    assert refused.exit_code == 1
    assert "the test message was not delivered" in refused.stderr and "HTTP 404" in refused.stderr
    assert deliveries(db) == []


def test_verify_refuses_malformed_signatures_without_raising() -> None:
    body = b'{"text": "x"}'
    now = time.time()
    good = signing.signature(SECRET, int(now), body)
    assert signing.verify(SECRET, good, body, now=now)
    for header in (
        "",
        "garbage",
        "t=,v1=",
        f"t={int(now)},v1=\u00e9",
        f"t={int(now)}",
        # the right time in digits, but not ASCII ones
        "t=" + "".join(chr(0xFF10 + int(d)) for d in str(int(now))) + "," + good.split(",")[1],
        f"t={int(now):_},v1={good.split('v1=')[1]}",
        good.replace("v1=", "v0="),
    ):
        assert not signing.verify(SECRET, header, body, now=now), header


def test_slack_markup_in_an_alert_is_shown_not_obeyed(db: Any, cli: Any, webhook: Receiver) -> None:
    raise_alert(db.url, user="<!channel> & co")
    assert cli("notifications", "deliver").exit_code == 0
    body = webhook.received[0].json()
    assert "&lt;!channel&gt; &amp; co" in body["text"]
    assert "<!channel>" not in body["text"]
    assert body["alert"]["user_id"] == "<!channel> & co"  # the data itself, unescaped


def test_deliver_without_a_webhook_says_how_to_set_one(db: Any, cli: Any) -> None:
    result = cli("notifications", "deliver")
    assert result.exit_code == 2
    assert "DISCOVERY_ADMIN_WEBHOOK_URL is not set" in result.stderr


def _deliver_in_a_process() -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "discoveryctl", "notifications", "deliver", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


def test_two_processes_draining_at_once_deliver_each_alert_once(db: Any, webhook: Receiver) -> None:
    for number in range(12):
        raise_alert(db.url, user=f"u{number}")
    webhook.together = 2  # every post waits for one from the other process
    first, second = _deliver_in_a_process(), _deliver_in_a_process()
    outcomes = []
    for process in (first, second):
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        outcomes.append(json.loads(stdout))
    ids = [r.headers["Discovery-Delivery"] for r in webhook.received]
    assert len(ids) == 12
    assert len(set(ids)) == 12
    assert webhook.most_in_flight == 2  # they did overlap
    assert all(o["delivered"] >= 1 for o in outcomes)
    assert sum(o["delivered"] for o in outcomes) == 12
    assert {d["outcome"] for d in deliveries(db)} == {"delivered"}


def _waiting_for_a_lock(db: Any) -> bool:
    if db.kind == "sqlite":  # no view of SQLite's waiters: give the process time to wait
        time.sleep(1.5)
        return True
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if db.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"):
            return True
        time.sleep(0.05)
    return False


def test_a_claim_waits_for_another_claimer(db: Any, webhook: Receiver) -> None:
    raise_alert(db.url)
    database = Database(db.url)
    queue = ALERT_DELIVERIES.claims_queue_on
    assert queue is not None
    with database.session() as session:
        lock_for_writing(session, queue)  # another process, mid-claim
        process = _deliver_in_a_process()
        assert _waiting_for_a_lock(db)
        assert webhook.received == []
    stdout, stderr = process.communicate(timeout=60)
    database.dispose()
    assert process.returncode == 0, stderr
    assert json.loads(stdout)["delivered"] == 1


def test_a_post_whose_lease_was_taken_over_is_not_recorded_by_it(
    db: Any, cli: Any, webhook: Receiver
) -> None:
    raise_alert(db.url)

    def taken_over() -> None:  # the lease ran out mid-post, and another process took the row
        with db.engine.begin() as connection:
            connection.exec_driver_sql("UPDATE alert_deliveries SET lease_owner = 'another'")

    webhook.on_request = taken_over
    result = cli("notifications", "deliver", "--json")
    assert len(webhook.received) == 1
    assert result.json()["delivered"] == 0
    [row] = deliveries(db)
    assert (row["outcome"], row["lease_owner"], row["attempts"]) == (None, "another", 0)


def test_refresh_all_posts_its_alert_and_its_exit_code_stands(
    db: Any,
    cli: Any,
    webhook: Receiver,
    amazon: Sandbox,
    tmp_path: Path,
) -> None:
    import_sellers(cli, amazon, tmp_path, 2)
    amazon.state.rotate_client_secret("a-secret-we-do-not-have")
    result = cli("refresh-all")
    assert result.exit_code == 3
    [alert] = webhook.bodies()
    assert alert["state"] == "open"
    assert alert["alert"]["kind"] == "app_credentials_rejected"
    assert "rejected the app's credentials" in alert["text"]

    amazon.state.rotate_client_secret(None)  # the operator fixed the app's secret
    assert cli("refresh-all").exit_code == 0
    assert [b["state"] for b in webhook.bodies()] == ["open", "resolved"]
    assert webhook.bodies()[1]["alert"]["id"] == alert["alert"]["id"]
    admin = cli("notifications", "--admin", "--json").json()
    assert admin[0]["resolved_at"] is not None


def test_an_unreachable_webhook_never_fails_the_run(
    db: Any, cli: Any, amazon: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with closed_port() as url:
        monkeypatch.setenv("DISCOVERY_ADMIN_WEBHOOK_URL", url)
        import_sellers(cli, amazon, tmp_path, 2)
        amazon.state.rotate_client_secret("a-secret-we-do-not-have")
        result = cli("refresh-all")
    assert result.exit_code == 3  # its own outcome, not the webhook's
    assert "secret-token" not in result.stderr  # the URL's path is its token
    [row] = deliveries(db)
    assert row["outcome"] is None
    assert row["last_error"] == "unreachable (ConnectError)"
    assert row["attempts"] == delivery.TRIES  # a refused connection is tried again at once


def test_a_webhook_that_never_answers_holds_the_run_up_for_one_timeout(
    db: Any, cli: Any, amazon: Sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import_sellers(cli, amazon, tmp_path, 2)
    amazon.state.rotate_client_secret("a-secret-we-do-not-have")
    with receiving() as hanging:
        hanging.together, hanging.hold = 99, 30.0  # takes the request, never answers
        monkeypatch.setenv("DISCOVERY_ADMIN_WEBHOOK_URL", hanging.url)
        began = time.monotonic()
        result = cli("refresh-all")
        took = time.monotonic() - began
        assert result.exit_code == 3
        assert delivery.TIMEOUT <= took < delivery.TIMEOUT + 3
        [row] = deliveries(db)
        assert (row["outcome"], row["last_error"], row["attempts"]) == (None, "timed out", 1)
        with db.engine.begin() as connection:
            connection.exec_driver_sql("UPDATE alert_deliveries SET next_attempt_at = created_at")
        began = time.monotonic()
        drained = cli("notifications", "deliver")  # no budget: still one timeout, not three
        took = time.monotonic() - began
    assert drained.exit_code == 1
    assert took < delivery.TIMEOUT + 3
    assert deliveries(db)[0]["attempts"] == 2


def test_a_failing_receiver_stops_the_drain(db: Any, cli: Any, webhook: Receiver) -> None:
    raise_alert(db.url, user="u1")
    raise_alert(db.url, user="u2")
    webhook.statuses = [503, 503, 503]
    result = cli("notifications", "deliver", "--json")
    assert result.exit_code == 1
    assert (result.json()["later"], result.json()["waiting"]) == (1, 2)
    assert {r.json()["alert"]["user_id"] for r in webhook.received} == {"u1"}  # u2 waits


def test_an_alert_raised_in_a_batch_is_posted_and_so_is_its_recovery(
    db: Any,
    cli: Any,
    webhook: Receiver,
    amazon: Sandbox,
    tmp_path: Path,
) -> None:
    _, flaky = import_sellers(cli, amazon, tmp_path, 2)
    fail_transiently(db.url, "u1", 2)
    amazon.state.set_behaviour(flaky.selling_partner_id, "flaky", status=503)
    assert cli("refresh-all", "--force").exit_code == 1  # the third failure in a row
    [opened] = webhook.bodies()
    assert (opened["state"], opened["alert"]["kind"]) == ("open", "repeated_failures")
    assert opened["alert"]["user_id"] == "u1"
    amazon.state.clear_behaviour(flaky.selling_partner_id)
    assert cli("refresh-all", "--force").exit_code == 0
    assert [b["state"] for b in webhook.bodies()] == ["open", "resolved"]


def _doctor(cli: Any) -> dict[str, tuple[str, str]]:
    return {c["check"]: (c["state"], c["detail"]) for c in cli("doctor", "--json").json()}


def test_doctor_reaches_the_webhook_without_posting_to_it(
    db: Any, cli: Any, webhook: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    where = webhook.url.split("/services")[0]
    state, detail = _doctor(cli)["admin webhook"]
    assert state == "ok"
    assert detail == f"{where} answers (HTTP 501 to HEAD); signed"
    assert webhook.received == []  # a HEAD, never an alert
    monkeypatch.delenv("DISCOVERY_ADMIN_WEBHOOK_SECRET")
    assert _doctor(cli)["admin webhook"] == (
        "warn",
        f"{where} answers (HTTP 501 to HEAD); DISCOVERY_ADMIN_WEBHOOK_SECRET not set: unsigned",
    )


def test_doctor_fails_an_unreachable_webhook_and_warns_of_alerts_left_waiting(
    db: Any, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _doctor(cli)["admin webhook"][0] == "warn"  # not set
    with closed_port() as url:
        monkeypatch.setenv("DISCOVERY_ADMIN_WEBHOOK_URL", url)
        raise_alert(db.url)
        assert cli("notifications", "deliver").exit_code == 1
        found = _doctor(cli)
    state, detail = found["admin webhook"]
    assert state == "fail"
    assert detail.startswith(url.split("/services")[0] + " unreachable")
    assert "secret-token" not in detail
    state, detail = found["alert deliveries"]
    assert state == "warn"
    assert detail.startswith("1 waiting (last error: unreachable (ConnectError))")


def test_prune_deletes_finished_deliveries_before_the_window_only(
    db: Any, cli: Any, webhook: Receiver
) -> None:
    for user in ("old", "recent", "waiting"):
        raise_alert(db.url, user=user)
    assert cli("notifications", "deliver").exit_code == 0
    long_ago = datetime.now(UTC) - timedelta(days=100)
    with db.engine.begin() as connection:
        mark = "?" if db.kind == "sqlite" else "%s"
        connection.exec_driver_sql(
            f"UPDATE alert_deliveries SET finished_at = {mark} WHERE id = 1", (long_ago,)
        )
        connection.exec_driver_sql(
            "UPDATE alert_deliveries SET outcome = NULL, finished_at = NULL WHERE id = 3"
        )
    result = cli("events", "prune", "--older-than", "90d", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["alert_deliveries"] == 1
    assert [d["id"] for d in deliveries(db)] == [2, 3]
    assert db.scalar("SELECT count(*) FROM notifications") == 3  # what admins were told stays


def _stripe_events(db: Any, created: int, failed: int) -> None:
    import sqlalchemy as sa

    from discoveryctl.db.models import Event, table_of

    at = datetime.now(UTC) - timedelta(minutes=5)
    rows = [
        {"occurred_at": at, "kind": "stripe_customer_created", "outcome": "success", "detail": {}}
    ] * created + [
        {"occurred_at": at, "kind": "stripe_customer_failed", "outcome": "failure", "detail": {}}
    ] * failed
    with db.engine.begin() as connection:
        connection.execute(sa.insert(table_of(Event)), rows)


def test_health_notify_opens_an_alert_while_it_fires_and_resolves_it_after(
    db: Any, cli: Any, webhook: Receiver
) -> None:
    _stripe_events(db, created=80, failed=20)
    assert cli("health", "--json").exit_code == 1
    assert cli("notifications", "--admin", "--json").json() == []  # only with --notify
    assert webhook.received == []

    fired = cli("health", "--notify", "--json")
    assert fired.exit_code == 1
    assert "admin alert opened: stripe_failures" in fired.stderr
    assert cli("health", "--notify").exit_code == 1  # still firing: not opened again
    [opened] = webhook.bodies()
    assert opened["state"] == "open"
    assert opened["alert"]["kind"] == "health_alert"
    assert opened["alert"]["detail"]["alert"] == "stripe_failures"
    assert opened["text"].startswith(":rotating_light: Health alert stripe_failures: 20.0% ")

    with db.engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM events WHERE kind = 'stripe_customer_failed'")
    quiet = cli("health", "--notify")
    assert quiet.exit_code == 0, quiet.stderr
    assert "admin alert resolved: stripe_failures" in quiet.stderr
    assert [b["state"] for b in webhook.bodies()] == ["open", "resolved"]


def test_a_failed_drain_waits_a_minute_then_longer(db: Any, cli: Any, webhook: Receiver) -> None:
    assert [delivery.BETWEEN_DRAINS.wait(n) for n in (1, 2, 3, 7, 20)] == [
        timedelta(minutes=1),
        timedelta(minutes=2),
        timedelta(minutes=4),
        timedelta(hours=1),
        timedelta(hours=1),
    ]
    raise_alert(db.url)
    webhook.statuses = [503, 503, 503]
    before = datetime.now(UTC)
    assert cli("notifications", "deliver").exit_code == 1
    [row] = deliveries(db)
    due = row["next_attempt_at"]
    due = due if isinstance(due, datetime) else datetime.fromisoformat(due)
    due = due.replace(tzinfo=UTC) if due.tzinfo is None else due
    assert timedelta(seconds=59) < due - before < timedelta(seconds=75)


def test_ctrl_c_ends_the_run_without_draining(
    db: Any, cli: Any, webhook: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from discoveryctl.sandbox import SandboxConfig, run_in_thread

    with run_in_thread(SandboxConfig(latency_ms=300)) as slow:
        for name, value in slow.env().items():
            monkeypatch.setenv(name, value)
        sellers = import_sellers(cli, slow, tmp_path, 400)
        fail_transiently(db.url, "u0", 2)
        slow.state.set_behaviour(sellers[0].selling_partner_id, "flaky", status=503)
        run = subprocess.Popen(
            [sys.executable, "-m", "discoveryctl", "refresh-all", "--concurrency", "4"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        deadline = time.monotonic() + 60
        while not db.scalar("SELECT count(*) FROM alert_deliveries"):  # u0's third failure
            assert time.monotonic() < deadline and run.poll() is None
            time.sleep(0.05)
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=30)
    assert run.returncode == 130, stderr
    assert webhook.received == []  # the alert waits for the next drain
    assert [d["outcome"] for d in deliveries(db)] == [None]
