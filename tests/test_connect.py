"""`connect amazon` end to end: the CLI in its own process, the sandbox as Amazon, httpx as
the seller's browser, over real sockets."""

from __future__ import annotations

import datetime as dt
import html
import ipaddress
import json
import os
import re
import secrets
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import jwt
import pytest

from discoveryctl.amazon.consent import STATE_AUDIENCE
from discoveryctl.sandbox import Sandbox, SandboxConfig, run_in_thread

from helpers import state_of, with_params

JWT_SECRET = "test-jwt-secret-" + "x" * 32


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Amazon:
    sandbox: Sandbox
    redirect_uri: str
    db: Any

    def credentials(self) -> list[dict[str, Any]]:
        return self.db.rows("SELECT * FROM credentials")

    def failures(self) -> list[str]:
        return [
            r["error_type"]
            for r in self.db.rows(
                "SELECT error_type FROM events WHERE kind = 'oauth_callback_failed' ORDER BY id"
            )
        ]


def start_amazon(
    db: Any, monkeypatch: pytest.MonkeyPatch, scheme: str = "http", **config: Any
) -> Iterator[Amazon]:
    port = free_port()
    redirect = f"{scheme}://127.0.0.1:{port}/callback"
    if config.pop("login", False):
        config["login_uri"] = f"{scheme}://127.0.0.1:{port}/login"
    sandbox = run_in_thread(SandboxConfig(redirect_uris=(redirect,), **config))
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("JWT_SECRET", JWT_SECRET)
    monkeypatch.setenv("LOG_LEVEL", "debug")
    try:
        yield Amazon(sandbox, redirect, db)
    finally:
        sandbox.stop()


@pytest.fixture
def amazon(db: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Amazon]:
    yield from start_amazon(db, monkeypatch)


class Run:
    """`discoveryctl connect …` running in its own process."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "discoveryctl", "connect", "amazon", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )

    def consent_url(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("http"), (line, self.finish())
        return line.strip()

    def paste(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def finish(self, timeout: float = 30) -> tuple[int, str, str]:
        stdout, stderr = self.process.communicate(timeout=timeout)
        return self.process.returncode, stdout, stderr


def browse(url: str, verify: ssl.SSLContext | bool = True) -> httpx.Response:
    """The seller's browser: follows every redirect, from Seller Central to the callback."""
    with httpx.Client(follow_redirects=True, verify=verify, timeout=10) as browser:
        return browser.get(url)


def approve(url: str) -> str:
    """Consent at the sandbox and return where Amazon redirects the browser (not followed)."""
    with httpx.Client(timeout=10) as browser:
        response = browser.get(url)
    assert response.status_code == 302, response.text
    return response.headers["location"]


# -- success ----------------------------------------------------------------------------------


def test_direct_consent_through_the_local_server(amazon: Amazon, cli: Any) -> None:
    run = Run("--user", "alice", "--no-browser", "--timeout", "30")
    url = run.consent_url()
    query = parse_qs(urlsplit(url).query)
    assert url.startswith(amazon.sandbox.url + "/apps/authorize/consent?")
    assert query["application_id"] == [amazon.sandbox.config.application_id]
    assert query["version"] == ["beta"]
    assert query["redirect_uri"] == [amazon.redirect_uri]

    page = browse(url)
    assert page.status_code == 200
    assert "Amazon account connected" in page.text
    assert page.headers["referrer-policy"] == "no-referrer"
    code, stdout, stderr = run.finish()
    assert code == 0, stderr
    assert stdout == ""  # the URL was the only line on stdout
    assert "connected alice: seller" in stderr

    status = cli("status", "--user", "alice", "--json").json()
    assert status[0]["status"] == "active"
    assert status[0]["metadata"]["region"] == "na"
    (credential,) = amazon.credentials()
    seller = credential["selling_partner_id"]
    assert credential["access_token"] is not None
    exported = json.loads(cli("export", "--include-secrets").stdout)
    assert exported["selling_partner_id"] == seller
    refreshed = httpx.post(  # the stored token is the one Amazon issued: it refreshes
        amazon.sandbox.env()["AMAZON_LWA_TOKEN_URL"],
        data={
            "grant_type": "refresh_token",
            "refresh_token": exported["refresh_token"],
            "client_id": amazon.sandbox.config.client_id,
            "client_secret": amazon.sandbox.config.client_secret,
        },
    )
    assert refreshed.status_code == 200, refreshed.text
    # The refresh token never reached a log line or the database in plain text.
    assert exported["refresh_token"] not in stdout + stderr
    assert exported["refresh_token"] not in json.dumps(
        amazon.db.rows("SELECT * FROM events") + amazon.credentials(), default=str
    )
    stats = amazon.sandbox.state.stats()
    assert stats["grants"]["authorization_code"] == 1


def test_login_uri_mode(db: Any, monkeypatch: pytest.MonkeyPatch, cli: Any) -> None:
    for amazon in start_amazon(db, monkeypatch, login=True):
        run = Run("--user", "bob", "--no-browser", "--timeout", "30")
        with httpx.Client(timeout=10) as browser:
            to_login = browser.get(run.consent_url())
            assert to_login.status_code == 302
            login = to_login.headers["location"]
            assert urlsplit(login).path == "/login"
            assert "amazon_callback_uri" in parse_qs(urlsplit(login).query)
            form = hidden_fields(browser.get(login))  # a page to confirm, then its POST
            back_to_amazon = browser.post(login, data=form)
            assert back_to_amazon.status_code == 303
            confirm = back_to_amazon.headers["location"]
            application_id = amazon.sandbox.config.application_id
            assert confirm.startswith(
                f"https://amazon.com/apps/authorize/confirm/{application_id}?"
            )
            assert parse_qs(urlsplit(confirm).query)["version"] == ["beta"]
        page = browse(amazon.sandbox.browser_url(confirm))
        assert "Amazon account connected" in page.text
        code, _, stderr = run.finish()
        assert code == 0, stderr
        assert cli("status", "--user", "bob", "--json").json()[0]["status"] == "active"


def test_a_marketplace_s_seller_connects_in_its_region(amazon: Amazon, cli: Any) -> None:
    run = Run("--user", "ayla", "--marketplace", "au", "--no-browser", "--timeout", "30")
    page = browse(run.consent_url())
    assert "Amazon account connected" in page.text
    code, _, stderr = run.finish()
    assert code == 0, stderr
    assert "(fe)" in stderr
    assert cli("status", "--user", "ayla", "--json").json()[0]["metadata"]["region"] == "fe"


def test_a_marketplace_s_consent_url_is_its_own_seller_central(
    amazon: Amazon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AMAZON_SELLER_CENTRAL_URL")  # Amazon's own hosts, not the sandbox's
    run = Run("--user", "zola", "--marketplace", "ZA", "--no-browser", "--timeout", "1")
    assert run.consent_url().startswith("https://sellercentral.amazon.co.za/apps/authorize/")
    code, _, stderr = run.finish()
    assert code != 0  # nobody consents in time
    assert "no callback from Amazon within 1 s" in stderr


@pytest.mark.parametrize("tries_blocked", [1, 2])
def test_a_store_blocked_by_another_writer_is_tried_again(
    db: Any, monkeypatch: pytest.MonkeyPatch, cli: Any, tries_blocked: int
) -> None:
    """Amazon granted access, then the database was locked by another writer past its wait:
    the authorization is stored on the second try instead of being lost; when the second try
    is blocked too, the seller is told to connect again (``store_failed``), nothing half-stored.
    """
    wait = 2.0  # how long the command waits for a lock, set through DATABASE_URL
    if db.kind == "sqlite":
        url = f"{db.url}?timeout={wait}"
    else:
        url = db.url.replace("options=", f"options={quote(f'-clock_timeout={int(wait)}s ')}", 1)
    for amazon in start_amazon(db, monkeypatch):
        monkeypatch.setenv("DATABASE_URL", url)
        seller = amazon.sandbox.state.add_seller()
        # The code exchange takes a second: the window in which the lock is taken.
        amazon.sandbox.state.set_behaviour(seller.selling_partner_id, "slow", ms=1000, times=1)
        run = Run("--user", "vera", "--no-browser", "--timeout", "60")
        callback = approve(
            with_params(run.consent_url(), selling_partner_id=seller.selling_partner_id)
        )
        with ThreadPoolExecutor(max_workers=1) as browser:
            page = browser.submit(browse, callback)
            deadline = time.monotonic() + 20
            while not db.scalar("SELECT count(*) FROM oauth_states WHERE consumed_at IS NOT NULL"):
                assert time.monotonic() < deadline, "the callback never arrived"
                time.sleep(0.02)
            with db.engine.connect() as other:
                if db.kind == "sqlite":
                    other.exec_driver_sql("BEGIN IMMEDIATE")  # SQLite's write lock
                else:
                    other.exec_driver_sql("BEGIN")
                    other.exec_driver_sql(
                        "LOCK TABLE integration_status, credentials IN EXCLUSIVE MODE"
                    )
                while not amazon.sandbox.state.stats()["grants"]["authorization_code"]:
                    assert time.monotonic() < deadline, "the code was never exchanged"
                    time.sleep(0.02)
                time.sleep(wait * tries_blocked + 1.0)  # each blocked try gives up meanwhile
                other.rollback()
            shown = page.result(timeout=30).text
        code, _, stderr = run.finish()
        if tries_blocked == 1:
            assert "Amazon account connected" in shown
            assert code == 0, stderr
            assert "store_failed" not in amazon.failures()
            assert len(amazon.credentials()) == 1
            assert cli("status", "--user", "vera", "--json").json()[0]["status"] == "active"
        else:
            assert "the seller must connect again (store_failed)" in shown
            assert code == 1
            assert "(store_failed)" in stderr
            assert amazon.failures() == ["store_failed"]
            assert amazon.credentials() == []
            assert cli("status", "--user", "vera", "--json").json() == []


def test_paste_the_final_address(amazon: Amazon, cli: Any) -> None:
    run = Run("--user", "carol", "--paste")
    run.paste(approve(run.consent_url()))
    code, _, stderr = run.finish()
    assert code == 0, stderr
    assert len(amazon.credentials()) == 1
    assert "paste the address" in stderr


def test_reconnect_replaces_the_token_and_resets_failures(amazon: Amazon, cli: Any) -> None:
    from discoveryctl.integrations.vocabulary import Status

    from helpers import fail_transiently, set_status

    def connect_dave(seller: str | None = None) -> dict[str, Any]:
        run = Run("--user", "dave", "--paste", "--json")
        run.paste(approve(with_params(run.consent_url(), selling_partner_id=seller)))
        code, stdout, stderr = run.finish()
        assert code == 0, stderr
        assert "warning" not in stderr  # the same seller: nothing to warn about
        result: dict[str, Any] = json.loads(stdout)
        return result

    def exported_token() -> str:
        token: str = json.loads(cli("export", "--include-secrets").stdout)["refresh_token"]
        return token

    assert connect_dave()["reconnected"] is False
    first_token = exported_token()
    seller = amazon.credentials()[0]["selling_partner_id"]
    amazon.sandbox.state.revoke(seller)  # the seller revoked; we noticed and counted failures
    fail_transiently(amazon.db.url, "dave", 3)
    set_status(amazon.db.url, "dave", Status.revoked)
    assert len(cli("notifications", "--user", "dave", "--unread", "--json").json()) == 1

    assert connect_dave(seller)["reconnected"] is True
    assert len(amazon.credentials()) == 1
    assert exported_token() != first_token
    status = cli("status", "--user", "dave", "--json").json()[0]
    assert status["status"] == "active"
    assert "consecutive_failures" not in status["metadata"]
    assert "last_error" not in status["metadata"]
    assert all(n["resolved_at"] for n in cli("notifications", "--user", "dave", "--json").json())
    admin = cli("notifications", "--admin", "--json").json()
    assert [n["kind"] for n in admin] == ["repeated_failures"]
    assert admin[0]["resolved_at"] is not None
    assert amazon.sandbox.state.stats()["grants"]["authorization_code"] == 2


def test_reconnecting_another_sellers_account_is_recorded_and_the_admins_told(
    amazon: Amazon, cli: Any
) -> None:
    def connect_erin() -> tuple[dict[str, Any], str]:
        run = Run("--user", "erin", "--paste", "--json")
        run.paste(approve(run.consent_url()))  # the sandbox: a new seller each time
        code, stdout, stderr = run.finish()
        assert code == 0, stderr
        return json.loads(stdout), stderr

    first, _ = connect_erin()
    assert first["previous_selling_partner_id"] is None
    second, warned = connect_erin()
    before, after = first["selling_partner_id"], second["selling_partner_id"]
    assert before != after
    assert second["previous_selling_partner_id"] == before
    assert f"warning: erin was seller {before} and is now seller {after}" in warned
    events = cli("events", "--user", "erin", "--json").json()
    (switch,) = [event for event in events if event["kind"] == "seller_switched"]
    assert switch["detail"]["previous_selling_partner_id"] == before
    admin = cli("notifications", "--admin", "--json").json()
    assert [n["kind"] for n in admin] == ["seller_switched"]
    assert before in admin[0]["message"] and after in admin[0]["message"]
    assert [c["selling_partner_id"] for c in amazon.credentials()] == [after]


def test_https_redirect_with_a_test_certificate(
    db: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cli: Any
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    for amazon in start_amazon(db, monkeypatch, scheme="https"):
        missing = Run("--user", "erin", "--no-browser")
        code, _, stderr = missing.finish()
        assert code == 2
        assert "pass --tls-cert and --tls-key" in stderr

        run = Run("--user", "erin", "--no-browser", "--tls-cert", str(cert), "--tls-key", str(key))
        trust = ssl.create_default_context(cafile=str(cert))
        page = browse(run.consent_url(), verify=trust)
        assert page.status_code == 200
        assert "Amazon account connected" in page.text
        code, _, stderr = run.finish()
        assert code == 0, stderr
        assert len(amazon.credentials()) == 1


# -- failures ---------------------------------------------------------------------------------


def forged_state(user: str, *, expired: bool = False, secret: str = JWT_SECRET) -> str:
    now = int(time.time())
    return jwt.encode(
        {
            "sub": user,
            "region": "na",
            "jti": secrets.token_urlsafe(32),
            "aud": STATE_AUDIENCE,
            "iat": now - 3600,
            "exp": now - 60 if expired else now + 600,
        },
        secret,
        algorithm="HS256",
    )


PASTE_FAILURES: dict[str, Callable[[str], str]] = {
    "missing_code": lambda final: with_params(final, spapi_oauth_code=None),
    "missing_state": lambda final: with_params(final, state=None),
    "invalid_state": lambda final: with_params(final, state=state_of(final)[:-3] + "abc"),
    "expired_state": lambda final: with_params(final, state=forged_state("frank", expired=True)),
    "user_mismatch": lambda final: with_params(final, state=forged_state("someone-else")),
    "access_denied": lambda final: with_params(
        final, error="access_denied", error_description="The user denied the request"
    ),
    "code_exchange_failed": lambda final: with_params(final, spapi_oauth_code="ANforgedcode"),
    "missing_selling_partner_id": lambda final: with_params(final, selling_partner_id=None),
    "invalid_selling_partner_id": lambda final: with_params(final, selling_partner_id="A" * 65),
}


@pytest.mark.parametrize("reason", sorted(PASTE_FAILURES))
def test_each_failure_reason(amazon: Amazon, cli: Any, reason: str) -> None:
    run = Run("--user", "frank", "--paste")
    run.paste(PASTE_FAILURES[reason](approve(run.consent_url())))
    code, _, stderr = run.finish()
    assert code == 1, stderr
    assert f"({reason})" in stderr.strip().splitlines()[-1]
    assert amazon.failures() == [reason]
    assert amazon.credentials() == []
    assert cli("status", "--json").json() == []


def test_a_seller_id_with_terminal_escapes_is_refused_and_not_echoed(amazon: Amazon) -> None:
    run = Run("--user", "frank", "--paste")
    final = approve(run.consent_url())
    run.paste(with_params(final, selling_partner_id="A\x1b[31mRED\x1b]0;title\x07B"))
    code, stdout, stderr = run.finish()
    assert code == 1
    assert "(invalid_selling_partner_id)" in stderr
    assert "\x1b" not in stdout + stderr
    assert amazon.failures() == ["invalid_selling_partner_id"]
    assert amazon.credentials() == []


def test_a_forged_state_signed_with_another_secret(amazon: Amazon) -> None:
    run = Run("--user", "frank", "--paste")
    final = approve(run.consent_url())
    run.paste(with_params(final, state=forged_state("frank", secret="another-secret" * 3)))
    code, _, stderr = run.finish()
    assert code == 1
    assert "(invalid_state)" in stderr


def test_unsigned_state_is_refused(amazon: Amazon) -> None:
    unsigned = jwt.encode(
        {
            "sub": "frank",
            "region": "na",
            "jti": "x" * 43,
            "aud": STATE_AUDIENCE,
            "iat": int(time.time()),
            "exp": int(time.time()) + 600,
        },
        key=None,
        algorithm="none",
    )
    run = Run("--user", "frank", "--paste")
    run.paste(with_params(approve(run.consent_url()), state=unsigned))
    code, _, stderr = run.finish()
    assert code == 1
    assert "(invalid_state)" in stderr
    assert amazon.credentials() == []


def test_a_replayed_state_is_refused(amazon: Amazon) -> None:
    first = Run("--user", "gina", "--paste")
    final = approve(first.consent_url())
    first.paste(final)
    assert first.finish()[0] == 0
    replay = Run("--user", "gina", "--paste")
    replay.consent_url()
    replay.paste(final)
    code, _, stderr = replay.finish()
    assert code == 1
    assert "(state_reused)" in stderr
    assert amazon.failures() == ["state_reused"]
    assert len(amazon.credentials()) == 1


def test_an_expired_code_is_rejected_by_amazon(db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for amazon in start_amazon(db, monkeypatch, code_ttl=1):
        run = Run("--user", "hank", "--paste")
        final = approve(run.consent_url())
        time.sleep(1.2)
        run.paste(final)
        code, _, stderr = run.finish()
        assert code == 1
        assert "(code_exchange_failed)" in stderr
        assert amazon.credentials() == []


def test_timeout_ends_an_abandoned_flow(amazon: Amazon) -> None:
    run = Run("--user", "ivy", "--no-browser", "--timeout", "1")
    run.consent_url()
    code, _, stderr = run.finish()
    assert code == 1
    assert "(timeout)" in stderr
    assert "no callback from Amazon within 1 s" in stderr
    assert amazon.failures() == ["timeout"]


def test_stray_and_hostile_requests_change_nothing(amazon: Amazon, cli: Any) -> None:
    run = Run("--user", "jack", "--no-browser", "--timeout", "30")
    url = run.consent_url()
    final = approve(url)
    base = amazon.redirect_uri.rsplit("/", 1)[0]
    with httpx.Client(timeout=5) as stranger:
        assert stranger.get(base + "/favicon.ico").status_code == 404
        assert stranger.post(amazon.redirect_uri, data={"state": "x"}).status_code == 405
        assert stranger.get(amazon.redirect_uri).status_code == 400
        assert stranger.get(with_params(final, state="garbage")).status_code == 400
        other = with_params(final, state=forged_state("mallory"))
        assert stranger.get(other).status_code == 400
        assert (
            stranger.get(base + "/login?amazon_callback_uri=https://evil.example/").status_code
            == 400
        )
        huge = stranger.get(amazon.redirect_uri + "?state=" + "A" * 10000)
        assert huge.status_code == 414
    assert amazon.credentials() == []
    page = browse(final)  # the real callback still completes the flow
    assert page.status_code == 200
    code, _, stderr = run.finish()
    assert code == 0, stderr
    assert "ignored a callback" in stderr
    assert len(amazon.credentials()) == 1


def test_port_in_use_is_a_clear_error(amazon: Amazon) -> None:
    port = urlsplit(amazon.redirect_uri).port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        code, stdout, stderr = Run("--user", "kim", "--no-browser").finish()
    assert code == 2
    assert stderr.strip().splitlines()[-1].startswith("error: port")
    assert "already in use" in stderr
    assert stdout == ""


def test_missing_app_credentials_are_a_configuration_error(
    db: Any, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = cli("connect", "amazon", "--user", "x", "--no-browser")
    assert result.exit_code == 2
    assert "AMAZON_LWA_CLIENT_ID is not set" in result.stderr


def test_rejected_app_credentials_exit_3_and_alert_the_admin(
    amazon: Amazon, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AMAZON_LWA_CLIENT_SECRET", "wrong-secret")
    run = Run("--user", "liz", "--paste")
    run.paste(approve(run.consent_url()))
    code, _, stderr = run.finish()
    assert code == 3
    assert "rejected the app's credentials" in stderr
    assert amazon.failures() == ["app_credentials_rejected"]
    admin = cli("notifications", "--admin", "--json").json()
    assert [n["kind"] for n in admin] == ["app_credentials_rejected"]


MARKER_SECRET = "amzn1.oa2-cs.v1.marker0123456789abcdef0123456789abcdef"


def test_the_client_secret_reaches_no_output_log_or_row(
    db: Any, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A marker secret, LOG_LEVEL=debug, a connect that works and one that LWA refuses (a
    rotated secret): the secret is in no output, no log line, no row, no error."""
    for amazon in start_amazon(db, monkeypatch, client_secret=MARKER_SECRET):
        run = Run("--user", "mia", "--no-browser", "--timeout", "30")
        browse(run.consent_url())
        outputs = list(run.finish())
        assert outputs[0] == 0, outputs[2]
        amazon.sandbox.state.rotate_client_secret("amzn1.oa2-cs.v1.the-new-one")
        run = Run("--user", "noa", "--paste")
        run.paste(approve(run.consent_url()))
        outputs += run.finish()
        assert outputs[3] == 3
        for args in (("doctor", "--json"), ("events", "--json"), ("notifications", "--admin")):
            result = cli(*args)
            outputs += [result.stdout, result.stderr]
        everything = json.dumps(
            [*map(str, outputs)]
            + [db.rows(f"SELECT * FROM {table}") for table in ("events", "notifications")],
            default=str,
        )
        assert "rejected the app's credentials" in everything
        assert MARKER_SECRET not in everything
        assert MARKER_SECRET[len("amzn1.oa2-cs.v1.") :] not in everything


# -- helpers ----------------------------------------------------------------------------------


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_malformed_http_and_terminal_escapes_change_nothing(amazon: Amazon) -> None:
    run = Run("--user", "max", "--no-browser", "--timeout", "30")
    final = approve(run.consent_url())
    port = urlsplit(amazon.redirect_uri).port
    for raw in (
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /" + b"a" * 70000 + b"\r\n\r\n",
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(raw)
            assert connection.recv(1024), raw[:20]  # an error answer, not a dropped connection
    hostile = with_params(
        final, state=None, error="x", error_description="\x1b[2J\x1b[31mPWNED\nFAKE LINE"
    )
    assert httpx.get(hostile).status_code == 400
    assert browse(final).status_code == 200
    code, _, stderr = run.finish()
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert "\x1b" not in stderr
    assert "\nFAKE LINE" not in stderr
    assert amazon.failures() == []  # stray callbacks store nothing


def test_an_idle_tls_client_does_not_hold_the_flow_past_its_timeout(
    db: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    for amazon in start_amazon(db, monkeypatch, scheme="https"):
        run = Run(
            "--user",
            "nia",
            "--no-browser",
            "--timeout",
            "2",
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
        )
        run.consent_url()
        port = urlsplit(amazon.redirect_uri).port
        began = time.monotonic()
        with socket.create_connection(("127.0.0.1", port)):
            code, _, stderr = run.finish(timeout=30)
        assert code == 1
        assert "(timeout)" in stderr
        assert time.monotonic() - began < 10


def test_a_wrong_key_stops_connect_before_the_code_is_spent(
    amazon: Amazon, cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from cryptography.fernet import Fernet

    from helpers import amazon_line, write_lines

    assert cli("import", str(write_lines(tmp_path / "a.jsonl", amazon_line("olga")))).exit_code == 0
    monkeypatch.setenv("DISCOVERY_ENCRYPTION_KEY", Fernet.generate_key().decode())
    code, stdout, stderr = Run("--user", "olga", "--paste").finish()
    assert code == 2
    assert "wrong key?" in stderr
    assert stdout == ""  # no consent URL was handed out
    assert amazon.sandbox.state.stats()["grants"].get("authorization_code", 0) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--timeout", "0"), "--timeout must be from 1 to 600 seconds, not 0"),
        (("--timeout", "nan"), "--timeout nan is not a number of seconds"),
        (("--timeout", "inf"), "--timeout must be from 1 to 600 seconds, not inf"),
        (("--timeout", "soon"), "invalid value for '--timeout': 'soon' is not a number"),
        (("--tls-cert", "c.pem"), "--tls-cert and --tls-key go together"),
        (("--marketplace", "XX"), "'XX' is not an Amazon marketplace: use one of US, CA"),
        (("--marketplace", "AU", "--region", "eu"), "marketplace AU is in the fe region, not eu"),
    ],
)
def test_bad_options_are_usage_errors(amazon: Amazon, args: tuple[str, ...], message: str) -> None:
    code, _, stderr = Run("--user", "pat", "--no-browser", *args).finish()
    assert code == 2
    assert message in stderr


def test_a_redirect_uri_this_server_cannot_receive(
    amazon: Amazon, monkeypatch: pytest.MonkeyPatch
) -> None:
    for uri in ("http://[::1]:8767/callback", "https://app.example.com/amazon/callback"):
        monkeypatch.setenv("AMAZON_REDIRECT_URI", uri)
        code, _, stderr = Run("--user", "quinn", "--no-browser").finish()
        assert code == 2
        assert "use --paste" in stderr
    monkeypatch.setenv("AMAZON_REDIRECT_URI", "http://127.0.0.1:99999/callback")
    code, _, stderr = Run("--user", "quinn", "--no-browser").finish()
    assert code == 2
    assert "AMAZON_REDIRECT_URI" in stderr
    assert "Traceback" not in stderr


def test_a_browser_that_hangs_up_after_the_callback_still_connects(amazon: Amazon) -> None:
    run = Run("--user", "rita", "--no-browser", "--timeout", "20")
    final = urlsplit(approve(run.consent_url()))
    with socket.create_connection(("127.0.0.1", final.port or 80), timeout=5) as browser:
        browser.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        browser.sendall(f"GET {final.path}?{final.query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    # reset without reading the answer: writing the page fails
    code, _, stderr = run.finish()
    assert code == 0, stderr
    assert len(amazon.credentials()) == 1
    assert amazon.failures() == []


def test_a_trickling_client_does_not_hold_the_flow_past_its_timeout(amazon: Amazon) -> None:
    import threading

    run = Run("--user", "sam", "--no-browser", "--timeout", "2")
    run.consent_url()
    port = urlsplit(amazon.redirect_uri).port
    stop = threading.Event()

    def trickle() -> None:
        with socket.create_connection(("127.0.0.1", port)) as slow:
            for byte in b"GET /callback?state=" + b"A" * 100:
                if stop.wait(0.5):
                    return
                try:
                    slow.send(bytes([byte]))
                except OSError:
                    return

    worker = threading.Thread(target=trickle, daemon=True)
    began = time.monotonic()
    worker.start()
    try:
        code, _, stderr = run.finish(timeout=30)
    finally:
        stop.set()
    assert code == 1
    assert "(timeout)" in stderr
    assert time.monotonic() - began < 10


def hidden_fields(page: httpx.Response) -> dict[str, str]:
    """The confirmation page's form."""
    assert page.status_code == 200, page.text
    assert page.headers["x-frame-options"] == "DENY"
    fields = re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)">', page.text)
    return {html.unescape(name): html.unescape(value) for name, value in fields}


def test_the_login_step_returns_only_to_amazon(amazon: Amazon) -> None:
    run = Run("--user", "tia", "--no-browser", "--timeout", "20")
    run.consent_url()
    login = amazon.redirect_uri.rsplit("/", 1)[0] + "/login"
    central = urlsplit(amazon.sandbox.url)
    confirm = "/apps/authorize/confirm/amzn1.sp.solution.x"
    with httpx.Client(timeout=5) as browser:

        def step(target: str, **extra: str) -> httpx.Response:
            params = {
                "amazon_callback_uri": target,
                "amazon_state": "s",
                "selling_partner_id": "A1B2C3D4E5F6G7",
                **extra,
            }
            return browser.get(login, params=params)

        for target in (
            f"https://{central.netloc}{confirm}",  # Seller Central's host, other scheme
            f"javascript://{central.netloc}/x",
            "//evil.test/apps/authorize/confirm",
            f"https://amazon.com.evil.test{confirm}",
            f"https://evil-amazon.com{confirm}",
            f"https://amazon.com.{confirm}",
            f"http://amazon.com{confirm}",
            f"https://amazon.com:8443{confirm}",
            f"https://amazon.com@evil.test{confirm}",
            f"https://evil.test{confirm}#https://amazon.com",
            f"https://sellercentral.amazon.co.jp{confirm}",  # another region's host
        ):
            answer = step(target)
            assert answer.status_code == 400, target
            assert "location" not in answer.headers
        for target in (
            f"https://amazon.com{confirm}",  # as Amazon documents it
            f"https://www.amazon.com{confirm}",
            f"https://sellercentral.amazon.com{confirm}",
            f"https://AMAZON.com{confirm}",
            "/apps/authorize/confirm",
        ):
            assert hidden_fields(step(target))["amazon_callback_uri"] == target
        form = hidden_fields(step("/apps/authorize/confirm"))
        relative = browser.post(login, data=form)
        assert relative.status_code == 303
        assert relative.headers["location"].startswith(amazon.sandbox.url + "/apps/authorize/")
        again = browser.post(login, data=form)  # once per consent
        assert again.status_code == 400
        assert "already confirmed" in again.text
    run.process.kill()
    run.finish()


def test_a_login_step_someone_else_sent_connects_nothing(amazon: Amazon) -> None:
    """Mallory sends the operator a login-step link for her seller account while the
    operator's own `connect` is waiting: a page names her seller, and nothing but that page's
    own form continues; the operator's user is not connected to her account."""
    run = Run("--user", "otto", "--no-browser", "--timeout", "20")
    run.consent_url()
    login = amazon.redirect_uri.rsplit("/", 1)[0] + "/login"
    bait = {
        "amazon_callback_uri": "https://amazon.com/apps/authorize/confirm/amzn1.sp.solution.x",
        "amazon_state": "mallorys-amazon-state",
        "selling_partner_id": "AMALLORYSELLER",
    }
    with httpx.Client(timeout=5) as browser:
        page = browser.get(login, params=bait)
        assert "AMALLORYSELLER" in page.text and "otto" in page.text
        assert "location" not in page.headers  # no redirect on a GET
        for token in (None, "x" * 43):  # a page elsewhere posting the form without its token
            form = {**bait, **({"login_token": token} if token else {})}
            refused = browser.post(login, data=form)
            assert refused.status_code == 400
            assert "not confirmed" in refused.text
        assert browser.put(login).status_code == 405
    run.process.kill()
    run.finish()
    assert amazon.credentials() == []
    assert amazon.sandbox.state.stats()["grants"]["authorization_code"] == 0


def test_the_login_step_passes_on_version_beta_that_amazon_sent(
    db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for amazon in start_amazon(db, monkeypatch, draft=False):
        run = Run("--user", "uma", "--no-browser", "--timeout", "20")
        run.consent_url()
        login = amazon.redirect_uri.rsplit("/", 1)[0] + "/login"
        asked = {
            "amazon_callback_uri": "https://amazon.com/apps/authorize/confirm/amzn1.sp.solution.x",
            "amazon_state": "s",
            "selling_partner_id": "A1B2C3D4E5F6G7",
        }
        with httpx.Client(timeout=5) as browser:
            assert "version" not in hidden_fields(browser.get(login, params=asked))
            beta = hidden_fields(browser.get(login, params={**asked, "version": "beta"}))
            onward = browser.post(login, data=beta)
        assert parse_qs(urlsplit(onward.headers["location"]).query)["version"] == ["beta"]
        run.process.kill()
        run.finish()
