"""The error tree: every error has a kind, every kind one exit code and one HTTP status, and
the CLI ends each kind of problem with its code."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from discoveryctl import errors
from discoveryctl.cli import EXIT_CODES
from discoveryctl.errors import DiscoveryError, ErrorKind
from discoveryctl.server.errors import HTTP_STATUS, error_response

ERRORS = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, DiscoveryError) and cls is not DiscoveryError
]


def test_every_kind_has_one_exit_code_and_one_http_status() -> None:
    assert set(EXIT_CODES) == set(ErrorKind)
    assert set(HTTP_STATUS) == set(ErrorKind)


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__name__)
def test_every_error_says_its_kind(cls: type[DiscoveryError]) -> None:
    assert isinstance(cls.kind, ErrorKind)


def test_the_tree_is_drawn_in_the_module_docstring() -> None:
    doc = errors.__doc__ or ""
    for cls in ERRORS:
        line = next((row for row in doc.splitlines() if f" {cls.__name__} " in row), None)
        assert line is not None, cls.__name__
        kind, exit_code, status = line.split()[-3:]
        assert kind == cls.kind.value, cls.__name__
        assert int(exit_code) == EXIT_CODES[cls.kind], cls.__name__
        assert int(status) == HTTP_STATUS[cls.kind], cls.__name__


@pytest.mark.parametrize(
    ("error", "exit_code", "status"),
    [
        (errors.ConfigurationError("x"), 2, 500),
        (errors.DatabaseUnavailable("x"), 2, 503),
        (errors.DatabaseConflict("x"), 1, 409),
        (errors.InvalidInput("x"), 2, 400),
        (errors.NotFound("x"), 2, 404),
        (errors.SellerAuthorizationRevoked("x"), 1, 409),
        (errors.AppCredentialsRejected("x"), 3, 502),
        (errors.TransientProviderError("x"), 1, 503),
        (errors.ProviderError("x"), 1, 502),
        (errors.OAuthCallbackError("invalid_state", "x"), 1, 400),
        (errors.NeedsAttention("x"), 1, 200),
        (errors.Interrupted("x"), 130, 503),
    ],
)
def test_what_each_kind_means_to_the_operator_and_to_a_client(
    error: DiscoveryError, exit_code: int, status: int
) -> None:
    assert EXIT_CODES[error.kind] == exit_code
    assert error_response(error) == (status, {"success": False, "error": error.message})


# -- the CLI, end to end ----------------------------------------------------------------------


def test_a_usage_problem_exits_2_with_one_line(db: Any, cli: Any) -> None:
    result = cli("status", "--user", " ")
    assert result.exit_code == 2
    assert result.stderr == "error: user id ' ' is not acceptable: it is blank\n"


def test_needing_attention_exits_1_without_calling_it_an_error(
    db: Any, cli: Any, tmp_path: Any
) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_text('{"user_id": "u1"}\n')
    result = cli("import", str(source))
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == "1 line rejected"


def test_an_unreachable_database_exits_2_as_unavailable(
    cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("DATABASE_URL", f"postgresql://nobody@127.0.0.1:{port}/none")
    monkeypatch.setenv("DISCOVERY_ENCRYPTION_KEY", "x" * 44)
    result = cli("status")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: cannot use the database at postgresql")
    assert len(result.stderr.splitlines()) == 1
