"""Errors that reach the operator.

Every error the tool expects carries an exit code and a one-line message; the CLI catches
``DiscoveryError`` once, prints the message to stderr and exits with the code (SPEC §3)::

    DiscoveryError                      exit 1  something needs attention
    ├── ConfigError                     exit 2  a missing or malformed setting, a usage error
    │   ├── DatabaseError               exit 2  unreachable, missing driver, not migrated
    │   ├── EncryptionKeyError          exit 2  stored credentials cannot be decrypted
    │   └── NotFound                    exit 2  no such user, integration or notification
    ├── ProviderError                   exit 1  Amazon or Stripe answered with a failure
    │   ├── AppCredentialsRejected      exit 3  the app's own credentials were refused
    │   ├── SellerAuthorizationRevoked  exit 1  the seller's authorization is gone
    │   └── TransientProviderError      exit 1  worth retrying later
    ├── OAuthCallbackError              exit 1  a consent callback failed (with a reason code)
    └── RejectedInput                   exit 1  some input lines were rejected
"""

from __future__ import annotations


class DiscoveryError(Exception):
    """Base of every error the tool expects; ``str(error)`` is the one-line message."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(DiscoveryError):
    """A setting is missing or malformed, or the command was used wrongly."""

    exit_code = 2


class DatabaseError(ConfigError):
    """The database cannot be used: unreachable, missing driver, or not at the head revision."""


class EncryptionKeyError(ConfigError):
    """Stored credentials cannot be decrypted with the configured key."""


class NotFound(ConfigError):
    """The operator named something that does not exist."""


class ProviderError(DiscoveryError):
    """Amazon or Stripe answered with a failure.

    ``error_type`` is the stable name logged and stored with the failure (``lwa_timeout``,
    ``oauth_token_revoked``…); ``status_code`` is the HTTP status, if there was an answer.
    """

    def __init__(
        self, message: str, *, error_type: str = "provider_error", status_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.status_code = status_code


class AppCredentialsRejected(ProviderError):
    """A provider rejected the app's own credentials (LWA ``invalid_client``, Stripe auth)."""

    exit_code = 3


class SellerAuthorizationRevoked(ProviderError):
    """The seller's authorization is gone: revoked, or past its re-authorization date."""


class TransientProviderError(ProviderError):
    """A failure worth retrying: throttling, 5xx, timeouts, connection errors, bad bodies."""

    def __init__(
        self,
        message: str,
        *,
        error_type: str = "transient_error",
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, error_type=error_type, status_code=status_code)
        self.retry_after = retry_after


class OAuthCallbackError(DiscoveryError):
    """A consent callback failed; ``reason`` is a stable code such as ``invalid_state``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{message} ({reason})")
        self.reason = reason


class RejectedInput(DiscoveryError):
    """Some input was rejected; the rest was processed."""
