"""``discoveryctl import``: good lines stored in batches, every bad one rejected with its number
and reason (docs/behaviour.md §3). A crash loses at most one batch and a re-run picks up where
it stopped: import is idempotent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from discoveryctl.db.engine import lock_for_writing
from discoveryctl.db.models import (
    Credential,
    IntegrationStatus,
    StripeCustomer,
    new_id,
    table_of,
    utcnow,
)
from discoveryctl.errors import DatabaseConflict
from discoveryctl.integrations import events, lifecycle
from discoveryctl.integrations.vocabulary import Provider, Status
from discoveryctl.support.crypto import Vault
from discoveryctl.support.logging import get_logger
from discoveryctl.support.retrying import RetryPolicy
from discoveryctl.transfer.parse import (
    AmazonLine,
    Line,
    Rejected,
    StripeLine,
    parse_line,
)

BATCH_SIZE = 2000
BATCH_AFTER_CONFLICT = RetryPolicy(first=0.2, factor=2.0, jitter=(0.25, 1.0), attempts=3)
"""The tries of one batch that met another writer (our choice): 3, with 0.05-0.2 s, then
0.1-0.4 s between them."""


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    lines_read: int = 0  # blank and rejected ones included
    # (line, user, seller before, seller now): a user's authorization replaced by another
    # seller's account. Stored as asked, but said, never silent.
    switched: list[tuple[int, str, str, str]] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return self.created + self.updated + self.unchanged

    def merge(self, other: ImportReport) -> None:
        self.created += other.created
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.rejected.extend(other.rejected)
        self.switched.extend(other.switched)

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": [{"line": n, "reason": reason} for n, reason in self.rejected],
            "switched": [
                {
                    "line": n,
                    "user_id": user,
                    "previous_selling_partner_id": before,
                    "selling_partner_id": now,
                }
                for n, user, before, now in self.switched
            ],
        }


def import_lines(
    lines: Iterable[bytes],
    session_scope: Callable[[], Any],
    vault: Vault,
    *,
    frontend_url: str,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Validate and store every line; ``session_scope()`` opens one transaction per batch.
    ``progress`` is told how many lines were read so far, blank and rejected ones included."""
    report = ImportReport()
    for batch in _batches(lines, report):
        report.merge(_store_batch(batch, session_scope, vault, frontend_url))
        if progress is not None:
            progress(report.lines_read)
    if progress is not None:
        progress(report.lines_read)  # rejected or blank lines after the last batch
    report.rejected.sort()
    if report.created + report.updated >= ANALYZE_AFTER:
        with session_scope() as session:
            refresh_statistics(session)
    return report


def _store_batch(
    batch: list[tuple[int, Line]],
    session_scope: Callable[[], Any],
    vault: Vault,
    frontend_url: str,
) -> ImportReport:
    """One batch in one transaction, tried again (``BATCH_AFTER_CONFLICT``) when another
    writer (a connect, say) stored one of these users first: the next try sees the row and
    updates it instead."""

    def store() -> ImportReport:
        stored = ImportReport()
        with session_scope() as session:
            lock_for_writing(session, "import")  # imports never race each other
            _store(session, batch, vault, frontend_url, stored)
        return stored

    def retried(attempt: int) -> None:
        get_logger().info(
            "import_batch_retried",
            first_line=batch[0][0],
            last_line=batch[-1][0],
            attempt=attempt,
        )

    try:
        return BATCH_AFTER_CONFLICT.call(store, retry_on=DatabaseConflict, on_retry=retried)
    except DatabaseConflict:
        raise DatabaseConflict(
            "another process keeps writing the same integrations: run the import again"
        ) from None


ANALYZE_AFTER = 1000
"""Rows an import must write before it refreshes the planner's statistics."""


def refresh_statistics(session: Session) -> None:
    """PostgreSQL: ANALYZE the tables an import fills, so that the next query (refresh-all's
    claims, minutes later, before autovacuum gets to it) is planned for the rows now there,
    not for an empty table. SQLite plans without statistics unless asked: nothing to do."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text("ANALYZE integration_status, credentials, stripe_customers"))


def _batches(lines: Iterable[bytes], report: ImportReport) -> Iterator[list[tuple[int, Line]]]:
    batch: list[tuple[int, Line]] = []
    for number, raw in enumerate(lines, start=1):
        report.lines_read = number
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
    stored = _Batch.read(session, batch)
    for number, line in batch:
        if isinstance(line, AmazonLine):
            previous = _seller_before(stored, line)
            outcome = _store_amazon(session, line, stored, vault, frontend_url)
            if previous is not None and previous != line.selling_partner_id:
                report.switched.append((number, line.user_id, previous, line.selling_partner_id))
                stored.events.append(
                    events.entry(
                        events.Kind.seller_switched,
                        outcome=events.FAILURE,
                        user_id=line.user_id,
                        provider=Provider.amazon.value,
                        previous_selling_partner_id=previous,
                        selling_partner_id=line.selling_partner_id,
                        source="import",
                    )
                )
        else:
            try:
                outcome = _store_stripe(session, line, stored, frontend_url)
            except Rejected as error:
                report.rejected.append((number, str(error)))
                continue
        setattr(report, outcome, getattr(report, outcome) + 1)
    stored.write(session)


def _seller_before(stored: _Batch, line: AmazonLine) -> str | None:
    """The seller whose authorization the user has now, if any."""
    integration = stored.integrations.get((line.user_id, Provider.amazon.value))
    credential = None if integration is None else stored.credentials.get(integration.id)
    return None if credential is None else credential.selling_partner_id


@dataclass(slots=True)
class _Integration:
    """An ``integration_status`` row as this batch sees it."""

    id: str
    user_id: str
    provider: str
    status: str
    meta: dict[str, Any]
    created_at: datetime | None  # only new rows need them: a stored row's are not read
    updated_at: datetime | None
    is_new: bool
    changed: bool = False

    def update_meta(self, **changes: Any) -> None:
        """As ``lifecycle.update_meta``: replace keys, drop the ones set to None."""
        merged = {**self.meta, **changes}
        self.meta = {k: v for k, v in merged.items() if v is not None}
        self.updated_at = utcnow()
        self.changed = True

    def change_status(self, session: Session, status: Status, frontend_url: str) -> bool:
        """``lifecycle.change_status`` (its event, metadata and alert rules) on this row."""
        if self.status == status:
            return False
        model = IntegrationStatus(
            id=self.id,
            user_id=self.user_id,
            provider=self.provider,
            status=self.status,
            meta=self.meta,
            updated_at=self.updated_at,
        )  # never added to the session: the batch writes the row
        lifecycle.change_status(
            session, model, status, reason="imported", frontend_url=frontend_url
        )
        self.status, self.meta, self.updated_at = str(model.status), model.meta, model.updated_at
        self.changed = True
        return True


@dataclass(slots=True)
class _Credential:
    """An integration's stored authorization; ``replaced`` holds the columns to write once a
    line brought a new one."""

    id: int | None  # None until this batch inserts it
    selling_partner_id: str
    region: str
    refresh_token: str  # encrypted
    authorized_at: datetime
    replaced: dict[str, Any] | None = None


@dataclass(slots=True)
class _Customer:
    """A ``stripe_customers`` row as this batch sees it."""

    id: int | None  # None until this batch inserts it
    user_id: str
    email: str
    customer_id: str | None
    updated_at: datetime | None = None
    changed: bool = False
    keyed: bool = False  # an idempotency key is stored: its parameters are frozen with it


@dataclass
class _Batch:
    """What one batch found stored, changed line by line in memory, then written in bulk:
    one executemany per table for the new rows (INSERT) and one for the changed rows
    (UPDATE); unchanged rows are not written. Events go in with one INSERT too; a status
    change (rare here) goes through ``lifecycle.change_status``, which records its own."""

    integrations: dict[tuple[str, str], _Integration] = field(default_factory=dict)
    credentials: dict[str, _Credential] = field(default_factory=dict)  # by integration id
    customers: dict[str, _Customer] = field(default_factory=dict)  # by user id
    owners: dict[str, str] = field(default_factory=dict)  # Stripe customer id -> user id
    events: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def read(cls, session: Session, batch: list[tuple[int, Line]]) -> _Batch:
        """The stored rows of this batch's users, and the owners of its Stripe customer ids."""
        users = {line.user_id for _, line in batch}
        customer_ids = {
            line.customer_id
            for _, line in batch
            if isinstance(line, StripeLine) and line.customer_id is not None
        }
        table, credential, customer = (
            table_of(IntegrationStatus),
            table_of(Credential),
            table_of(StripeCustomer),
        )
        # One plain, index-backed query per table: a join here can be planned as a scan of
        # credentials per batch on a PostgreSQL table not yet analysed, which grows with it.
        stored = cls()
        for row in session.execute(
            sa.select(
                table.c.id, table.c.user_id, table.c.provider, table.c.status, table.c.metadata
            ).where(table.c.user_id.in_(users))
        ):
            stored.integrations[(row.user_id, row.provider)] = _Integration(
                id=row.id,
                user_id=row.user_id,
                provider=row.provider,
                status=row.status,
                meta=row.metadata,
                created_at=None,
                updated_at=None,
                is_new=False,
            )
        amazon = [i.id for i in stored.integrations.values() if i.provider == Provider.amazon]
        for found in _rows_where(
            session,
            sa.select(
                credential.c.id,
                credential.c.integration_id,
                credential.c.selling_partner_id,
                credential.c.region,
                credential.c.refresh_token,
                credential.c.authorized_at,
            ),
            credential.c.integration_id,
            amazon,
        ):
            stored.credentials[found.integration_id] = _Credential(
                id=found.id,
                selling_partner_id=found.selling_partner_id,
                region=found.region,
                refresh_token=found.refresh_token,
                authorized_at=found.authorized_at,
            )
        columns = sa.select(
            customer.c.id,
            customer.c.user_id,
            customer.c.email,
            customer.c.customer_id,
            customer.c.idempotency_key.is_not(None).label("keyed"),
        )
        for found in _rows_where(session, columns, customer.c.user_id, users):
            stored.customers[found.user_id] = _Customer(
                id=found.id,
                user_id=found.user_id,
                email=found.email,
                customer_id=found.customer_id,
                keyed=bool(found.keyed),
            )
        for found in _rows_where(session, columns, customer.c.customer_id, customer_ids):
            stored.owners[found.customer_id] = found.user_id
        return stored

    def create(self, user_id: str, provider: Provider, status: Status, **meta: Any) -> _Integration:
        """A new integration, with the event ``lifecycle.create`` records for one."""
        now = utcnow()
        integration = _Integration(
            id=new_id(),
            user_id=user_id,
            provider=provider.value,
            status=status.value,
            meta=dict(meta),
            created_at=now,
            updated_at=now,
            is_new=True,
        )
        self.integrations[(user_id, provider.value)] = integration
        self.events.append(
            events.entry(
                events.Kind.integration_created,
                user_id=user_id,
                provider=provider.value,
                status=status.value,
            )
        )
        return integration

    def write(self, session: Session) -> None:
        """Store every new and changed row: one statement per table and kind."""
        table, credential, customer = (
            table_of(IntegrationStatus),
            table_of(Credential),
            table_of(StripeCustomer),
        )
        integrations = self.integrations.values()
        _insert(
            session,
            table,
            [
                {
                    "id": i.id,
                    "user_id": i.user_id,
                    "provider": i.provider,
                    "status": i.status,
                    "created_at": i.created_at,
                    "updated_at": i.updated_at,
                    "metadata": i.meta,
                }
                for i in integrations
                if i.is_new
            ],
        )
        _update(
            session,
            table,
            [
                {"row_id": i.id, "status": i.status, "metadata": i.meta, "updated_at": i.updated_at}
                for i in integrations
                if i.changed and not i.is_new
            ],
        )
        replaced = [
            (integration_id, c.id, c.replaced)
            for integration_id, c in self.credentials.items()
            if c.replaced is not None
        ]
        _insert(
            session,
            credential,
            [
                {"integration_id": integration_id, "created_at": columns["updated_at"]} | columns
                for integration_id, row_id, columns in replaced
                if row_id is None
            ],
        )
        _update(
            session,
            credential,
            [{"row_id": row_id} | columns for _, row_id, columns in replaced if row_id is not None],
        )
        customers = self.customers.values()
        _insert(
            session,
            customer,
            [
                {
                    "user_id": c.user_id,
                    "email": c.email,
                    "customer_id": c.customer_id,
                    "attempts": 0,
                    "created_at": c.updated_at,
                    "updated_at": c.updated_at,
                }
                for c in customers
                if c.id is None
            ],
        )
        _update(
            session,
            customer,
            [
                {
                    "row_id": c.id,
                    "email": c.email,
                    "customer_id": c.customer_id,
                    "updated_at": c.updated_at,
                }
                for c in customers
                if c.changed and c.id is not None
            ],
        )
        events.record_all(session, self.events)


def _rows_where(
    session: Session,
    query: sa.Select[Any],
    column: sa.Column[Any],
    values: Iterable[Any],
) -> Sequence[sa.Row[Any]]:
    """The rows of ``query`` whose ``column`` is one of ``values`` (no query when none)."""
    wanted = list(values)
    return session.execute(query.where(column.in_(wanted))).all() if wanted else []


def _insert(session: Session, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    if rows:
        session.execute(sa.insert(table), rows)


def _update(session: Session, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Rows keyed by ``row_id``, each setting the same columns."""
    if rows:
        session.execute(sa.update(table).where(table.c.id == sa.bindparam("row_id")), rows)


def _authorization(vault: Vault, line: AmazonLine) -> dict[str, Any]:
    """The credential columns ``store_authorization`` writes for an authorization without an
    access token: the refresh token encrypted, a new term (no cached access token, the
    expiry warning re-armed). The refresh lease is left to whoever holds it."""
    now = utcnow()
    return {
        "selling_partner_id": line.selling_partner_id,
        "region": line.region,
        "refresh_token": vault.encrypt(line.refresh_token),
        "access_token": None,
        "access_token_expires_at": None,
        "refreshed_at": None,
        "authorized_at": line.authorized_at or _now_to_the_second(),
        "expiry_warned_at": None,
        "updated_at": now,
    }


def _store_amazon(
    session: Session, line: AmazonLine, stored: _Batch, vault: Vault, frontend_url: str
) -> str:
    meta = {"selling_partner_id": line.selling_partner_id, "region": line.region}
    integration = stored.integrations.get((line.user_id, Provider.amazon.value))
    if integration is None:
        integration = stored.create(line.user_id, Provider.amazon, Status.active, **meta)
    credential = stored.credentials.get(integration.id)
    if credential is not None and _same_authorization(credential, line, vault):
        return "unchanged"
    outcome = "created" if credential is None else "updated"
    columns = _authorization(vault, line)
    stored.credentials[integration.id] = _Credential(
        id=None if credential is None else credential.id,
        selling_partner_id=columns["selling_partner_id"],
        region=columns["region"],
        refresh_token=columns["refresh_token"],
        authorized_at=columns["authorized_at"],
        replaced=columns,
    )
    integration.update_meta(**meta)
    integration.change_status(session, Status.active, frontend_url)
    stored.events.append(
        events.entry(
            events.Kind.credentials_imported,
            outcome=events.SUCCESS,
            user_id=line.user_id,
            provider=Provider.amazon.value,
            selling_partner_id=line.selling_partner_id,
            region=line.region,
        )
    )
    return outcome


def _now_to_the_second() -> datetime:
    """Consent time for a line without one; whole seconds, so exports round-trip."""
    return utcnow().replace(microsecond=0)


def _same_authorization(credential: _Credential, line: AmazonLine, vault: Vault) -> bool:
    return (
        credential.selling_partner_id == line.selling_partner_id
        and credential.region == line.region
        and (line.authorized_at is None or credential.authorized_at == line.authorized_at)
        and vault.decrypt(credential.refresh_token) == line.refresh_token
    )


def _store_stripe(session: Session, line: StripeLine, stored: _Batch, frontend_url: str) -> str:
    customer = stored.customers.get(line.user_id)
    if (
        customer is not None
        and customer.customer_id
        and line.customer_id
        and customer.customer_id != line.customer_id
    ):
        raise Rejected(f"user {line.user_id} already has Stripe customer {customer.customer_id}")
    if line.customer_id is not None:
        owner = stored.owners.get(line.customer_id)
        if owner is not None and owner != line.user_id:
            raise Rejected(f"Stripe customer {line.customer_id} belongs to user {owner}")
    if (
        customer is not None
        and customer.keyed
        and not customer.customer_id
        and line.customer_id is None
        and customer.email != line.email
    ):
        # Its idempotency key was minted for the stored email: a retry with another one would
        # be refused by Stripe (IdempotencyError), so the change is reported, not applied.
        raise Rejected(
            f"user {line.user_id}'s Stripe customer is being created for {customer.email}, "
            f"not {line.email}"
        )

    if customer is None:
        customer = _Customer(
            id=None,
            user_id=line.user_id,
            email=line.email,
            customer_id=line.customer_id,
            updated_at=utcnow(),
        )
        stored.customers[line.user_id] = customer
        outcome = "created"
    elif customer.email == line.email and (
        line.customer_id is None or customer.customer_id == line.customer_id
    ):
        outcome = "unchanged"
    else:
        customer.email = line.email
        customer.customer_id = customer.customer_id or line.customer_id
        customer.updated_at = utcnow()
        customer.changed = True
        outcome = "updated"
    if customer.customer_id:
        stored.owners[customer.customer_id] = line.user_id
    status = Status.active if customer.customer_id else Status.pending
    integration = stored.integrations.get((line.user_id, Provider.stripe.value))
    if integration is None:
        stored.create(line.user_id, Provider.stripe, status)
        return outcome
    if integration.change_status(session, status, frontend_url):
        return "updated" if outcome == "unchanged" else outcome
    return outcome
