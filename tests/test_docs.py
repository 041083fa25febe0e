"""Every command has help text with an example, and is in the README; every document the
repository cites is in it, and every link, path and section a document names is there."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer

from discoveryctl.cli import app

REPOSITORY = Path(__file__).parent.parent
README = (REPOSITORY / "README.md").read_text()


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


# -- the documents ------------------------------------------------------------------------------

DOCUMENTS = [
    REPOSITORY / "README.md",
    REPOSITORY / "SANDBOX.md",
    *(REPOSITORY / "docs").glob("*.md"),
]
_TEXT = {".py", ".md", ".toml", ".ini", ".cfg", ".mako", ".txt", ".yml", ".yaml", ".json"}
_NOT_SOURCES = {"__pycache__", "mutants", "node_modules", "build", "dist"}


def repository_files() -> list[Path]:
    """Every text file of the repository: sources, tests, documents, configuration (not the
    virtualenv, caches or build output)."""
    found = []
    for path in sorted(REPOSITORY.rglob("*")):
        parts = path.relative_to(REPOSITORY).parts
        if any(
            (part.startswith(".") and part != ".ci")
            or part in _NOT_SOURCES
            or part.endswith(".egg-info")
            for part in parts
        ):
            continue
        if path.is_file() and (path.suffix in _TEXT or path.name in ("Makefile", "run")):
            found.append(path)
    return found


def cited(pattern: str, flags: int = 0) -> list[tuple[str, str]]:
    """Every match of ``pattern`` in the repository's files, as (file:line, match)."""
    hits = []
    for path in repository_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for match in re.finditer(pattern, line, flags):
                hits.append((f"{path.relative_to(REPOSITORY)}:{number}", match.group(0)))
    return hits


def test_the_documents_are_found() -> None:
    """The searches below see the code, the tests and the documents (an empty search would
    pass every check)."""
    names = {str(path.relative_to(REPOSITORY)) for path in repository_files()}
    assert {"README.md", "docs/behaviour.md", "pyproject.toml", "discoveryctl/errors.py"} <= names
    assert "tests/test_docs.py" in names and "migrations/env.py" in names
    assert cited(r"docs/behaviour\.md §5")


def test_every_document_the_repository_cites_is_in_it() -> None:
    # a docs/ path that is not part of another address (Amazon's and Stripe's docs sites),
    # nor of a pattern (a backslash after it)
    missing = [
        (where, path)
        for where, path in cited(r"(?<![\w/.-])docs/[\w./-]+(?![\w./\\-])")
        if not (REPOSITORY / path.rstrip(".")).exists()
    ]
    assert missing == []


def test_no_file_cites_a_document_the_repository_does_not_hold() -> None:
    outside = "SP" + "EC"  # spelt apart, so that this file does not cite it either
    assert cited(rf"\b{outside}\b") == []
    assert cited(r"\bseed (document|API)\b|\bthe seed's\b", re.IGNORECASE) == []


def test_every_section_cited_is_in_the_behaviour_reference() -> None:
    text = (REPOSITORY / "docs" / "behaviour.md").read_text()
    sections = set(re.findall(r"^## (\d+)\. ", text, re.MULTILINE))
    assert sections == {str(n) for n in range(1, 10)}
    unknown = []
    for path in repository_files():
        body = path.read_text(errors="replace")
        for citation in re.finditer(r"docs/behaviour\.md\s+((?:§\d+(?:,\s*)?)+)", body):
            for number in re.findall(r"§(\d+)", citation.group(1)):
                if number not in sections:
                    unknown.append((str(path.relative_to(REPOSITORY)), f"§{number}"))
    assert unknown == []


def _anchors(document: Path) -> set[str]:
    """The heading anchors GitHub makes: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", document.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: d.name)
def test_every_link_and_path_a_document_names_is_there(document: Path) -> None:
    text = document.read_text()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        path, _, anchor = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        if not linked.exists() or (anchor and anchor not in _anchors(linked)):
            broken.append(target)
    # paths in the repository, named in backticks: from its root, or (the layout) the package's
    for path in re.findall(
        r"`((?:discoveryctl|tests|benchmarks|scripts|migrations|docs)/[^`\s]*)`", text
    ):
        if not (REPOSITORY / path).exists():
            broken.append(path)
    if document.name == "architecture.md":
        for path in re.findall(r"`([\w/]+\.py)`", text):
            if not (REPOSITORY / "discoveryctl" / path).exists():
                broken.append(path)
    assert broken == []
