"""Every command has help text with an example, and is in the README."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer

from discoveryctl.cli import app

README = (Path(__file__).parent.parent / "README.md").read_text()


def commands() -> list[tuple[str, Any]]:
    root = typer.main.get_command(app)
    found = []

    def walk(prefix: str, command: Any) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            path = f"{prefix} {name}".strip()
            found.append((path, sub))
            walk(path, sub)

    walk("", root)
    return found


@pytest.mark.parametrize(("path", "command"), commands(), ids=lambda v: str(v))
def test_command_has_help_with_an_example_and_is_documented(path: str, command: Any) -> None:
    assert command.help, f"{path} has no help text"
    assert "Example: discoveryctl" in command.help or "Example: " in command.help, path
    assert f"discoveryctl {path}" in README, f"README does not mention `discoveryctl {path}`"


def test_help_lists_every_command(cli: Any) -> None:
    result = cli("--help")
    assert result.exit_code == 0
    for path, _ in commands():
        if " " not in path:
            assert path in result.stdout


def test_version_and_shell_completion(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import version

    shown = cli("--version")
    assert shown.exit_code == 0
    assert shown.stdout == f"discoveryctl {version('discoveryctl')}\n"
    # The shell named, not detected from the process's parents: a test run with no shell
    # above it (started by cron, or detached) has none to detect.
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    completion = cli("--show-completion", "bash")
    assert completion.exit_code == 0 and "_discoveryctl_completion" in completion.stdout


def test_providers_are_named_in_any_case(cli: Any) -> None:
    assert cli("status", "Amazon").exit_code == 0
    assert cli("status", "STRIPE", "--json").json() == []
    assert cli("refresh-all", "--provider", "Stripe", "--dry-run").exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("status", "foo"), "error: invalid value for 'provider': 'foo' is not one of"),
        (("status", "--limit", "x"), "invalid value for '--limit': 'x' is not a whole number"),
        (("refresh-all", "--concurrency", "0"), "'--concurrency': 0 must be from 1 to 512"),
        (("export", "--nope"), "error: no such option: --nope (see discoveryctl export --help)"),
        (("nosuch",), "error: no such command 'nosuch' (see discoveryctl --help)"),
    ],
)
def test_a_bad_option_or_value_is_one_line_like_every_other_error(
    cli: Any, args: tuple[str, ...], message: str
) -> None:
    result = cli(*args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Usage:" not in result.stderr
    assert "Value error" not in result.stderr and "Input should" not in result.stderr


@pytest.mark.parametrize(("path", "command"), commands(), ids=lambda v: str(v))
def test_the_example_in_help_is_never_wrapped(
    cli: Any, monkeypatch: pytest.MonkeyPatch, path: str, command: Any
) -> None:
    monkeypatch.setenv("COLUMNS", "30")  # narrower than every example
    example = next(line for line in command.help.splitlines() if "Example: " in line).strip()
    shown = cli(*path.split(), "--help")
    assert shown.exit_code == 0
    assert example in [line.strip() for line in shown.stdout.splitlines()], shown.stdout


def test_messages_to_a_pipe_are_one_line_however_long(
    cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    lines = tmp_path / "bad.jsonl"
    lines.write_text('{"user_id": "a-user-whose-line-is-wrong", "provider": "amazon"}\n')
    result = cli("import", str(lines))
    assert result.exit_code == 1
    (reported,) = [line for line in result.stderr.splitlines() if line.startswith("line 1:")]
    assert len(reported) > 40 and reported.endswith("selling_partner_id")
