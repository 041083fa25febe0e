"""Errors that reach the operator, arranged by kind.

Every error the tool expects is a ``DiscoveryError`` with a one-line message and a ``kind``:
what sort of problem it is, and so what the operator (or the web client) should do about it.
The CLI turns the kind into an exit code (``discoveryctl.cli.EXIT_CODES``) and the HTTP API
into a status (``discoveryctl.server.errors.HTTP_STATUS``); nothing else decides either::

    DiscoveryError                          kind                  exit  HTTP
    ├── ConfigurationError                  configuration         2     500
    │   ├── EncryptionKeyError              configuration         2     500
    │   └── DatabaseError                   configuration         2     500
    │       ├── DatabaseUnavailable         database_unavailable  2     503
    │       └── DatabaseConflict            database_conflict     1     409
    ├── InvalidInput                        input                 2     400
    │   └── NotFound                        not_found             2     404
    ├── ProviderError                       provider              1     502
    │   ├── SellerAuthorizationRevoked      seller                1     409
    │   ├── SpApiTokenRefused               provider              1     502
    │   ├── AppCredentialsRejected          app_credentials       3     502
    │   ├── MassRevocationHeld              app_credentials       3     502
    │   ├── StripeIdempotencyConflict       provider              1     502
    │   ├── StripeParametersRefused         input                 2     400
    │   ├── StripeCreateInFlight            transient             1     503
    │   └── TransientProviderError          transient             1     503
    │       ├── StripeOutcomeUnknown        transient             1     503
    │       └── StripeKeyInUse              transient             1     503
    ├── OAuthCallbackError                  consent               1     400
    ├── Unauthenticated                     unauthenticated       2     401
    ├── NeedsAttention                      attention             1     200
    └── Interrupted                         interrupted           130   503

- *configuration*: a setting is missing or malformed, or the database cannot be used as
  configured (driver, URL, schema); the operator fixes the setup.
- *database_unavailable*: the database is down, unreachable or locked past its timeout;
  nothing is wrong with the request: run it again later.
- *database_conflict*: another writer got there first (a unique key, a serialization
  failure) and retrying did not settle it.
- *input*: what the operator or the client gave is wrong (an argument, a user id, a file).
- *provider*, with three kinds the product acts on differently (docs/behaviour.md §5):
  *seller* (the seller's authorization is gone: reconnect), *app_credentials* (the app's own
  credentials were refused: never blame a seller, stop), *transient* (worth retrying); plain
  *provider* is an answer the classifier could not place.
- *unauthenticated*: an API request came without a token the API accepts: the client signs
  in again.
- *attention*: not a failure of the command: it finished, and what it found needs a look
  (unhealthy integrations under ``--check``, rejected input lines, a failed ``doctor`` check).
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar


class ErrorKind(StrEnum):
    """What sort of problem an error is; see the table above."""

    configuration = "configuration"
    database_unavailable = "database_unavailable"
    database_conflict = "database_conflict"
    input = "input"
    not_found = "not_found"
    provider = "provider"
    seller = "seller"
    app_credentials = "app_credentials"
    transient = "transient"
    consent = "consent"
    unauthenticated = "unauthenticated"
    attention = "attention"
    interrupted = "interrupted"


class DiscoveryError(Exception):
    """Base of every error the tool expects; ``str(error)`` is the one-line message.

    Never raised itself: every error says which kind it is.
    """

    kind: ClassVar[ErrorKind]

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigurationError(DiscoveryError):
    """A setting is missing or malformed."""

    kind = ErrorKind.configuration


class EncryptionKeyError(ConfigurationError):
    """Stored credentials cannot be decrypted with the configured key."""


class DatabaseError(ConfigurationError):
    """The database cannot be used as configured: driver, URL, schema revision."""


class DatabaseUnavailable(DatabaseError):
    """The database is down, unreachable, or locked past the busy timeout."""

    kind = ErrorKind.database_unavailable


class DatabaseConflict(DatabaseError):
    """Another writer changed the same rows first (unique key, serialization failure)."""

    kind = ErrorKind.database_conflict


class InvalidInput(DiscoveryError):
    """An argument, a user id or a file given to the command is not acceptable."""

    kind = ErrorKind.input


class NotFound(InvalidInput):
    """The operator named something that does not exist."""

    kind = ErrorKind.not_found


class ProviderError(DiscoveryError):
    """Amazon or Stripe answered in a way the classifier could not place.

    ``error_type`` is the stable name logged and stored with the failure (``lwa_timeout``,
    ``oauth_token_revoked``…); ``status_code`` is the HTTP status, if there was an answer.
    """

    kind = ErrorKind.provider

    def __init__(
        self,
        message: str,
        *,
        error_type: str = "provider_error",
        status_code: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.status_code = status_code
        self.request_id = request_id  # the provider's id for the request (Stripe's request-id)


class AppCredentialsRejected(ProviderError):
    """A provider rejected the app's own credentials (LWA ``invalid_client``, Stripe auth)."""

    kind = ErrorKind.app_credentials


class SellerAuthorizationRevoked(ProviderError):
    """The seller's authorization is gone: revoked, or past its re-authorization date."""

    kind = ErrorKind.seller


class SpApiTokenRefused(ProviderError):
    """The SP-API refused a seller's access token (401, or 403 saying it is revoked,
    malformed, invalid or expired). Not yet evidence that the authorization is gone: Amazon
    says the same of expired and mis-signed tokens; the check refreshes and asks once more
    (``amazon.check``)."""


class MassRevocationHeld(ProviderError):
    """Most of a run's refresh answers said the sellers' authorizations are gone: more likely
    the app's own settings (another app's client id) than every seller at once. Nothing was
    marked; ``refresh-all --accept-mass-revocation`` applies them."""

    kind = ErrorKind.app_credentials


class TransientProviderError(ProviderError):
    """A failure worth retrying: throttling, 5xx, timeouts, connection errors, bad bodies."""

    kind = ErrorKind.transient

    def __init__(
        self,
        message: str,
        *,
        error_type: str = "transient_error",
        status_code: int | None = None,
        retry_after: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(
            message, error_type=error_type, status_code=status_code, request_id=request_id
        )
        self.retry_after = retry_after


class StripeOutcomeUnknown(TransientProviderError):
    """Stripe failed after it began creating (a 500 it will replay for the same idempotency
    key): the customer may exist. Look it up before trying again with a new key."""


class StripeKeyInUse(TransientProviderError):
    """409 ``idempotency_key_in_use``: another caller's request under the same idempotency
    key is still in flight. Its outcome is waited for; it is never the user's failure."""


class StripeIdempotencyConflict(ProviderError):
    """Stripe refused a retry whose parameters differ from the first request's under the same
    idempotency key: that user stops, and the operator is told."""


class StripeParametersRefused(ProviderError):
    """Stripe refused a create's parameters before it began executing (a 400 it did not keep
    under the idempotency key): the key is let go, and nothing more is tried for the user until
    the operator sends corrected parameters."""

    kind = ErrorKind.input


class StripeCreateInFlight(ProviderError):
    """Another caller's create under the user's idempotency key was still in flight (409
    ``idempotency_key_in_use``) when this one stopped waiting for it: not a failure of the
    user's, nor anyone's; a later command finds its outcome."""

    kind = ErrorKind.transient


class OAuthCallbackError(DiscoveryError):
    """A consent callback failed; ``reason`` is a stable code such as ``invalid_state``."""

    kind = ErrorKind.consent

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{message} ({reason})")
        self.reason = reason


class Unauthenticated(DiscoveryError):
    """An API request without a bearer token the API accepts (missing, malformed, expired,
    unsigned or wrongly signed); the message says which."""

    kind = ErrorKind.unauthenticated


class NeedsAttention(DiscoveryError):
    """The command finished, and what it found needs a look; the message says what."""

    kind = ErrorKind.attention


class Interrupted(DiscoveryError):
    """The operator stopped the command (Ctrl-C, SIGTERM)."""

    kind = ErrorKind.interrupted
