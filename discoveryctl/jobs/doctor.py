"""`doctor`'s checks: can this installation do its job, and what must the operator fix?"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

from discoveryctl.config import Config
from discoveryctl.errors import DiscoveryError

OK, WARN, FAIL = "ok", "warn", "fail"

# Amazon asks for the LWA client secret to be rotated every 180 days.
LWA_SECRET_MAX_AGE_DAYS = 180
LWA_SECRET_WARN_DAYS = 150

PROVIDER_SECRETS = (
    "AMAZON_LWA_CLIENT_ID",
    "AMAZON_LWA_CLIENT_SECRET",
    "AMAZON_SPAPI_APP_ID",
    "STRIPE_API_KEY",
)


@dataclass(frozen=True)
class Check:
    name: str
    state: str
    detail: str


def run_checks(config: Config, today: date | None = None) -> list[Check]:
    """Every check, in order; a failed database check skips those that need it."""
    from discoveryctl.db.engine import HEAD_REVISION, Database, describe

    checks: list[Check] = []

    def attempt(name: str, probe: Callable[[], Check]) -> bool:
        try:
            checks.append(probe())
        except DiscoveryError as error:
            checks.append(Check(name, FAIL, error.message))
            return False
        return checks[-1].state != FAIL

    database: Database | None = None

    def reach_database() -> Check:
        nonlocal database
        database = Database(config.database_url, config.sqlite_creation())
        # The SQLite default is upgraded here as on any command's first use.
        upgraded = database.ensure_head(may_upgrade=config.uses_default_database)
        state = "upgraded to" if upgraded else "at"
        return Check("database", OK, f"{describe(database.url)} {state} {HEAD_REVISION}")

    at_head = attempt("database", reach_database)

    def integrity() -> Check:
        from discoveryctl.db.models import Base

        assert database is not None
        problems = database.integrity_problems(list(Base.metadata.sorted_tables))
        if problems:
            return Check("database integrity", FAIL, "corrupted: " + "; ".join(problems))
        what = "every page and index" if database.dialect == "sqlite" else "every table"
        return Check("database integrity", OK, f"{what} read back")

    if at_head:
        at_head = attempt("database integrity", integrity)

    def encryption() -> Check:
        import sqlalchemy as sa

        from discoveryctl.amazon.credentials import open_vault
        from discoveryctl.db.models import Credential

        assert database is not None
        with database.session() as session:
            vault = open_vault(config, session)
            count = 0
            for ciphertext in session.scalars(sa.select(Credential.refresh_token)):
                vault.decrypt(ciphertext, what=f"stored credential #{count + 1}")
                count += 1
        return Check("encryption key", OK, f"decrypts all {count} stored credentials")

    def history() -> Check:
        from discoveryctl.integrations import retention

        assert database is not None
        with database.session() as session:
            count, oldest = retention.size(session)
        return history_check(count, oldest, retention.MANY_EVENTS)

    def outbox() -> Check:
        from discoveryctl.alerts.delivery import webhook_from
        from discoveryctl.integrations import outbox

        assert database is not None
        if webhook_from(config) is None:
            return Check("alert deliveries", OK, "no webhook set: admin alerts are not posted")
        with database.session() as session:
            return outbox_check(*outbox.backlog(session))

    if at_head:
        attempt("event history", history)
        attempt("encryption key", encryption)
        attempt("alert deliveries", outbox)
    if database is not None:
        database.dispose()

    for name in PROVIDER_SECRETS:
        present = config.get(name) is not None
        checks.append(
            Check(
                name,
                OK if present else FAIL,
                "set" if present else f"not set: export it or `discoveryctl secrets set {name}`",
            )
        )
    attempt("JWT_SECRET", lambda: Check("JWT_SECRET", OK, _jwt_source(config)))
    try:
        stale = config.stale_database_url()
    except DiscoveryError as error:  # the keyring itself cannot be used
        checks.append(Check("keyring", FAIL, error.message))
        stale = False
    if stale:
        checks.append(
            Check(
                "DATABASE_URL",
                WARN,
                "in the keyring, which discoveryctl no longer reads: this runs on the SQLite "
                "default; export it, then `discoveryctl secrets delete DATABASE_URL`",
            )
        )
    checks.append(_lwa_secret_age(config, today or datetime.now(UTC).date()))
    from discoveryctl.providers.stripe import STRIPE_API_VERSION

    checks.append(Check("Stripe API version", OK, f"{STRIPE_API_VERSION}, sent on every request"))
    attempt("admin webhook", lambda: webhook_check(config))
    return checks


def webhook_check(config: Config) -> Check:
    """Whether the admin webhook answers: a HEAD request, which posts nothing (any HTTP answer
    will do; a webhook only takes POSTs)."""
    import httpx

    from discoveryctl.alerts.delivery import TIMEOUT, webhook_from

    name = "admin webhook"
    webhook = webhook_from(config)
    if webhook is None:
        return Check(
            name,
            WARN,
            "DISCOVERY_ADMIN_WEBHOOK_URL not set: admin alerts are only in "
            "`discoveryctl notifications --admin`",
        )
    try:
        with httpx.Client(timeout=TIMEOUT) as client:
            answer = client.head(webhook.url)
    except httpx.TimeoutException:
        return Check(name, FAIL, f"{webhook.where} did not answer within {TIMEOUT:g} s")
    except httpx.HTTPError as error:
        return Check(name, FAIL, f"{webhook.where} unreachable ({type(error).__name__})")
    reached = f"{webhook.where} answers (HTTP {answer.status_code} to HEAD)"
    if webhook.secret is None:
        return Check(name, WARN, f"{reached}; DISCOVERY_ADMIN_WEBHOOK_SECRET not set: unsigned")
    return Check(name, OK, f"{reached}; signed")


def outbox_check(waiting: int, last_error: str | None, given_up: int) -> Check:
    """Admin alerts not yet delivered, and those given up on in the last day."""
    name = "alert deliveries"
    if not waiting and not given_up:
        return Check(name, OK, "none waiting")
    parts = []
    if waiting:
        parts.append(f"{waiting} waiting" + (f" (last error: {last_error})" if last_error else ""))
    if given_up:
        parts.append(f"{given_up} given up in the last day")
    return Check(
        name,
        WARN,
        "; ".join(parts) + ": see `discoveryctl notifications --admin`, then "
        "`discoveryctl notifications deliver`",
    )


def history_check(count: int, oldest: datetime | None, many: int) -> Check:
    """The events table's size: past ``many`` rows, a warning with how to prune."""
    since = f", the oldest from {oldest.date().isoformat()}" if oldest is not None else ""
    if count > many:
        return Check(
            "event history",
            WARN,
            f"{count:,} events{since}: prune with `discoveryctl events prune --older-than 90d`",
        )
    return Check("event history", OK, f"{count:,} events{since}")


def _jwt_source(config: Config) -> str:
    config.jwt_secret()
    return "set" if config.get("JWT_SECRET") else "generated beside the SQLite default"


def _lwa_secret_age(config: Config, today: date) -> Check:
    name = "LWA secret age"
    raw = config.get("AMAZON_LWA_CLIENT_SECRET_ROTATED_AT")
    if raw is None:
        return Check(
            name,
            WARN,
            "unknown: set AMAZON_LWA_CLIENT_SECRET_ROTATED_AT (YYYY-MM-DD) or store the "
            "secret with `discoveryctl secrets set`; Amazon expects rotation every 180 days",
        )
    try:
        rotated = date.fromisoformat(raw[:10])
    except ValueError:
        return Check(name, FAIL, f"AMAZON_LWA_CLIENT_SECRET_ROTATED_AT {raw!r} is not a date")
    age = (today - rotated).days
    if age < 0:
        return Check(
            name,
            FAIL,
            f"AMAZON_LWA_CLIENT_SECRET_ROTATED_AT {rotated.isoformat()} is in the future: "
            "set the date the secret was really rotated",
        )
    if age >= LWA_SECRET_MAX_AGE_DAYS:
        return Check(name, FAIL, f"{age} days old: past Amazon's 180-day rotation, rotate it now")
    if age >= LWA_SECRET_WARN_DAYS:
        return Check(name, WARN, f"{age} days old: rotate within {180 - age} days")
    return Check(name, OK, f"{age} days old")
