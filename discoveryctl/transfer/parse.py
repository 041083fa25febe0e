"""The import format: JSON lines, one integration a line (docs/behaviour.md §3)::

    {"user_id": "u1", "provider": "amazon", "refresh_token": "Atzr|…",
     "selling_partner_id": "A2EUQ1WTGCTBG2", "region": "na",
     "authorized_at": "2026-01-02T03:04:05Z"}
    {"user_id": "u2", "provider": "stripe", "email": "a@example.com", "customer_id": "cus_…"}

Reading lines from a file of any size, and each line checked into an ``AmazonLine`` or a
``StripeLine``, or ``Rejected`` with the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO

from discoveryctl.db.models import (
    utcnow,
)
from discoveryctl.errors import InvalidInput
from discoveryctl.integrations.vocabulary import Provider, Region
from discoveryctl.support.emails import is_email
from discoveryctl.support.user_ids import refusal_of, valid_user_id

MAX_LINE_BYTES = 64 * 1024

_AMAZON_FIELDS = {"user_id", "provider", "refresh_token", "selling_partner_id", "region"}
_AMAZON_OPTIONAL = {"authorized_at"}
_STRIPE_FIELDS = {"user_id", "provider", "email"}
_STRIPE_OPTIONAL = {"customer_id"}
_SELLER_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_CUSTOMER_ID = re.compile(r"^cus_[A-Za-z0-9]{1,60}$")
_AMAZON = Provider.amazon.value
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f]")


class Rejected(ValueError):
    """One input line is unusable; the message says why."""


@dataclass(frozen=True)
class AmazonLine:
    user_id: str
    refresh_token: str
    selling_partner_id: str
    region: str
    authorized_at: datetime | None


@dataclass(frozen=True)
class StripeLine:
    user_id: str
    email: str
    customer_id: str | None


Line = AmazonLine | StripeLine


def parse_line(raw: bytes) -> Line:
    """One line of input, validated; raises ``Rejected`` with the reason."""
    if len(raw) > MAX_LINE_BYTES:
        raise Rejected(f"line is longer than {MAX_LINE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("not valid UTF-8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise Rejected(f"not valid JSON ({error.msg} at column {error.colno})") from None
    except RecursionError:
        raise Rejected("not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise Rejected("expected a JSON object")
    provider = data.get("provider")
    if provider == Provider.amazon:
        _check_fields(data, _AMAZON_FIELDS, _AMAZON_OPTIONAL)
        region = _text(data, "region")
        if region not in Region.__members__:
            raise Rejected(f"region must be one of na, eu, fe, not {region!r}")
        seller = _text(data, "selling_partner_id")
        if not _SELLER_ID.match(seller):
            raise Rejected("selling_partner_id must be letters, digits, '.', '_' or '-'")
        return AmazonLine(
            user_id=_user_id(data),
            refresh_token=_text(data, "refresh_token"),
            selling_partner_id=seller,
            region=region,
            authorized_at=_moment(data, "authorized_at"),
        )
    if provider == Provider.stripe:
        _check_fields(data, _STRIPE_FIELDS, _STRIPE_OPTIONAL)
        email = _text(data, "email")
        if not is_email(email):
            raise Rejected(f"email {email!r} is not an email address")
        customer_id = data.get("customer_id")
        if customer_id is not None and (
            not isinstance(customer_id, str) or not _CUSTOMER_ID.match(customer_id)
        ):
            raise Rejected("customer_id must look like cus_…")
        return StripeLine(user_id=_user_id(data), email=email, customer_id=customer_id)
    if provider is None:
        raise Rejected("missing field provider")
    raise Rejected(f"provider must be amazon or stripe, not {provider!r}")


def _check_fields(data: dict[str, Any], required: set[str], optional: set[str]) -> None:
    missing = sorted(required - data.keys())
    if missing:
        raise Rejected(f"missing field {', '.join(missing)}")
    unknown = sorted(data.keys() - required - optional)
    if unknown:
        raise Rejected(f"unknown field {', '.join(unknown)}")


def _text(data: dict[str, Any], name: str) -> str:
    value = data[name]
    if not isinstance(value, str) or not value.strip():
        raise Rejected(f"{name} must be a non-empty string")
    if _CONTROL_CHARACTER.search(value):
        raise Rejected(f"{name} contains control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Rejected(f"{name} is not valid Unicode (a lone surrogate)") from None
    return value.strip()


def _user_id(data: dict[str, Any]) -> str:
    """The one user-id rule (``discoveryctl.support.user_ids``), on the id as given, as for
    ``--user`` (stripping first would let through what the rule refuses, e.g. a trailing U+0085)."""
    user_id = data["user_id"]
    if not isinstance(user_id, str):
        raise Rejected("user_id must be a non-empty string")
    try:
        return valid_user_id(user_id)
    except InvalidInput:
        raise Rejected(f"user_id is not acceptable: {refusal_of(user_id)}") from None


def _moment(data: dict[str, Any], name: str) -> datetime | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Rejected(f"{name} must be an ISO 8601 time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise Rejected(f"{name} {value!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise Rejected(f"{name} needs a timezone, e.g. {value}Z")
    if moment > utcnow():
        raise Rejected(f"{name} is in the future")
    return moment.astimezone(UTC)


UTF8_BOM = b"\xef\xbb\xbf"
_CHUNK = 1 << 20


def read_lines(stream: BinaryIO) -> Iterator[bytes]:
    """The lines of ``stream``, each holding at most ``MAX_LINE_BYTES + 1`` bytes in memory:
    of a longer line only that much is kept (``parse_line`` rejects it), the rest is read
    past. A UTF-8 byte order mark at the start (as some editors save) is dropped."""
    first = True
    while True:
        line = stream.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if first:
            line = line.removeprefix(UTF8_BOM)
            first = False
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            rest = stream.readline(_CHUNK)
            while rest and not rest.endswith(b"\n"):
                rest = stream.readline(_CHUNK)
        yield line


def count_lines(stream: BinaryIO) -> int:
    """How many lines a seekable stream holds (read in chunks; the position is kept)."""
    start = stream.tell()
    count, last = 0, b"\n"
    while chunk := stream.read(_CHUNK):
        count += chunk.count(b"\n")
        last = chunk[-1:]
    stream.seek(start)
    return count + (last != b"\n")
