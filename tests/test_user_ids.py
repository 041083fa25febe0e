"""One user-id rule on every path (docs/behaviour.md §4), checked before any SQL: the same answer on
SQLite, which would store anything, and PostgreSQL, whose columns hold 255 characters."""

from __future__ import annotations

import json
from typing import Any

import pytest

from discoveryctl.errors import InvalidInput
from discoveryctl.support.user_ids import MAX_LENGTH, shown, valid_user_id


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("seller-42", "seller-42"),
        ("  seller-42 ", "seller-42"),
        ("e\u0301mile", "\u00e9mile"),  # NFC: one stored form for what looks the same
        ("\u00e9mile", "\u00e9mile"),
        ("\u5c71\u7530", "\u5c71\u7530"),
        ("a" * MAX_LENGTH, "a" * MAX_LENGTH),
        ("user@example.com", "user@example.com"),
    ],
)
def test_acceptable_ids_are_stored_in_one_form(raw: str, stored: str) -> None:
    assert valid_user_id(raw) == stored


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "it is blank"),
        ("   ", "it is blank"),
        ("a" * (MAX_LENGTH + 1), "it is 256 characters long, more than 255"),
        ("a" * 300, "it is 300 characters long, more than 255"),
        ("a\x00b", "a control character (U+0000)"),
        ("a\nb", "a control character (U+000A)"),
        ("a\tb", "a control character (U+0009)"),
        ("a\x1b[31mb", "a control character (U+001B)"),
        ("a\x85b", "a control character (U+0085)"),
        ("admin\u202e", "an invisible formatting character (bidi override or zero-width) (U+202E)"),
        ("a\u2066b", "(U+2066)"),
        ("a\u200bb", "(U+200B)"),
        ("a\u200db", "(U+200D)"),
        ("\ufeffa", "(U+FEFF)"),
        ("a\u2028b", "a line separator (U+2028)"),
        ("a\u2029b", "a paragraph separator (U+2029)"),
        ("a\ud800b", "a lone surrogate (U+D800)"),
        ("a\ue000b", "a private-use character (U+E000)"),
        ("a\u0378b", "an unassigned character (U+0378)"),
        ("bob\u034f", "an invisible character (U+034F)"),  # combining grapheme joiner
        ("bob\ufe0f", "an invisible character (U+FE0F)"),  # variation selector
        ("\u3164", "an invisible character (U+3164)"),  # Hangul filler
        ("\u115f\u1160", "an invisible character (U+115F)"),
        ("a\u17b4", "an invisible character (U+17B4)"),
        ("a\u180b", "an invisible character (U+180B)"),
        ("a\uffa0", "an invisible character (U+FFA0)"),
        ("a\U0001d173", "(U+1D173)"),
        ("a\U000e0041", "(U+E0041)"),
        ("\u2800", "it is blank"),  # braille blank draws nothing
        (" \u2800 \u2800", "it is blank"),
    ],
)
def test_unacceptable_ids_are_refused_with_the_reason(raw: str, reason: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        valid_user_id(raw)
    message = caught.value.message
    assert message.startswith(f"user id {shown(raw)} is not acceptable: it ")
    assert message.endswith(reason)
    assert message.isprintable()


@pytest.mark.parametrize(
    ("raw", "quoted"),
    [
        ("bob", "'bob'"),
        ("\u00e9mile", "'\u00e9mile'"),  # printable: as typed
        ("a" * 60, repr("a" * 60)),
        ("a" * 61, repr("a" * 60 + "\u2026")),
        ("a\x1b[2Jb", "'a\\x1b[2Jb'"),  # not printable: escaped, accents too
        ("\u00e9\x00", "'\\xe9\\x00'"),
        ("b\u202eob", "'b\\u202eob'"),
    ],
)
def test_an_id_in_a_message_cannot_move_the_terminal_s_cursor(raw: str, quoted: str) -> None:
    assert shown(raw) == quoted


def test_a_255_character_id_after_normalising_is_accepted() -> None:
    raw = "e\u0301" * MAX_LENGTH  # 510 code points, 255 once composed
    assert valid_user_id(raw) == "\u00e9" * MAX_LENGTH


LONG = "u" * 300


@pytest.mark.parametrize(
    "args",
    [
        ("connect", "amazon", "--user", LONG, "--no-browser", "--timeout", "1"),
        ("reconnect", "amazon", "--user", LONG),
        ("status", "--user", LONG),
        ("events", "--user", LONG),
        ("notifications", "--user", LONG),
        ("connect", "amazon", "--user", "bob\u202e", "--no-browser", "--timeout", "1"),
        ("stripe", "ensure-customer", "--user", LONG, "--email", "a@example.com"),
        ("stripe", "ensure-customer", "--user", "a\u200bb", "--email", "a@example.com"),
        ("stripe", "ensure-customer", "--user", "  ", "--email", "a@example.com"),
        ("refresh", "amazon", "--user", LONG),
        ("access-token", "amazon", "--user", "x\x07"),
        ("check", "amazon", "--user", LONG),
    ],
    ids=[
        "connect",
        "reconnect",
        "status",
        "events",
        "notifications",
        "connect-bidi",
        "ensure-customer",
        "ensure-customer-zero-width",
        "ensure-customer-blank",
        "refresh",
        "access-token-control",
        "check",
    ],
)
def test_every_command_refuses_a_bad_id_alike_on_every_backend(
    db: Any, cli: Any, args: tuple[str, ...]
) -> None:
    result = cli(*args)
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith("error: user id ")
    assert len(result.stderr.splitlines()) == 1
    assert result.stdout == ""
    tables = ("oauth_states", "events", "integration_status", "notifications", "stripe_customers")
    for table in tables:
        assert db.scalar(f"SELECT count(*) FROM {table}") == 0, table


def test_import_lines_follow_the_same_rule(db: Any, cli: Any, tmp_path: Any) -> None:
    source = tmp_path / "ids.jsonl"
    source.write_text(
        "\n".join(
            json.dumps({"user_id": user_id, "provider": "stripe", "email": "a@example.com"})
            for user_id in (
                "e\u0301mile",
                "u" * 300,
                "bob\u202e",
                "zero\u200bwidth",
                "ok",
                "bob\u0085",  # str.strip() would drop it: the rule sees the id as given
                "amy\u2028",
            )
        )
        + "\n"
    )
    result = cli("import", str(source))
    assert result.exit_code == 1
    assert [line for line in result.stderr.splitlines() if line.startswith("line ")] == [
        "line 2: user_id is not acceptable: it is 300 characters long, more than 255",
        "line 3: user_id is not acceptable: it contains an invisible formatting character "
        "(bidi override or zero-width) (U+202E)",
        "line 4: user_id is not acceptable: it contains an invisible formatting character "
        "(bidi override or zero-width) (U+200B)",
        "line 6: user_id is not acceptable: it contains a control character (U+0085)",
        "line 7: user_id is not acceptable: it contains a line separator (U+2028)",
    ]
    stored = db.rows("SELECT user_id FROM integration_status ORDER BY user_id")
    assert stored == [{"user_id": "ok"}, {"user_id": "\u00e9mile"}]  # one form: NFC
    found = cli("status", "--user", "e\u0301mile", "--json").json()  # typed either way
    assert [row["user_id"] for row in found] == ["\u00e9mile"]
