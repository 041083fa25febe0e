"""Checks shared by several commands' options."""

from __future__ import annotations


def user_id(value: str | None) -> str | None:
    """``--user``: the one user-id rule (``discoveryctl.support.user_ids``), before any SQL."""
    if value is None:
        return None
    from discoveryctl.support.user_ids import valid_user_id

    return valid_user_id(value)


def duration(value: str | None) -> float | None:
    """``--deadline 4m``: a duration like ``90s``, ``4m`` or ``1h``, in seconds."""
    if value is None:
        return None
    import re

    from discoveryctl.errors import InvalidInput

    match = re.fullmatch(r"\s*(\d{1,6})\s*([smh]?)\s*", value)
    if match is None or int(match.group(1)) == 0:
        raise InvalidInput(f"{value!r} is not a duration like 90s, 4m or 1h")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
