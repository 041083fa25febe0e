"""Checks shared by several commands' options."""

from __future__ import annotations


def user_id(value: str | None) -> str | None:
    """``--user``: the one user-id rule (``discoveryctl.support.user_ids``), before any SQL."""
    if value is None:
        return None
    from discoveryctl.support.user_ids import valid_user_id

    return valid_user_id(value)


def email(value: str | None) -> str | None:
    """``--email``: the one email rule (``discoveryctl.support.emails``), before any call."""
    if value is None:
        return None
    from discoveryctl.support.emails import valid_email

    return valid_email(value)
