"""Logs: JSON lines or console on stderr, secrets redacted, no locals in tracebacks."""

from __future__ import annotations

import json
from typing import Any

import pytest
import structlog

from discoveryctl.support import logging as discovery_logging
from discoveryctl.support.redaction import REDACTED, redact


def test_json_lines_redact_tokens_codes_and_headers(capsys: pytest.CaptureFixture[str]) -> None:
    discovery_logging.configure(level="debug", fmt="json")
    structlog.get_logger().info(
        "token_refresh",
        userId="u1",
        refresh_token="Atzr|IwEB-secret",
        spapi_oauth_code="ANDHjkfhsdf",
        headers={"Authorization": "Bearer abc.def", "x-amz-access-token": "Atza|live"},
        note="retrying with Atzr|IwEB-secret and sk_test_123456 after Bearer xyz",
        idempotency_key="user-u1-stripe-1",
    )
    line = json.loads(capsys.readouterr().err)
    assert line["event"] == "token_refresh"
    assert line["userId"] == "u1"
    assert line["refresh_token"] == REDACTED
    assert line["spapi_oauth_code"] == REDACTED
    assert line["headers"] == {"Authorization": REDACTED, "x-amz-access-token": REDACTED}
    assert "IwEB" not in line["note"] and "sk_test_123456" not in line["note"]
    assert "xyz" not in line["note"]
    assert line["idempotency_key"] == "user-u1-stripe-1"


def test_tracebacks_carry_no_locals_and_no_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    for fmt in ("json", "console"):
        discovery_logging.configure(level="info", fmt=fmt)
        secret_local = "Atzr|local-variable-secret"  # noqa: F841
        try:
            raise RuntimeError("exchange failed for Atzr|in-the-message")
        except RuntimeError:
            structlog.get_logger().exception("refresh_crashed")
        err = capsys.readouterr().err
        assert "refresh_crashed" in err
        assert "RuntimeError" in err
        assert "local-variable-secret" not in err
        assert "in-the-message" not in err


def test_level_filtering(capsys: pytest.CaptureFixture[str]) -> None:
    discovery_logging.configure(level="warning", fmt="json")
    structlog.get_logger().info("quiet")
    structlog.get_logger().warning("loud")
    err = capsys.readouterr().err
    assert "quiet" not in err and "loud" in err


def test_redact_keeps_structure() -> None:
    value: Any = redact({"a": [{"client_secret": "s"}, "Atza|x"], "status_code": 401})
    assert value == {"a": [{"client_secret": REDACTED}, REDACTED], "status_code": 401}
