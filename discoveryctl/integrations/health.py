"""Integration health over a window, from ``events`` and the status table
(docs/behaviour.md §7): rates, counts and alerts.

Every figure is counted from event kinds (``events.Kind``) and outcomes, on the database's
clock, in one grouped read of the window's events.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from discoveryctl.db.engine import database_now
from discoveryctl.db.models import Event, IntegrationStatus, table_of
from discoveryctl.integrations.events import FAILURE, Kind
from discoveryctl.integrations.vocabulary import Provider, Status


@dataclass(frozen=True)
class Thresholds:
    """The alerts (docs/behaviour.md §7): above these shares, an alert fires."""

    revoked_per_hour: float = 0.05  # of active Amazon integrations, per hour of the window
    stripe_failures: float = 0.10  # of Stripe customer creations
    callback_failures: float = 0.15  # of OAuth callbacks
    api_errors: float = 0.01  # of calls to LWA, SP-API and Stripe


@dataclass(frozen=True)
class Rate:
    """How many of something succeeded and failed."""

    succeeded: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        return self.succeeded + self.failed

    @property
    def failure_rate(self) -> float | None:
        return self.failed / self.total if self.total else None

    def as_dict(self) -> dict[str, Any]:
        share = self.failure_rate
        return {
            "succeeded": self.succeeded,
            "failed": self.failed,
            "success_rate": None if share is None else round(1 - share, 4),
        }


@dataclass(frozen=True)
class Alert:
    name: str
    value: float | None
    threshold: float
    detail: str

    @property
    def firing(self) -> bool:
        return self.value is not None and self.value > self.threshold

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "firing": self.firing,
            "value": None if self.value is None else round(self.value, 4),
            "threshold": self.threshold,
            "detail": self.detail,
        }


@dataclass
class Health:
    """What ``compute`` found over the window ending ``now``."""

    window: timedelta
    now: datetime
    statuses: dict[str, dict[str, int]]
    callbacks: Rate
    refreshes: Rate
    stripe: Rate
    stripe_attempts: int  # every create sent, failed or not
    calls: Rate  # every call to a provider whose outcome was recorded
    api_errors: int  # calls that failed on the provider's side: 5xx, timeouts, connections
    auth_errors: int  # answers 401 or 403
    timeouts: int
    retries: int
    revoked: int  # integrations that became revoked in the window
    alerts: list[Alert] = field(default_factory=list)
    failures_by_period: list[int] = field(default_factory=list)  # oldest first, equal periods

    @property
    def firing(self) -> list[Alert]:
        return [alert for alert in self.alerts if alert.firing]

    def as_dict(self) -> dict[str, Any]:
        calls = self.calls.total
        return {
            "window_seconds": int(self.window.total_seconds()),
            "until": self.now.isoformat(),
            "statuses": self.statuses,
            "oauth_callbacks": self.callbacks.as_dict(),
            "token_refreshes": self.refreshes.as_dict(),
            "stripe_customers": {
                **self.stripe.as_dict(),
                # per customer finished in the window: created, adopted or given up on
                "average_attempts": (
                    round(self.stripe_attempts / self.stripe.total, 2)
                    if self.stripe.total
                    else None
                ),
            },
            "calls": calls,
            "api_error_rate": round(self.api_errors / calls, 4) if calls else None,
            "auth_error_rate": round(self.auth_errors / calls, 4) if calls else None,
            "timeout_rate": round(self.timeouts / calls, 4) if calls else None,
            "retries": self.retries,
            "revoked": self.revoked,
            "alerts": [alert.as_dict() for alert in self.alerts],
            "failures_by_period": {
                "period_seconds": 3600 * hours_per_period(self.window),
                "counts": self.failures_by_period,
            },
        }


_CALLS_SUCCEEDED = (
    Kind.oauth_callback_succeeded,
    Kind.token_refreshed,
    Kind.seller_checked,
    Kind.stripe_customer_created,
)
_CALLS_FAILED = (
    Kind.oauth_callback_failed,
    Kind.token_refresh_failed,
    Kind.token_refresh_retried,
    Kind.seller_check_failed,
    Kind.stripe_customer_attempt,
    Kind.stripe_customer_refused,  # a failed call, not a failed customer: no Stripe alert
)
_PROVIDER_SIDE = ("server_error", "timeout", "connection_error", "bad_response", "outcome_unknown")
"""Error types that are the provider's failing, not the seller's or ours."""


SPLIT_AT = 200_000
"""Events in a window past which SQLite reads it in two halves at once."""


def compute(
    session: Session,
    window: timedelta,
    thresholds: Thresholds = Thresholds(),
    *,
    split_at: int = SPLIT_AT,
) -> Health:
    """Health over the ``window`` that ends now, by the database's clock."""
    now = database_now(session)
    since = now - window
    event = table_of(Event)
    is_failure = event.c.outcome == FAILURE
    # Read from the JSON detail, and placed in an hour, only where it counts: a failure's
    # HTTP status and hour, a transition's new status (half the time over a million events).
    status = sa.case((is_failure, event.c.detail["http_status"].as_string()))
    moved_to = sa.case((event.c.kind == Kind.status_changed, event.c.detail["to"].as_string()))
    bucket = sa.case((is_failure, _hour(session)))
    grouped = (
        sa.select(
            event.c.kind,
            event.c.outcome,
            event.c.error_type,
            status,
            moved_to,
            bucket,
            sa.func.count(),
        )
        .select_from(event)
        .group_by(event.c.kind, event.c.outcome, event.c.error_type, status, moved_to, bucket)
    )
    rows = _grouped_rows(session, grouped, since, now, split_at)
    kinds: Counter[str] = Counter()
    failures_by_hour: Counter[str] = Counter()
    api_errors = auth_errors = timeouts = revoked = 0
    for kind, outcome, error_type, http_status, to, hour, count in rows:
        kinds[kind] += count
        if hour is not None:
            failures_by_hour[hour] += count
        if kind in _CALLS_FAILED and outcome == FAILURE:
            kind_of_error = error_type or ""
            if kind_of_error.endswith(_PROVIDER_SIDE):
                api_errors += count
            if kind_of_error.endswith("timeout"):
                timeouts += count
            if http_status in ("401", "403"):
                auth_errors += count
        if kind == Kind.status_changed and to == Status.revoked:
            revoked += count
    succeeded = sum(kinds[k] for k in _CALLS_SUCCEEDED)
    failed = sum(kinds[k] for k in _CALLS_FAILED)
    health = Health(
        window=window,
        now=now,
        statuses=_statuses(session),
        callbacks=Rate(kinds[Kind.oauth_callback_succeeded], kinds[Kind.oauth_callback_failed]),
        refreshes=Rate(kinds[Kind.token_refreshed], kinds[Kind.token_refresh_failed]),
        stripe=Rate(
            kinds[Kind.stripe_customer_created] + kinds[Kind.stripe_customer_adopted],
            kinds[Kind.stripe_customer_failed],
        ),
        stripe_attempts=kinds[Kind.stripe_customer_created] + kinds[Kind.stripe_customer_attempt],
        calls=Rate(succeeded, failed),
        api_errors=api_errors,
        auth_errors=auth_errors,
        timeouts=timeouts,
        # A Stripe user's failed tries, less the last one of a user given up on (recorded
        # as an attempt too, but not retried); LWA's retries are recorded as such.
        retries=kinds[Kind.token_refresh_retried]
        + max(kinds[Kind.stripe_customer_attempt] - kinds[Kind.stripe_customer_failed], 0),
        revoked=revoked,
    )
    health.alerts = _alerts(health, thresholds)
    health.failures_by_period = _by_period(failures_by_hour, now, window)
    return health


def _grouped_rows(
    session: Session, grouped: sa.Select[Any], since: datetime, until: datetime, split_at: int
) -> list[Any]:
    """``grouped``'s counts over the window. PostgreSQL reads a big window in parallel
    itself; SQLite runs one query on one core, about a microsecond an event: past
    ``split_at`` events the window is cut in two by event id, each half read on a connection
    of its own at once (SQLite lets go of the interpreter while it steps, and WAL lets
    readers read together), by the primary key: rows in id order, near enough the order they
    were written in. The halves' counts add up: the caller sums rows by key."""
    event = table_of(Event)
    in_window = sa.and_(event.c.occurred_at >= since, event.c.occurred_at <= until)
    if session.get_bind().dialect.name != "sqlite":
        return list(session.execute(grouped.where(in_window)).all())
    lowest, highest, count = session.execute(  # from the time index alone: no row is read
        sa.select(sa.func.min(event.c.id), sa.func.max(event.c.id), sa.func.count()).where(
            in_window
        )
    ).one()
    if count < split_at:
        return list(session.execute(grouped.where(in_window)).all())
    from concurrent.futures import ThreadPoolExecutor

    # A unary + keeps SQLite off the time index, for the id range ("The SQLite Query
    # Optimizer Overview", disqualifying WHERE clause terms): every row of a half is read
    # either way, and in id order they come off the disk in order.
    occurred = sa.literal_column("+events.occurred_at", type_=event.c.occurred_at.type)
    window = sa.and_(occurred >= since, occurred <= until)
    middle = (lowest + highest) // 2
    engine = session.get_bind().engine

    def read(ids: tuple[int, int]) -> list[Any]:
        with engine.connect() as connection:
            half = grouped.where(window, event.c.id.between(*ids))
            return list(connection.execute(half).all())

    with ThreadPoolExecutor(2) as pool:
        halves = pool.map(read, ((lowest, middle), (middle + 1, highest)))
        return [row for half in halves for row in half]


def hours_per_period(window: timedelta) -> int:
    """A period is a clock hour, or several for a window over 48 hours (48 periods at most)."""
    return max(1, math.ceil(window.total_seconds() / 3600 / 48))


def _hour(session: Session) -> sa.ColumnElement[Any]:
    """The UTC clock hour an event happened in, as ``YYYY-MM-DD HH``. SQLite keeps the time
    as that text already (``UTCDateTime``): its first 13 characters, no date arithmetic."""
    event = table_of(Event)
    if session.get_bind().dialect.name == "postgresql":
        return sa.func.to_char(
            sa.func.timezone("UTC", event.c.occurred_at), sa.literal("YYYY-MM-DD HH24")
        )
    return sa.func.substr(event.c.occurred_at, 1, 13)


def _by_period(by_hour: Counter[str], now: datetime, window: timedelta) -> list[int]:
    """Counts by clock hour gathered into the window's periods, oldest first: the last one
    ends with the current hour, the first takes whatever of the window comes before."""
    per = hours_per_period(window)
    periods = max(1, math.ceil(window.total_seconds() / 3600 / per))
    current = now.replace(minute=0, second=0, microsecond=0, tzinfo=None)
    counts = [0] * periods
    for hour, count in by_hour.items():
        started = datetime.strptime(hour, "%Y-%m-%d %H")
        back = int((current - started).total_seconds() // 3600) // per
        counts[max(0, periods - 1 - back)] += count
    return counts


def _statuses(session: Session) -> dict[str, dict[str, int]]:
    table = table_of(IntegrationStatus)
    found: dict[str, dict[str, int]] = {p.value: {s.value: 0 for s in Status} for p in Provider}
    rows = session.execute(
        sa.select(table.c.provider, table.c.status, sa.func.count()).group_by(
            table.c.provider, table.c.status
        )
    )
    for provider, status, count in rows:
        found.setdefault(provider, {})[status] = count
    return found


def _alerts(health: Health, thresholds: Thresholds) -> list[Alert]:
    # Per hour of the window; a window under an hour counts as one, so that a single
    # revocation in the last five minutes is not read as twelve an hour.
    hours = max(health.window.total_seconds() / 3600, 1.0)
    active = health.statuses.get(Provider.amazon, {}).get(Status.active, 0)
    base = active + health.revoked  # those that could have been revoked in the window
    revoked_share = health.revoked / base / hours if base else None
    calls = health.calls.total
    return [
        Alert(
            "revoked_integrations",
            revoked_share,
            thresholds.revoked_per_hour,
            f"{health.revoked} revoked of {base} active Amazon integrations, per hour",
        ),
        Alert(
            "stripe_failures",
            health.stripe.failure_rate,
            thresholds.stripe_failures,
            f"{health.stripe.failed} of {health.stripe.total} Stripe customer creations failed",
        ),
        Alert(
            "oauth_callback_failures",
            health.callbacks.failure_rate,
            thresholds.callback_failures,
            f"{health.callbacks.failed} of {health.callbacks.total} OAuth callbacks failed",
        ),
        Alert(
            "api_errors",
            health.api_errors / calls if calls else None,
            thresholds.api_errors,
            f"{health.api_errors} of {calls} provider calls failed on the provider's side",
        ),
    ]


def prometheus_registry(health: Health) -> Any:
    """The figures as Prometheus metrics (``prometheus_client``), for the text format that
    node_exporter's textfile collector reads."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    integrations = Gauge(
        "discoveryctl_integrations",
        "Integrations by provider and status.",
        ["provider", "status"],
        registry=registry,
    )
    for provider, counts in health.statuses.items():
        for status, count in counts.items():
            integrations.labels(provider, status).set(count)
    window = int(health.window.total_seconds())
    outcomes = Gauge(
        "discoveryctl_window_outcomes",
        "Outcomes over the window, by flow and outcome.",
        ["flow", "outcome", "window_seconds"],
        registry=registry,
    )
    for flow, rate in (
        ("oauth_callback", health.callbacks),
        ("token_refresh", health.refreshes),
        ("stripe_customer", health.stripe),
        ("provider_call", health.calls),
    ):
        outcomes.labels(flow, "success", str(window)).set(rate.succeeded)
        outcomes.labels(flow, "failure", str(window)).set(rate.failed)
    errors = Gauge(
        "discoveryctl_window_call_errors",
        "Failed provider calls over the window, by cause.",
        ["cause", "window_seconds"],
        registry=registry,
    )
    for cause, count in (
        ("provider_side", health.api_errors),
        ("auth_401_403", health.auth_errors),
        ("timeout", health.timeouts),
        ("retry", health.retries),
    ):
        errors.labels(cause, str(window)).set(count)
    firing = Gauge(
        "discoveryctl_alert_firing",
        "1 while the alert fires, else 0.",
        ["alert"],
        registry=registry,
    )
    value = Gauge(
        "discoveryctl_alert_value",
        "The share the alert compares with its threshold (absent without data).",
        ["alert"],
        registry=registry,
    )
    threshold = Gauge(
        "discoveryctl_alert_threshold",
        "The share above which the alert fires.",
        ["alert"],
        registry=registry,
    )
    for alert in health.alerts:
        firing.labels(alert.name).set(1 if alert.firing else 0)
        threshold.labels(alert.name).set(alert.threshold)
        if alert.value is not None:
            value.labels(alert.name).set(alert.value)
    return registry


HEALTH_ALERT = "health_alert"


def notify_admins(session: Session, health: Health) -> tuple[list[str], list[str]]:
    """Hold an admin notification open for each alert firing (opened once, so posted once to
    the admin webhook), and resolve those of alerts that no longer fire. Returns the alerts
    opened now and those resolved now."""
    from discoveryctl.integrations import notifications

    opened: list[str] = []
    resolved: list[str] = []
    hours = health.window.total_seconds() / 3600
    for alert in health.alerts:
        key = f"{HEALTH_ALERT}:{alert.name}"
        if not alert.firing:
            if notifications.resolve(session, key):
                resolved.append(alert.name)
            continue
        assert alert.value is not None
        _, created = notifications.notify(
            session,
            audience=notifications.ADMIN,
            kind=HEALTH_ALERT,
            title=f"Health alert {alert.name}",
            message=(
                f"{alert.value:.1%} over the last {hours:g} h, above {alert.threshold:.0%}: "
                f"{alert.detail}"
            ),
            detail={
                "alert": alert.name,
                "value": round(alert.value, 4),
                "threshold": alert.threshold,
                "window_seconds": int(health.window.total_seconds()),
            },
            key=key,
        )
        if created:
            opened.append(alert.name)
    return opened, resolved
