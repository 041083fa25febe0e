"""`discoveryctl sandbox` as an operator runs it: a real process, its export lines, Ctrl-C."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPORTED = {
    "AMAZON_LWA_CLIENT_ID",
    "AMAZON_LWA_CLIENT_SECRET",
    "AMAZON_SPAPI_APP_ID",
    "AMAZON_SELLER_CENTRAL_URL",
    "AMAZON_LWA_TOKEN_URL",
    "AMAZON_SPAPI_URL",
    "AMAZON_APP_DRAFT",
    "AMAZON_REDIRECT_URI",
    "STRIPE_API_KEY",
    "STRIPE_API_BASE",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "discoveryctl", "sandbox", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_exports(process: subprocess.Popen[str]) -> dict[str, str]:
    """The environment the export lines set, read as a shell would."""
    assert process.stdout is not None
    exported: dict[str, str] = {}
    while len(exported) < len(EXPORTED):
        line = process.stdout.readline()
        assert line, f"the sandbox exited early: {process.communicate()[1]}"
        keyword, assignment = shlex.split(line)
        assert keyword == "export"
        name, _, value = assignment.partition("=")
        exported[name] = value
    return exported


def interrupt(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=15)
    return process.returncode, stdout, stderr


@pytest.fixture
def running() -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    process = start("--port", str(port))
    yield process, port
    if process.poll() is None:
        process.kill()
        process.communicate()


def test_prints_exports_serves_lwa_and_stops_on_ctrl_c(
    running: tuple[subprocess.Popen[str], int],
) -> None:
    process, port = running
    env = read_exports(process)
    url = f"http://127.0.0.1:{port}"
    assert set(env) == EXPORTED
    assert env["AMAZON_LWA_TOKEN_URL"] == url + "/auth/o2/token"
    assert (
        env["AMAZON_SELLER_CENTRAL_URL"] == env["AMAZON_SPAPI_URL"] == env["STRIPE_API_BASE"] == url
    )
    assert env["AMAZON_APP_DRAFT"] == "1"
    assert env["AMAZON_REDIRECT_URI"] == "http://127.0.0.1:8765/callback"

    with httpx.Client(base_url=url) as client:
        seller = client.post("/_sandbox/sellers").json()
        response = client.post(
            env["AMAZON_LWA_TOKEN_URL"],
            data={
                "grant_type": "refresh_token",
                "refresh_token": seller["refresh_token"],
                "client_id": env["AMAZON_LWA_CLIENT_ID"],
                "client_secret": env["AMAZON_LWA_CLIENT_SECRET"],
            },
        )
        assert response.status_code == 200
        customers = client.get(
            "/v1/customers", headers={"Authorization": f"Bearer {env['STRIPE_API_KEY']}"}
        )
        assert customers.status_code == 200

    code, _, stderr = interrupt(process)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert seller["refresh_token"] not in stderr


def test_a_port_in_use_is_a_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = start("--port", str(port))
        stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 2
    assert stdout == ""
    assert stderr.strip().count("\n") == 0
    assert f"127.0.0.1:{port}" in stderr


def test_seed_writes_sellers_to_a_private_file_only(tmp_path: Path) -> None:
    seed_file = tmp_path / "sellers.jsonl"
    process = start(
        "--port", str(free_port()), "--no-draft", "--seed", "2", "--seed-file", str(seed_file)
    )
    try:
        env = read_exports(process)
        lines = [json.loads(line) for line in seed_file.read_text().splitlines()]
        assert stat.S_IMODE(os.stat(seed_file).st_mode) == 0o600
        assert [line["user_id"] for line in lines] == ["seller-1", "seller-2"]
        assert {(line["provider"], line["region"]) for line in lines} == {("amazon", "na")}
        assert env["AMAZON_APP_DRAFT"] == "0"
        with httpx.Client() as client:
            for line in lines:
                response = client.post(
                    env["AMAZON_LWA_TOKEN_URL"],
                    data={
                        "grant_type": "refresh_token",
                        "refresh_token": line["refresh_token"],
                        "client_id": env["AMAZON_LWA_CLIENT_ID"],
                        "client_secret": env["AMAZON_LWA_CLIENT_SECRET"],
                    },
                )
                assert response.status_code == 200
    finally:
        code, stdout, stderr = interrupt(process)
    assert code == 0, stderr
    for line in lines:
        assert line["refresh_token"] not in stdout + stderr


def test_seed_without_a_seed_file_is_a_usage_error() -> None:
    process = start("--port", str(free_port()), "--seed", "2")
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 2
    assert "--seed-file" in stderr


def test_the_cli_does_not_load_the_sandbox_until_asked() -> None:
    probe = (
        "import sys, discoveryctl.cli; "
        "print(sorted(m for m in ('uvicorn', 'discoveryctl.sandbox') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_registered_redirect_uri_is_exported_and_enforced() -> None:
    redirect = "http://127.0.0.1:9999/oauth/amazon"
    process = start("--port", str(free_port()), "--redirect-uri", redirect)
    try:
        env = read_exports(process)
        assert env["AMAZON_REDIRECT_URI"] == redirect
        consent = env["AMAZON_SELLER_CENTRAL_URL"] + "/apps/authorize/consent"
        params = {"application_id": env["AMAZON_SPAPI_APP_ID"], "state": "s", "version": "beta"}
        with httpx.Client() as browser:
            approved = browser.get(consent, params={**params, "redirect_uri": redirect})
            refused = browser.get(
                consent, params={**params, "redirect_uri": "http://127.0.0.1:8765/callback"}
            )
        assert approved.status_code == 302
        assert approved.headers["location"].startswith(redirect + "?")
        assert refused.status_code == 400
        assert "MD5101" in refused.text
    finally:
        code, _, stderr = interrupt(process)
    assert code == 0, stderr


def test_login_uri_mode_can_send_sellers_back_to_the_sandbox_itself() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    login_uri = "http://127.0.0.1:8765/login"
    process = start("--port", str(port), "--login-uri", login_uri, "--amazon-callback-base", url)
    try:
        env = read_exports(process)
        params = {"application_id": env["AMAZON_SPAPI_APP_ID"], "state": "s", "version": "beta"}
        with httpx.Client() as browser:
            to_login = browser.get(url + "/apps/authorize/consent", params=params)
            assert to_login.status_code == 302
            login = dict(parse_qsl(urlsplit(to_login.headers["location"]).query))
            callback = login["amazon_callback_uri"]
            assert callback == f"{url}/apps/authorize/confirm/{env['AMAZON_SPAPI_APP_ID']}"
            back = {"amazon_state": login["amazon_state"], "state": "s", "version": "beta"}
            approved = browser.get(callback, params=back)
        assert approved.status_code == 302
        assert approved.headers["location"].startswith(env["AMAZON_REDIRECT_URI"] + "?")
    finally:
        code, _, stderr = interrupt(process)
    assert code == 0, stderr
