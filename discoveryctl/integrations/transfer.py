"""Import and export of integrations as JSON lines (SPEC §3).

One integration a line::

    {"user_id": "u1", "provider": "amazon", "refresh_token": "Atzr|…",
     "selling_partner_id": "A2EUQ1WTGCTBG2", "region": "na",
     "authorized_at": "2026-01-02T03:04:05Z"}
    {"user_id": "u2", "provider": "stripe", "email": "a@example.com", "customer_id": "cus_…"}

Every bad line is rejected with its number and reason; good lines are stored in batches, so
a crash loses at most one batch and a re-run picks up where it stopped (import is idempotent).
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from discoveryctl import events
from discoveryctl.credentials import store_authorization
from discoveryctl.crypto import Vault
from discoveryctl.db.engine import lock_for_writing
from discoveryctl.db.models import (
    Credential,
    IntegrationStatus,
    StripeCustomer,
    table_of,
    utcnow,
)
from discoveryctl.errors import DatabaseConflict
from discoveryctl.integrations import lifecycle
from discoveryctl.integrations.health import Provider, Region, Status
from discoveryctl.logging import get_logger
from discoveryctl.user_ids import refusal_of, valid_user_id

BATCH_SIZE = 500
BATCH_ATTEMPTS = 3
MAX_LINE_BYTES = 64 * 1024

_AMAZON_FIELDS = {"user_id", "provider", "refresh_token", "selling_partner_id", "region"}
_AMAZON_OPTIONAL = {"authorized_at"}
_STRIPE_FIELDS = {"user_id", "provider", "email"}
_STRIPE_OPTIONAL = {"customer_id"}
_SELLER_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_CUSTOMER_ID = re.compile(r"^cus_[A-Za-z0-9]{1,60}$")


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


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return self.created + self.updated + self.unchanged

    def merge(self, other: ImportReport) -> None:
        self.created += other.created
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.rejected.extend(other.rejected)

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": [{"line": n, "reason": reason} for n, reason in self.rejected],
        }


# -- parsing ----------------------------------------------------------------------------------


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
        if not _EMAIL.match(email) or len(email) > 320:
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
    if any(ord(c) < 32 for c in value):
        raise Rejected(f"{name} contains control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Rejected(f"{name} is not valid Unicode (a lone surrogate)") from None
    return value.strip()


def _user_id(data: dict[str, Any]) -> str:
    """The one user-id rule (``discoveryctl.user_ids``), as for ``--user``."""
    user_id = _text(data, "user_id")
    refusal = refusal_of(user_id)
    if refusal is not None:
        raise Rejected(f"user_id is not acceptable: {refusal}")
    return valid_user_id(user_id)


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


# -- storing ----------------------------------------------------------------------------------


def import_lines(
    lines: Iterable[bytes],
    session_scope: Callable[[], Any],
    vault: Vault,
    *,
    frontend_url: str,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Validate and store every line; ``session_scope()`` opens one transaction per batch."""
    report = ImportReport()
    for batch in _batches(lines, report):
        for attempt in range(1, BATCH_ATTEMPTS + 1):
            stored = ImportReport()
            try:
                with session_scope() as session:
                    lock_for_writing(session, "import")  # imports never race each other
                    _store(session, batch, vault, frontend_url, stored)
            except DatabaseConflict:
                # Another writer (a connect, say) stored one of these users first: the next
                # attempt sees the row and updates it instead.
                if attempt == BATCH_ATTEMPTS:
                    raise DatabaseConflict(
                        "another process keeps writing the same integrations: run the import again"
                    ) from None
                get_logger().info(
                    "import_batch_retried",
                    first_line=batch[0][0],
                    last_line=batch[-1][0],
                    attempt=attempt,
                )
                time.sleep(random.uniform(0.05, 0.2) * attempt)
                continue
            report.merge(stored)
            break
        if progress is not None:
            progress(len(batch))
    report.rejected.sort()
    return report


def _batches(lines: Iterable[bytes], report: ImportReport) -> Iterator[list[tuple[int, Line]]]:
    batch: list[tuple[int, Line]] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            batch.append((number, parse_line(raw.rstrip(b"\r\n"))))
        except Rejected as error:
            report.rejected.append((number, str(error)))
            continue
        if len(batch) >= BATCH_SIZE:
            yield batch
            batch = []
    if batch:
        yield batch


def _store(
    session: Session,
    batch: list[tuple[int, Line]],
    vault: Vault,
    frontend_url: str,
    report: ImportReport,
) -> None:
    users = {line.user_id for _, line in batch}
    integrations = {
        (row.user_id, row.provider): row
        for row in session.scalars(
            sa.select(IntegrationStatus).where(IntegrationStatus.user_id.in_(users))
        )
    }
    credentials = {
        row.integration_id: row
        for row in session.scalars(
            sa.select(Credential).where(
                Credential.integration_id.in_([i.id for i in integrations.values()])
            )
        )
    }
    customers = {
        row.user_id: row
        for row in session.scalars(
            sa.select(StripeCustomer).where(StripeCustomer.user_id.in_(users))
        )
    }
    for number, line in batch:
        if isinstance(line, AmazonLine):
            outcome = _store_amazon(session, line, integrations, credentials, vault, frontend_url)
        else:
            try:
                outcome = _store_stripe(session, line, integrations, customers, frontend_url)
            except Rejected as error:
                report.rejected.append((number, str(error)))
                continue
        setattr(report, outcome, getattr(report, outcome) + 1)


def _store_amazon(
    session: Session,
    line: AmazonLine,
    integrations: dict[tuple[str, str], IntegrationStatus],
    credentials: dict[str, Credential],
    vault: Vault,
    frontend_url: str,
) -> str:
    key = (line.user_id, Provider.amazon.value)
    integration = integrations.get(key)
    meta = {"selling_partner_id": line.selling_partner_id, "region": line.region}
    if integration is None:
        integration = lifecycle.create(
            session, line.user_id, Provider.amazon, Status.active, **meta
        )
        integrations[key] = integration
    credential = credentials.get(integration.id)
    if credential is not None and _same_authorization(credential, line, vault):
        return "unchanged"
    credentials[integration.id] = store_authorization(
        session,
        integration,
        vault,
        selling_partner_id=line.selling_partner_id,
        region=line.region,
        refresh_token=line.refresh_token,
        authorized_at=line.authorized_at or _now_to_the_second(),
        credential=credential,
    )
    outcome = "created" if credential is None else "updated"
    lifecycle.update_meta(integration, **meta)
    lifecycle.change_status(
        session, integration, Status.active, reason="imported", frontend_url=frontend_url
    )
    events.record(
        session,
        "credentials_imported",
        outcome=events.SUCCESS,
        user_id=line.user_id,
        provider=Provider.amazon,
        selling_partner_id=line.selling_partner_id,
        region=line.region,
    )
    return outcome


def _now_to_the_second() -> datetime:
    """Consent time for a line without one; whole seconds, so exports round-trip."""
    return utcnow().replace(microsecond=0)


def _same_authorization(credential: Credential, line: AmazonLine, vault: Vault) -> bool:
    return (
        credential.selling_partner_id == line.selling_partner_id
        and credential.region == line.region
        and (line.authorized_at is None or credential.authorized_at == line.authorized_at)
        and vault.decrypt(credential.refresh_token) == line.refresh_token
    )


def _store_stripe(
    session: Session,
    line: StripeLine,
    integrations: dict[tuple[str, str], IntegrationStatus],
    customers: dict[str, StripeCustomer],
    frontend_url: str,
) -> str:
    customer = customers.get(line.user_id)
    if (
        customer is not None
        and customer.customer_id
        and line.customer_id
        and customer.customer_id != line.customer_id
    ):
        raise Rejected(f"user {line.user_id} already has Stripe customer {customer.customer_id}")
    if line.customer_id is not None:
        owner = session.scalars(
            sa.select(StripeCustomer.user_id).where(StripeCustomer.customer_id == line.customer_id)
        ).first()
        if owner is not None and owner != line.user_id:
            raise Rejected(f"Stripe customer {line.customer_id} belongs to user {owner}")

    key = (line.user_id, Provider.stripe.value)
    integration = integrations.get(key)
    if customer is None:
        customer = StripeCustomer(
            user_id=line.user_id, email=line.email, customer_id=line.customer_id, attempts=0
        )
        session.add(customer)
        customers[line.user_id] = customer
        outcome = "created"
    elif customer.email == line.email and (
        line.customer_id is None or customer.customer_id == line.customer_id
    ):
        outcome = "unchanged"
    else:
        customer.email = line.email
        customer.customer_id = customer.customer_id or line.customer_id
        customer.updated_at = utcnow()
        outcome = "updated"
    status = Status.active if customer.customer_id else Status.pending
    if integration is None:
        integrations[key] = lifecycle.create(session, line.user_id, Provider.stripe, status)
        return outcome
    if lifecycle.change_status(
        session, integration, status, reason="imported", frontend_url=frontend_url
    ):
        return "updated" if outcome == "unchanged" else outcome
    return outcome


# -- export -----------------------------------------------------------------------------------


def export_lines(
    session: Session, vault: Vault | None, *, batch_size: int = 1000
) -> Iterator[dict[str, Any]]:
    """Every integration as an import line; refresh tokens only when a vault is given."""
    table, credential, customer = (
        table_of(IntegrationStatus),
        table_of(Credential),
        table_of(StripeCustomer),
    )
    query = (
        sa.select(
            table.c.user_id,
            table.c.provider,
            credential.c.selling_partner_id,
            credential.c.region,
            credential.c.authorized_at,
            credential.c.refresh_token,
            customer.c.email,
            customer.c.customer_id,
        )
        .select_from(table)
        .outerjoin(credential, credential.c.integration_id == table.c.id)
        .outerjoin(
            customer,
            sa.and_(customer.c.user_id == table.c.user_id, table.c.provider == Provider.stripe),
        )
        .order_by(table.c.user_id, table.c.provider)
        .execution_options(yield_per=batch_size)
    )
    for row in session.execute(query):
        if row.provider == Provider.amazon and row.selling_partner_id is not None:
            line: dict[str, Any] = {
                "user_id": row.user_id,
                "provider": row.provider,
                "selling_partner_id": row.selling_partner_id,
                "region": row.region,
                "authorized_at": row.authorized_at.isoformat().replace("+00:00", "Z"),
            }
            if vault is not None:
                line["refresh_token"] = vault.decrypt(row.refresh_token)
            yield line
        elif row.provider == Provider.stripe and row.email is not None:
            line = {"user_id": row.user_id, "provider": row.provider, "email": row.email}
            if row.customer_id:
                line["customer_id"] = row.customer_id
            yield line
