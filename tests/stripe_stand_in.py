"""A stand-in for Stripe's customers (``providers.stripe.StripeCustomers``) for the rule tests of
``billing.customers``: it records every create and lookup it is asked for and answers as the
test scripted, so the rules run in milliseconds. What Stripe's answers mean is proven against
the sandbox elsewhere (tests/test_stripe_client.py, tests/test_stripe_classification.py).

Each scripted answer is a customer id (or ``None`` for a lookup that finds nothing; a lookup
may also answer a ``Lookup``, to say Stripe refused its search), a ``ProviderError`` to raise,
or a function called with the request (to act "meanwhile", as another process would, while
the call is in flight) that returns one of those.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from discoveryctl.db.engine import Database, SessionScope
from discoveryctl.db.models import Event, IntegrationStatus, Notification, StripeCustomer
from discoveryctl.errors import ProviderError
from discoveryctl.providers.stripe import CreatedCustomer, Lookup, StripeCustomers

Answer = (
    str
    | Lookup
    | None
    | ProviderError
    | Callable[[dict[str, Any]], "str | Lookup | ProviderError | None"]
)


@dataclass
class StripeStandIn:
    creates: list[dict[str, Any]] = field(default_factory=list)
    finds: list[dict[str, Any]] = field(default_factory=list)
    create_answers: list[Answer] = field(default_factory=list)
    find_answers: list[Answer] = field(default_factory=list)
    replayed: bool = False
    closed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def create(
        self, *, user_id: str, email: str, name: str | None, idempotency_key: str
    ) -> CreatedCustomer:
        request = {
            "user_id": user_id,
            "email": email,
            "name": name,
            "idempotency_key": idempotency_key,
        }
        with self._lock:
            self.creates.append(request)
            number = len(self.creates)
            answer = self.create_answers.pop(0) if self.create_answers else f"cus_{user_id}"
        answer = _answered(answer, request)
        if not isinstance(answer, str):
            raise AssertionError("a create always answers with a customer or an error")
        return CreatedCustomer(answer, f"req_{number}", self.replayed)

    def find(self, *, user_id: str, email: str, search: bool = True) -> Lookup:
        request = {"user_id": user_id, "email": email, "search": search}
        with self._lock:
            self.finds.append(request)
            answer = self.find_answers.pop(0) if self.find_answers else None
        found = _answered(answer, request)
        return found if isinstance(found, Lookup) else Lookup(found)

    def close(self) -> None:
        self.closed += 1

    def as_client(self) -> StripeCustomers:
        return cast(StripeCustomers, self)


def _answered(answer: Answer, request: dict[str, Any]) -> str | Lookup | None:
    if callable(answer):
        answer = answer(request)
    if isinstance(answer, ProviderError):
        raise answer
    return answer


@pytest.fixture(name="stand_in")
def stand_in_fixture() -> StripeStandIn:
    return StripeStandIn()


@pytest.fixture(name="database")
def database_fixture(_migrated_sqlite: Path, tmp_path: Path) -> Iterator[Database]:
    """A copy of the migrated template (conftest's), opened as the commands open it
    (``sqlite_db``'s twin; these rules' SQL is the same on both databases)."""
    path = tmp_path / "discovery.db"
    shutil.copyfile(_migrated_sqlite, path)
    opened = Database(f"sqlite:///{path}")
    yield opened
    opened.dispose()


@pytest.fixture(name="scope")
def scope_fixture(database: Database) -> SessionScope:
    return database.session


class Clock:
    """A monotonic clock that moves only when slept on (or told to), recording each sleep."""

    def __init__(self, at: float = 1000.0) -> None:
        self.at = at
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.at

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.at += seconds


NOW = datetime(2024, 5, 17, 12, 0, tzinfo=UTC)
"""The ``now`` the rule tests pass in: in the past, so the times the code takes itself are later."""


def row(scope: Callable[[], AbstractContextManager[Session]], user_id: str) -> StripeCustomer:
    with scope() as session:
        found = session.scalars(
            sa.select(StripeCustomer).where(StripeCustomer.user_id == user_id)
        ).one()
        session.expunge(found)
        return found


def events_of(
    scope: SessionScope, *kinds: str
) -> list[tuple[str, str, str | None, dict[str, Any]]]:
    """(kind, outcome, error_type, detail) of each event of ``kinds`` (all without), in order."""
    with scope() as session:
        query = sa.select(Event).order_by(Event.id)
        if kinds:
            query = query.where(Event.kind.in_(kinds))
        return [(e.kind, e.outcome, e.error_type, e.detail) for e in session.scalars(query)]


def parties(scope: SessionScope) -> set[tuple[str | None, str | None]]:
    """The (user, provider) of every event recorded."""
    with scope() as session:
        return {
            (user, provider)
            for user, provider in session.execute(sa.select(Event.user_id, Event.provider))
        }


def notifications_of(scope: SessionScope) -> list[dict[str, Any]]:
    with scope() as session:
        return [
            {
                "audience": n.audience,
                "user_id": n.user_id,
                "provider": n.provider,
                "kind": n.kind,
                "title": n.title,
                "message": n.message,
                "detail": n.detail,
                "key": n.dedupe_key,
                "open": n.resolved_at is None,
            }
            for n in session.scalars(sa.select(Notification).order_by(Notification.id))
        ]


def integration(scope: SessionScope, user_id: str) -> tuple[str, dict[str, Any]] | None:
    """The user's Stripe integration: its status and metadata."""
    with scope() as session:
        found = session.scalars(
            sa.select(IntegrationStatus).where(
                IntegrationStatus.user_id == user_id, IntegrationStatus.provider == "stripe"
            )
        ).one_or_none()
        return None if found is None else (found.status, dict(found.meta))
