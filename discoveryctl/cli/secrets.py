"""`discoveryctl secrets`: settings kept in the OS keyring instead of the environment."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import typer

from discoveryctl.config import KEYRING_SERVICE, SETTINGS, check_secret
from discoveryctl.errors import ConfigurationError, InvalidInput, NotFound

group = typer.Typer(
    help="Keep secrets in the OS keyring (service `discoveryctl`); the environment wins.\n\n\b\n"
    "Example: discoveryctl secrets set STRIPE_API_KEY",
    no_args_is_help=True,
)

ROTATED_AT = "AMAZON_LWA_CLIENT_SECRET_ROTATED_AT"


RETIRED = frozenset({"DATABASE_URL"})
"""Names earlier versions kept in the keyring and this one does not read: they can still be
shown and deleted."""


def _secret_name(name: str, retired: bool = False) -> str:
    name = name.upper()
    setting = SETTINGS.get(name)
    if retired and name in RETIRED:
        return name
    if setting is None or not setting.secret:
        known = ", ".join(sorted(n for n, s in SETTINGS.items() if s.secret))
        raise InvalidInput(f"{name} is not a secret discoveryctl reads; one of: {known}")
    return name


def _keyring() -> object:
    import keyring
    from keyring.backends.fail import Keyring as NoKeyring

    from discoveryctl.config import keyring_backend_error

    try:
        backend = keyring.get_keyring()
    except Exception as error:  # a PYTHON_KEYRING_BACKEND that cannot load
        raise keyring_backend_error(error) from None
    if isinstance(backend, NoKeyring):
        raise ConfigurationError(
            "no OS keyring is available on this machine: set the variable in the "
            "environment instead"
        )
    return backend


@group.command("set")
def set_secret(
    name: str = typer.Argument(..., help="The variable name, e.g. STRIPE_API_KEY."),
) -> None:
    """Store a secret, read from a hidden prompt or the first line of stdin.

    \b
    Example: discoveryctl secrets set AMAZON_LWA_CLIENT_SECRET
    """

    name = _secret_name(name)
    backend = _keyring()
    if sys.stdin.isatty():
        value = typer.prompt(name, hide_input=True, confirmation_prompt=True)
    else:
        value = sys.stdin.readline().strip()
    if not value:
        raise InvalidInput(f"no value given for {name}")
    try:
        check_secret(name, value)
    except ConfigurationError as error:
        raise InvalidInput(f"{name} not stored: {error.message}") from None
    _store(backend, name, value)
    if name == "AMAZON_LWA_CLIENT_SECRET":
        _store(backend, ROTATED_AT, datetime.now(UTC).date().isoformat())
    typer.echo(f"stored {name} in the {type(backend).__name__} keyring", err=True)


def _store(backend: object, name: str, value: str) -> None:
    """Store, then read back: some backends accept a value and keep nothing."""
    import keyring

    keyring.set_password(KEYRING_SERVICE, name, value)
    if keyring.get_password(KEYRING_SERVICE, name) != value:
        raise ConfigurationError(
            f"the {type(backend).__name__} keyring stored nothing for {name}: use a keyring "
            "that keeps secrets, or set the variable in the environment"
        )


@group.command("get")
def get_secret(
    name: str = typer.Argument(..., help="The variable name."),
    show: bool = typer.Option(False, "--show", help="Print the value itself, unmasked."),
) -> None:
    """Print a stored secret, masked unless --show.

    \b
    Example: discoveryctl secrets get STRIPE_API_KEY
    """
    import keyring

    name = _secret_name(name, retired=True)
    _keyring()
    value = keyring.get_password(KEYRING_SERVICE, name)
    if value is None:
        raise NotFound(f"{name} is not in the keyring")
    typer.echo(value if show else mask(value))


@group.command("delete")
def delete_secret(name: str = typer.Argument(..., help="The variable name.")) -> None:
    """Remove a secret from the keyring.

    \b
    Example: discoveryctl secrets delete STRIPE_API_KEY
    """
    import keyring
    from keyring.errors import PasswordDeleteError

    name = _secret_name(name, retired=True)
    _keyring()
    try:
        keyring.delete_password(KEYRING_SERVICE, name)
    except PasswordDeleteError:
        raise NotFound(f"{name} is not in the keyring") from None
    typer.echo(f"deleted {name}", err=True)


@group.command("generate-key")
def generate_key() -> None:
    """Print a new encryption key for DISCOVERY_ENCRYPTION_KEY.

    \b
    Example: export DISCOVERY_ENCRYPTION_KEY=$(discoveryctl secrets generate-key)
    """
    from discoveryctl.support.crypto import generate_key as new_key

    typer.echo(new_key())


def mask(value: str) -> str:
    """Enough to recognise a secret, not enough to use it."""
    if len(value) <= 8:
        return "*" * len(value)
    return value[:4] + "*" * 8 + value[-2:]
