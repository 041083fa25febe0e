"""The brake on mass revocation: when most of a run's refresh answers say the sellers'
authorizations are gone, the run marks nobody (docs/behaviour.md §5).

LWA answers ``invalid_grant`` when a refresh token is presented by another client than the
one it was issued to (LWA, "Refresh tokens"; RFC 6749 §5.2: "issued to another client"), so
one wrong ``AMAZON_LWA_CLIENT_ID`` (another of the company's apps) looks like every seller
revoking at once. Sellers do not leave together: when more than ``threshold`` of at least
``minimum`` answers in one run say "gone", it is the app's settings that are wrong until an
operator says otherwise (``refresh-all --accept-mass-revocation``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from discoveryctl.amazon.verdict import Verdict
from discoveryctl.errors import ProviderError
from discoveryctl.integrations import notifications
from discoveryctl.integrations.vocabulary import Provider
from discoveryctl.support.retrying import Attempt

MINIMUM_ANSWERS = 10
"""Below this many refresh answers a run is too small to tell a pattern (the issue's choice)."""
THRESHOLD = 0.5
"""More than this share of the answers saying "gone" holds them all (the issue's choice)."""
HELD = "mass_revocation_held"
"""The admin alert's kind (and dedupe key): one open alert however many runs are held."""


@dataclass(frozen=True)
class Brake:
    """When a run's "authorization gone" verdicts are held rather than applied."""

    threshold: float = THRESHOLD
    minimum: int = MINIMUM_ANSWERS
    accept: bool = False  # --accept-mass-revocation: apply them whatever their number

    def engaged(self, answered: int, gone: int) -> bool:
        """Whether ``gone`` verdicts among ``answered`` refresh answers are held."""
        return not self.accept and answered >= self.minimum and gone > self.threshold * answered


@dataclass(frozen=True)
class Held:
    """An "authorization gone" verdict reached but not applied until the run weighs them
    all: LWA's (``verdict``, with its ``tries``), or the SP-API refusing a fresh token again
    (``refusal``)."""

    user_id: str
    verdict: Verdict | None = None
    tries: tuple[Attempt, ...] = ()
    refusal: ProviderError | None = None
    authorized_at: datetime | None = None  # the authorization it is about (a reconnect: another)


def message(answered: int, gone: int) -> str:
    """What the operator is told when the brake holds a run's verdicts."""
    return (
        f"{gone} of {answered} refresh answers said the seller's authorization is gone: "
        "more likely the app's own settings (AMAZON_LWA_CLIENT_ID and its secret: another "
        "app's?) than every seller at once; nobody was marked and no seller was told. Check the "
        "settings; if the sellers really are gone, run refresh-all --accept-mass-revocation"
    )


def weigh(session: Session, brake: Brake, answered: int, gone: int) -> bool:
    """Whether a run's ``gone`` verdicts among ``answered`` answers are held: then the admins
    are told (one open alert however many runs), and the caller marks nobody. A run whose
    verdicts stand, with any answer at all, resolves that alert."""
    if brake.engaged(answered, gone):
        notifications.notify(
            session,
            audience=notifications.ADMIN,
            kind=HELD,
            title="Amazon: most sellers' authorizations said gone at once: nobody marked",
            message=message(answered, gone),
            provider=Provider.amazon,
            detail={"held": gone, "answered": answered},
        )
        return True
    if answered:
        notifications.resolve(session, notifications.dedupe_key(HELD, Provider.amazon, None))
    return False
