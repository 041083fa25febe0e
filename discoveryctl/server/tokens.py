"""API tokens: the bearer JWTs of the HTTP API (docs/behaviour.md §8). HS256 with JWT_SECRET,
``exp`` required, the user in ``sub``; ``aud`` and ``iss`` checked when the server is given
them.

Verification is strict: the algorithm is fixed (a token saying ``alg: none`` or anything but
HS256 is refused, whatever it carries), every required claim must be there, and a token with an
audience is refused unless the server expects that audience, so the OAuth ``state`` tokens the
same secret signs (audience ``discoveryctl:amazon-consent``) never pass as API tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from discoveryctl.errors import InvalidInput, Unauthenticated
from discoveryctl.support.user_ids import valid_user_id

ALGORITHM = "HS256"
LEEWAY = timedelta(seconds=30)
"""Clock difference allowed between the machine that minted a token and this one."""


def mint(
    secret: str,
    user_id: str,
    ttl: timedelta,
    *,
    audience: str | None = None,
    issuer: str | None = None,
    now: datetime | None = None,
) -> str:
    """A token for ``user_id`` that expires ``ttl`` from now."""
    user_id = valid_user_id(user_id)
    if ttl <= timedelta(0):
        raise InvalidInput("a token's lifetime must be positive")
    issued = now or datetime.now(UTC)
    claims: dict[str, object] = {
        "sub": user_id,
        "iat": int(issued.timestamp()),
        "exp": int((issued + ttl).timestamp()),
    }
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


@dataclass(frozen=True)
class Caller:
    user_id: str
    expires_at: datetime  # the token's exp: a stream opened with it ends then


def caller_of(
    secret: str,
    authorization: str | None,
    *,
    audience: str | None = None,
    issuer: str | None = None,
) -> Caller:
    """Who an ``Authorization: Bearer …`` header speaks for, or ``Unauthenticated`` saying
    why not."""
    if not authorization:
        raise Unauthenticated("missing bearer token")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("the Authorization header is not 'Bearer <token>'")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=issuer,
            leeway=LEEWAY,
            options={"require": ["exp", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("token expired") from None
    except jwt.InvalidAlgorithmError:
        raise Unauthenticated(f"token not signed with {ALGORITHM}") from None
    except jwt.InvalidSignatureError:
        raise Unauthenticated("token signature does not verify") from None
    except jwt.MissingRequiredClaimError as error:
        raise Unauthenticated(f"token has no {error.claim!r} claim") from None
    except jwt.InvalidAudienceError:
        raise Unauthenticated("token is for another audience") from None
    except jwt.InvalidIssuerError:
        raise Unauthenticated("token is from another issuer") from None
    except jwt.InvalidTokenError:
        raise Unauthenticated("malformed token") from None
    subject = claims["sub"]
    if not isinstance(subject, str):
        raise Unauthenticated("token's 'sub' is not a user id")
    try:
        user_id = valid_user_id(subject)
    except InvalidInput:
        raise Unauthenticated("token's 'sub' is not a valid user id") from None
    return Caller(user_id, datetime.fromtimestamp(claims["exp"], UTC))
