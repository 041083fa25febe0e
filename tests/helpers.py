"""Small builders for test input, and shortcuts that put integrations in a given state."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from discoveryctl.db.engine import Database
from discoveryctl.integrations import lifecycle
from discoveryctl.integrations.vocabulary import Status

FRONTEND = "http://localhost:3000"

SEED_FIELDS = {
    "id",
    "user_id",
    "provider",
    "status",
    "updated_at",
    "metadata",
    "lastSyncedAt",
    "message",
}
"""An integration's fields in the API's ``data`` (docs/behaviour.md §4), as `status --json` and the
API give it."""


def write_lines(path: Path, *lines: dict[str, Any] | str) -> Path:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    )
    return path


def amazon_line(user_id: str, token: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "provider": "amazon",
        "refresh_token": token or f"Atzr|IwEBI-{user_id}-refresh-token-value",
        "selling_partner_id": "A" + hashlib.sha256(user_id.encode()).hexdigest()[:13].upper(),
        "region": "na",
        **extra,
    }


def import_sellers(
    cli: Any, sandbox: Any, tmp_path: Path, count: int, prefix: str = "u"
) -> list[Any]:
    known = [sandbox.state.add_seller() for _ in range(count)]
    lines = []
    for number, seller in enumerate(known):
        line = amazon_line(f"{prefix}{number}", seller.refresh_token)
        line["selling_partner_id"] = seller.selling_partner_id
        lines.append(line)
    result = cli("import", str(write_lines(tmp_path / f"{prefix}.jsonl", *lines)))
    assert result.exit_code == 0, result.stderr
    return known


def stripe_line(user_id: str, **extra: Any) -> dict[str, Any]:
    return {"user_id": user_id, "provider": "stripe", "email": f"{user_id}@example.com", **extra}


def set_status(url: str, user: str, status: Status) -> None:
    """Move ``user``'s Amazon integration to ``status``, as a real transition does."""
    database = Database(url)
    with database.session() as session:
        integration = lifecycle.find(session, user, "amazon")
        assert integration is not None
        lifecycle.change_status(session, integration, status, reason="test", frontend_url=FRONTEND)
    database.dispose()


def fail_transiently(url: str, user: str, times: int) -> None:
    """Record ``times`` transient refresh failures on ``user``'s Amazon integration."""
    database = Database(url)
    with database.session() as session:
        integration = lifecycle.find(session, user, "amazon")
        assert integration is not None
        for _ in range(times):
            lifecycle.record_transient_failure(
                session, integration, error_type="lwa_timeout", message="timed out after 10s"
            )
    database.dispose()


def app_for(sandbox: Any, **changes: str) -> Any:
    """The SP-API app registered at ``sandbox``, pointed at it, with ``changes``."""
    from discoveryctl.providers.lwa import AmazonApp
    from discoveryctl.sandbox.lwa import TOKEN_PATH

    settings = {
        "client_id": sandbox.config.client_id,
        "client_secret": sandbox.config.client_secret,
        "application_id": sandbox.config.application_id,
        "redirect_uri": sandbox.config.redirect_uris[0],
        "token_url": sandbox.url + TOKEN_PATH,
        "spapi_url": sandbox.url,
    }
    return AmazonApp(**(settings | changes))


def with_params(url: str, **changes: str | None) -> str:
    """``url`` with query parameters replaced, added, or (``None``) taken out."""
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    for key, value in changes.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = value
    return parts._replace(query=urlencode(query)).geturl()


def state_of(url: str) -> str:
    """The ``state`` an OAuth address carries."""
    return parse_qs(urlsplit(url).query)["state"][0]
