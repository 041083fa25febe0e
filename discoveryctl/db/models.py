"""Tables of docs/behaviour.md §4. ``integration_status`` is exactly what the API exposes;
secrets live apart in ``credentials``, encrypted."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite returns naive values)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def bind_processor(self, dialect: sa.Dialect) -> Callable[[Any], Any] | None:
        """On SQLite, ``process_bind_param`` and SQLAlchemy's text form of a DATETIME
        ("YYYY-MM-DD HH:MM:SS.ffffff", UTC) in one step: its own formatter builds a dict for
        every value, a tenth of a 100,000-line import's time."""
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def process(value: datetime | None) -> str | None:
            if value is None or value.tzinfo is not UTC:  # UTC already: the usual case
                value = self.process_bind_param(value, dialect)
                if value is None:
                    return None
            return value.isoformat(" ", "microseconds")[:-6]  # without "+00:00"

        return process

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JSONDocument(sa.types.TypeDecorator[Any]):
    """JSON; JSONB on PostgreSQL. Its dialect module is loaded only there: importing it
    costs every SQLite command about 30 ms of start-up."""

    impl = sa.JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(sa.JSON())


BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


def table_of(model: type[Base]) -> sa.Table:
    """The Core table behind a model, for fast bulk reads and writes."""
    table = model.__table__
    assert isinstance(table, sa.Table)
    return table


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    metadata = sa.MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
        }
    )


class IntegrationStatus(Base):
    """One row per user and provider: the status the front end shows."""

    __tablename__ = "integration_status"
    __table_args__ = (
        sa.UniqueConstraint("user_id", "provider"),
        sa.Index(None, "provider", "status"),
    )

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(sa.String(255))
    provider: Mapped[str] = mapped_column(sa.String(32))
    status: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONDocument, default=dict)


class Credential(Base):
    """An Amazon authorization: encrypted tokens, never exposed, plus the refresh lease."""

    __tablename__ = "credentials"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    integration_id: Mapped[str] = mapped_column(
        sa.String(36), sa.ForeignKey("integration_status.id", ondelete="CASCADE"), unique=True
    )
    selling_partner_id: Mapped[str] = mapped_column(sa.String(64))
    region: Mapped[str] = mapped_column(sa.String(8))
    refresh_token: Mapped[str] = mapped_column(sa.Text)
    access_token: Mapped[str | None] = mapped_column(sa.Text)
    access_token_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    authorized_at: Mapped[datetime] = mapped_column(UTCDateTime)
    refreshed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expiry_warned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(sa.String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # After a failed refresh, not before this time (backoff between runs).
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # SP-API seller checks this authorization may still make, as of check_allowance_at (a
    # token bucket: see amazon.check.allowance); NULL: never checked, a full burst.
    check_allowance: Mapped[float | None] = mapped_column(sa.Float)
    check_allowance_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the authorization was marked gone on the SP-API's word alone (two fresh tokens
    # refused: amazon.check); refresh-all looks at it again until the SP-API takes a fresh
    # token or LWA decides. NULL: not so marked.
    refused_by_spapi_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    integration: Mapped[IntegrationStatus] = relationship()


class OAuthState(Base):
    """A consent ``state`` issued to one user and region; consumed once on callback."""

    __tablename__ = "oauth_states"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(sa.String(255))
    region: Mapped[str] = mapped_column(sa.String(8))
    flow: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    consumed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    login_confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """When the login-URI step was confirmed for this state (once per state)."""


class Event(Base):
    """Append-only audit history: every attempt, outcome and transition."""

    __tablename__ = "events"
    __table_args__ = (
        sa.Index(None, "user_id", "occurred_at"),
        sa.Index(None, "kind", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    user_id: Mapped[str | None] = mapped_column(sa.String(255))
    provider: Mapped[str | None] = mapped_column(sa.String(32))
    kind: Mapped[str] = mapped_column(sa.String(64))
    outcome: Mapped[str] = mapped_column(sa.String(16))
    error_type: Mapped[str | None] = mapped_column(sa.String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)


class Notification(Base):
    """A message for a user or the admins; one open notification per dedupe key."""

    __tablename__ = "notifications"
    __table_args__ = (
        sa.Index(
            "uq_notifications_open_dedupe_key",
            "dedupe_key",
            unique=True,
            sqlite_where=sa.text("resolved_at IS NULL"),
            # postgresql_where: added by for_postgresql(), when PostgreSQL is used
        ),
        sa.Index(None, "audience", "user_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    audience: Mapped[str] = mapped_column(sa.String(8))
    user_id: Mapped[str | None] = mapped_column(sa.String(255))
    provider: Mapped[str | None] = mapped_column(sa.String(32))
    kind: Mapped[str] = mapped_column(sa.String(64))
    title: Mapped[str] = mapped_column(sa.String(200))
    message: Mapped[str] = mapped_column(sa.Text)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    dedupe_key: Mapped[str] = mapped_column(sa.String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AlertDelivery(Base):
    """The admin webhook's outbox: one row for each state (open, resolved) of an admin
    notification, written in the transaction that opened or resolved it, and posted by
    whichever process drains the outbox first (under a lease, so by one only)."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (
        sa.UniqueConstraint("notification_id", "state"),
        sa.Index(None, "outcome", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(sa.String(36), unique=True)
    notification_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("notifications.id"))
    state: Mapped[str] = mapped_column(sa.String(8))  # open, resolved
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    outcome: Mapped[str | None] = mapped_column(sa.String(16))  # None while pending
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    lease_owner: Mapped[str | None] = mapped_column(sa.String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class StripeCustomer(Base):
    """A user's Stripe customer: created exactly once, with a persisted idempotency key."""

    __tablename__ = "stripe_customers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(sa.String(255), unique=True)
    email: Mapped[str] = mapped_column(sa.String(320))
    name: Mapped[str | None] = mapped_column(sa.String(255))
    customer_id: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(64))
    idempotency_key_created_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    # Stripe refused the parameters (a 400 it did not keep): no run sends them again
    parameters_refused_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(sa.String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def for_postgresql() -> None:
    """The PostgreSQL options of the models, set when a PostgreSQL engine is made: naming
    them in the model would load PostgreSQL's dialect into every command (19 ms)."""
    for index in table_of(Notification).indexes:
        if index.name == "uq_notifications_open_dedupe_key":
            index.dialect_kwargs["postgresql_where"] = sa.text("resolved_at IS NULL")
