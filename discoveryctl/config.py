"""Settings: the environment first, then the OS keyring (docs/behaviour.md §2).

``Config`` reads lazily: a setting is looked up the first time a command needs it, so a
command that never touches Amazon never asks the keyring for the LWA secret. Every missing or
malformed setting raises ``ConfigurationError`` naming the variable and how to set it.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from discoveryctl.errors import ConfigurationError

KEYRING_SERVICE = "discoveryctl"

Creation = Literal["never", "file", "file and folders"]
"""What opening a SQLite database may create when it is not there: nothing (a mistyped path
is an error), the file (``db upgrade``, in a folder that exists), or the folders too (the
SQLite default, in the data directory)."""

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("console", "json")


@dataclass(frozen=True)
class Setting:
    name: str
    meaning: str
    secret: bool = False


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        # Not from the keyring: every command reads it (the SQLite default too, to know it is
        # not set), and asking the keyring costs each one the backend discovery (25 ms here).
        Setting("DATABASE_URL", "SQLAlchemy URL of the shared database"),
        Setting("JWT_SECRET", "signs OAuth state and API tokens (HS256)", secret=True),
        Setting("JWT_AUDIENCE", "the API accepts only tokens for this audience (aud)"),
        Setting("JWT_ISSUER", "the API accepts only tokens from this issuer (iss)"),
        Setting("FRONTEND_URL", "base of reconnect URLs"),
        Setting("LOG_LEVEL", "debug, info, warning or error"),
        Setting("LOG_FORMAT", "console or json"),
        Setting("DISCOVERY_ENCRYPTION_KEY", "Fernet key(s) for tokens at rest", secret=True),
        Setting("AMAZON_LWA_CLIENT_ID", "the SP-API app's LWA client id", secret=True),
        Setting("AMAZON_LWA_CLIENT_SECRET", "the SP-API app's LWA client secret", secret=True),
        Setting(
            "AMAZON_LWA_CLIENT_SECRET_ROTATED_AT",
            "when the LWA client secret was last rotated (ISO date)",
            secret=True,
        ),
        Setting("AMAZON_SPAPI_APP_ID", "application_id in the consent URL"),
        Setting("AMAZON_REDIRECT_URI", "the redirect URI registered on the app"),
        Setting("AMAZON_APP_DRAFT", "1 adds version=beta to consent URLs"),
        Setting("AMAZON_SELLER_CENTRAL_URL", "overrides the Seller Central base"),
        Setting("AMAZON_LWA_TOKEN_URL", "overrides the LWA token endpoint"),
        Setting("AMAZON_SPAPI_URL", "overrides the SP-API endpoint"),
        Setting("STRIPE_API_KEY", "Stripe secret key", secret=True),
        Setting("STRIPE_API_BASE", "Stripe API base"),
        Setting(
            "DISCOVERY_ADMIN_WEBHOOK_URL",
            "where admin alerts are POSTed (a Slack webhook URL holds a token)",
            secret=True,
        ),
        Setting("DISCOVERY_ADMIN_WEBHOOK_SECRET", "signs admin alerts (HMAC-SHA256)", secret=True),
    )
}

DEFAULT_FRONTEND_URL = "http://localhost:3000"
DEFAULT_REDIRECT_URI = "http://127.0.0.1:8765/callback"


def how_to_set(name: str) -> str:
    if SETTINGS.get(name, Setting(name, "")).secret:
        return f"export {name}=… or run `discoveryctl secrets set {name}`"
    return f"export {name}=…"


KeyringLookup = Callable[[str], str | None]


def keyring_lookup(name: str) -> str | None:
    """Read one secret from the OS keyring; no keyring at all reads as "not set"."""
    if sys.platform != "darwin":
        # keyring loads every backend to pick one, and its macOS backend's helper module
        # looks for the Keychain libraries with ctypes.util.find_library, which off macOS
        # runs ldconfig and gcc: about 0.3 s of every command. That backend refuses to run
        # anywhere but macOS anyway, and imports its helper under ``except Exception``; a
        # None in sys.modules makes that import fail at once (keyring issue #403 on import
        # times; keyring/backends/macOS/__init__.py).
        sys.modules.setdefault("keyring.backends.macOS.api", None)  # type: ignore[arg-type]
    import keyring
    from keyring.errors import KeyringError

    try:
        value: str | None = keyring.get_password(KEYRING_SERVICE, name)
    except KeyringError:
        return None
    except Exception as error:  # a PYTHON_KEYRING_BACKEND keyring cannot load
        raise keyring_backend_error(error) from None
    return value


def keyring_backend_error(error: Exception) -> ConfigurationError:
    """The keyring backend named by PYTHON_KEYRING_BACKEND (or found) failed to load."""
    named = os.environ.get("PYTHON_KEYRING_BACKEND")
    what = f"PYTHON_KEYRING_BACKEND={named!r}" if named else "the OS keyring"
    return ConfigurationError(
        f"{what} cannot be used ({type(error).__name__}: {error}): fix or unset it"
    )


class Config:
    """Settings for one command run."""

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        keyring: KeyringLookup | None = keyring_lookup,
    ) -> None:
        self._environ = os.environ if environ is None else environ
        self._keyring = keyring
        self._cache: dict[str, str | None] = {}
        self._from_keyring: set[str] = set()

    # -- raw lookup -------------------------------------------------------------------------

    def get(self, name: str) -> str | None:
        """The value of a setting, from the environment, then (secrets only) the keyring."""
        if name not in self._cache:
            value = self._environ.get(name)
            if value is not None and value.strip() == "":
                value = None
            if value is None and self._keyring is not None and SETTINGS[name].secret:
                value = self._keyring(name)
                if value is not None:
                    self._from_keyring.add(name)
            self._cache[name] = value.strip() if value is not None else None
        return self._cache[name]

    def named(self, name: str) -> str:
        """The setting's name for a message, saying where a keyring value came from."""
        self.get(name)
        return f"{name} (from the keyring)" if name in self._from_keyring else name

    def require(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise ConfigurationError(f"{name} is not set: {how_to_set(name)}")
        return value

    # -- paths ------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        from platformdirs import user_data_dir

        return Path(user_data_dir("discoveryctl", appauthor=False))

    @property
    def default_database_path(self) -> Path:
        return self.data_dir / "discoveryctl.db"

    @property
    def key_file(self) -> Path:
        """Where the SQLite default keeps its encryption keys when the variable is not set."""
        return self.data_dir / "encryption.key"

    # -- typed settings ---------------------------------------------------------------------

    @property
    def uses_default_database(self) -> bool:
        return self.get("DATABASE_URL") is None

    def stale_database_url(self) -> bool:
        """Whether DATABASE_URL sits in the keyring (where earlier versions read it) while the
        environment does not set it: this version runs on the SQLite default instead."""
        return (
            self.uses_default_database
            and self._keyring is not None
            and self._keyring("DATABASE_URL") is not None
        )

    def check_default_database(self) -> None:
        """Before the SQLite default is first made: refuse when DATABASE_URL sits in the
        keyring, where earlier versions read it and this one does not. Running on a new empty
        database instead of the real one would look healthy and do nothing."""
        if self.default_database_path.exists():
            return
        if self.stale_database_url():
            raise ConfigurationError(
                "DATABASE_URL is in the keyring, which discoveryctl no longer reads: export it "
                "in the environment, then `discoveryctl secrets delete DATABASE_URL`"
            )

    def sqlite_creation(self, asked: bool = False) -> Creation:
        """What opening the database may create (``Creation``)."""
        if self.uses_default_database:
            return "file and folders"
        return "file" if asked else "never"

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL, with plain ``postgres://`` URLs mapped to psycopg 3."""
        raw = self.get("DATABASE_URL")
        if raw is None:
            return f"sqlite:///{self.default_database_path}"
        return normalise_database_url(raw)

    @property
    def frontend_url(self) -> str:
        return self.http_url("FRONTEND_URL", DEFAULT_FRONTEND_URL).rstrip("/")

    @property
    def redirect_uri(self) -> str:
        return self.http_url("AMAZON_REDIRECT_URI", DEFAULT_REDIRECT_URI)

    @property
    def app_draft(self) -> bool:
        value = (self.get("AMAZON_APP_DRAFT") or "0").lower()
        if value in ("1", "true", "yes"):
            return True
        if value in ("0", "false", "no"):
            return False
        raise ConfigurationError(f"AMAZON_APP_DRAFT must be 1 or 0, not {value!r}")

    @property
    def log_level(self) -> str:
        value = (self.get("LOG_LEVEL") or "info").lower()
        if value not in LOG_LEVELS:
            raise ConfigurationError(
                f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, not {value!r}"
            )
        return value

    @property
    def log_format(self) -> str:
        value = self.get("LOG_FORMAT")
        if value is None:
            return "console" if sys.stderr.isatty() else "json"
        value = value.lower()
        if value not in LOG_FORMATS:
            raise ConfigurationError(f"LOG_FORMAT must be console or json, not {value!r}")
        return value

    def encryption_keys(self) -> tuple[list[str], Path | None]:
        """The Fernet keys (current first) and the file they came from, if generated.

        Only the SQLite default may fall back to a key file kept beside the database.
        """
        value = self.get("DISCOVERY_ENCRYPTION_KEY")
        if value is not None:
            return split_keys(value, self.named("DISCOVERY_ENCRYPTION_KEY")), None
        if not self.uses_default_database:
            raise ConfigurationError(
                "DISCOVERY_ENCRYPTION_KEY is not set (required for any database but the "
                "SQLite default): run `discoveryctl secrets generate-key`, then "
                f"{how_to_set('DISCOVERY_ENCRYPTION_KEY')}"
            )
        path = self.key_file
        key = read_or_create_secret_file(
            path, new_fernet_key, "back this file up: without it the stored tokens cannot be read"
        )
        return split_keys(key), path

    def jwt_secret(self) -> str:
        value = self.get("JWT_SECRET")
        if value is not None:
            if len(value) < 32:
                raise ConfigurationError(
                    f"{self.named('JWT_SECRET')} is too short: use at least 32 characters"
                )
            return value
        if not self.uses_default_database:
            raise ConfigurationError(f"JWT_SECRET is not set: {how_to_set('JWT_SECRET')}")
        return read_or_create_secret_file(
            self.data_dir / "jwt.secret",
            lambda: secrets.token_urlsafe(48),
            "a new JWT secret: API tokens and OAuth states signed before are no longer valid",
        )

    def http_url(self, name: str, default: str = "", *, shown: bool = True) -> str:
        """The setting ``name`` (else ``default``) as an http(s) URL, refused otherwise;
        ``shown=False`` keeps a secret URL out of the message."""
        value = self.get(name) or default
        parts = urlsplit(value)
        named = self.named(name)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(
                f"{named} must be an http(s) URL" + (f", not {value!r}" if shown else "")
            )
        try:
            parts.port  # noqa: B018 (validates the port)
        except ValueError:
            raise ConfigurationError(
                f"{named} has an invalid port" + (f": {value!r}" if shown else "")
            ) from None
        return value


def split_keys(value: str, name: str = "DISCOVERY_ENCRYPTION_KEY") -> list[str]:
    keys = [k.strip() for k in value.split(",") if k.strip()]
    if not keys:
        raise ConfigurationError(f"{name} is empty")
    return keys


def check_secret(name: str, value: str) -> None:
    """Refuse a value ``secrets set`` would store for ``name`` that no command could use,
    with the reason (the same rules the commands apply when they read it)."""
    from datetime import UTC, date, datetime

    if name == "DISCOVERY_ENCRYPTION_KEY":
        from cryptography.fernet import Fernet

        for position, key in enumerate(split_keys(value), start=1):
            try:
                Fernet(key.encode())
            except (ValueError, TypeError):
                raise ConfigurationError(
                    f"key #{position} is not a Fernet key (32 url-safe base64-encoded bytes): "
                    "make one with `discoveryctl secrets generate-key`"
                ) from None
    elif name == "JWT_SECRET":
        Config({name: value}, keyring=None).jwt_secret()
    elif name == "AMAZON_LWA_CLIENT_SECRET_ROTATED_AT":
        try:
            rotated = date.fromisoformat(value)
        except ValueError:
            raise ConfigurationError(f"{value!r} is not a date (YYYY-MM-DD)") from None
        if rotated > datetime.now(UTC).date():
            raise ConfigurationError(f"{value} is in the future")
    elif name == "DISCOVERY_ADMIN_WEBHOOK_URL":
        Config({name: value}, keyring=None).http_url(name, "", shown=False)
    elif name == "STRIPE_API_KEY" and not value.startswith(("sk_", "rk_")):
        # Stripe's secret keys start sk_ (sk_test_, sk_live_), restricted keys rk_
        # ("API keys", https://docs.stripe.com/keys); a pk_ key is the publishable one.
        raise ConfigurationError("a Stripe secret key starts with sk_ (or rk_, restricted)")


def normalise_database_url(raw: str) -> str:
    """Map the URLs Supabase and Heroku hand out to the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if raw.startswith(prefix):
            return "postgresql+psycopg://" + raw[len(prefix) :]
    return raw


def new_fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def _publish(path: Path, text: str, *, replace: bool = False) -> bool:
    """Write ``path`` (mode 0600) holding ``text`` whole, never empty or half-written: the
    text goes to a private temporary file beside it, which is then linked into place, or
    with ``replace`` renamed over what was there. False when ``path`` already existed and
    was not to be replaced (it is left as it was)."""
    import tempfile

    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:  # mkstemp: mode 0600
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)
            except FileExistsError:
                return False
        _sync_folder(path.parent)
        return True
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)


def _sync_folder(folder: Path) -> None:
    """Make a new name in ``folder`` survive a power cut (the file's own data is synced)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_secret_file(path: Path, value: str) -> None:
    """Put ``value`` in ``path`` at once: a reader sees the old text or the new, whole."""
    _publish(path, value + "\n", replace=True)


def read_or_create_secret_file(path: Path, make: Callable[[], str], hint: str) -> str:
    """Read a generated secret, or create it once with mode 0600 and a warning."""
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise ConfigurationError(f"cannot read {path}: {reason}") from None
    else:
        if not value:
            raise ConfigurationError(f"{path} is empty: restore it from a backup, or remove it")
        return value
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    if not _publish(path, value + "\n"):  # another process created it first: use theirs
        return path.read_text(encoding="utf-8").strip()
    from discoveryctl.support.logging import get_logger

    get_logger().warning(
        "generated_secret_file",
        path=str(path),
        hint=hint,
    )
    return value
