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
