"""Small builders for test input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


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


def stripe_line(user_id: str, **extra: Any) -> dict[str, Any]:
    return {"user_id": user_id, "provider": "stripe", "email": f"{user_id}@example.com", **extra}
