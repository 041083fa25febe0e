"""One duration grammar for every option that takes one: what it reads, what it refuses and
why, and the commands that take it (`--deadline`, `--lease`, `--window`, `--since`,
`--older-than`, `--ttl`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
import sqlalchemy as sa

from discoveryctl.db.models import Event, table_of
from discoveryctl.errors import InvalidInput
from discoveryctl.sandbox import Sandbox
from discoveryctl.support.durations import parse, since

from helpers import import_sellers

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "options", "length"),
    [
        ("30s", {}, timedelta(seconds=30)),
        ("4m", {}, timedelta(minutes=4)),
        ("1h", {}, timedelta(hours=1)),
        ("2d", {}, timedelta(days=2)),
        ("1w", {}, timedelta(weeks=1)),
        ("1h30m", {}, timedelta(hours=1, minutes=30)),
        ("2d12h", {}, timedelta(days=2, hours=12)),
        ("1w2d3h4m5s", {}, timedelta(weeks=1, days=2, hours=3, minutes=4, seconds=5)),
        ("90D", {}, timedelta(days=90)),
        ("1H30M", {}, timedelta(hours=1, minutes=30)),
        ("12W", {}, timedelta(weeks=12)),
        ("  4m  ", {}, timedelta(minutes=4)),
        ("4 m", {}, timedelta(minutes=4)),
        ("1h 30m", {}, timedelta(hours=1, minutes=30)),
        ("007s", {}, timedelta(seconds=7)),
        ("90s", {}, timedelta(seconds=90)),  # more than a minute's worth is fine
        ("48h", {"units": "wdh"}, timedelta(hours=48)),
        ("90d", {"units": "wdh"}, timedelta(days=90)),
        ("1d12h", {"units": "wdh"}, timedelta(days=1, hours=12)),
        ("0s", {"zero": True}, timedelta(0)),
        ("0h0m", {"zero": True}, timedelta(0)),
        ("365d", {"now": datetime(2, 1, 1, tzinfo=UTC)}, timedelta(days=365)),  # to year 1
    ],
)
def test_durations_it_reads(text: str, options: dict[str, Any], length: timedelta) -> None:
    assert parse(text, "--opt", **{"now": NOW, **options}) == length


@pytest.mark.parametrize(
    ("text", "options", "message"),
    [
        # A bare number: never seconds; the message names the units it needs.
        ("4", {}, "'4' is not a duration: a number needs a unit, as in 4s, 4m, 4h, 4d or 4w"),
        (" 90 ", {"units": "wdh"}, "a number needs a unit, as in 90h, 90d or 90w"),
        ("0", {"zero": True}, "a number needs a unit, as in 0s, 0m, 0h, 0d or 0w"),
        ("9" * 40, {}, "a number needs a unit, as in 4s, 4m, 4h, 4d or 4w"),
        ("9" * 12, {}, f"as in {'9' * 12}s, {'9' * 12}m, "),  # twelve digits are still shown
        ("9" * 13, {}, "a number needs a unit, as in 4s, 4m, 4h, 4d or 4w"),  # thirteen are not
        # Zero where the option says it makes no sense.
        ("0s", {}, "'0s' is not a duration like 90s, 4m, 1h30m, 90d or 12w: it must be longer"),
        ("0d0h", {}, "it must be longer than zero"),
        ("0h", {"units": "wdh"}, "it must be longer than zero"),
        # Each unit once, largest first.
        ("30m1h", {}, "each unit at most once, largest first, as in 2d12h"),
        ("1h1h", {}, "each unit at most once, largest first"),
        ("1s1w", {}, "each unit at most once, largest first"),
        # Units the option does not take: minutes are never months.
        ("90m", {"units": "wdh"}, "is not a duration like 48h, 90d or 12w: minutes are not taken"),
        ("90M", {"units": "wdh"}, "minutes are not taken here, only hours, days or weeks"),
        ("3600s", {"units": "wdh"}, "seconds are not taken here, only hours, days or weeks"),
        ("1d30m", {"units": "wdh"}, "minutes are not taken here"),
        ("1h30m5s", {"units": "wdh"}, "minutes and seconds are not taken here"),
        ("soon", {"units": "wdh"}, "'soon' is not a duration like 48h, 90d or 12w (hours, days"),
        # Not a duration at all.
        ("soon", {}, "'soon' is not a duration like 90s, 4m, 1h30m, 90d or 12w"),
        ("", {}, "'' is not a duration like"),
        ("   ", {}, "is not a duration like"),
        ("h", {}, "is not a duration like"),
        ("1.5h", {}, "is not a duration like"),
        ("-1h", {}, "is not a duration like"),
        ("+1h", {}, "is not a duration like"),
        ("1h30", {}, "is not a duration like"),
        ("1mo", {}, "is not a duration like"),
        ("1y", {}, "is not a duration like"),
        ("1 h 3 0 m", {}, "is not a duration like"),
        ("\u0663s", {}, "is not a duration like"),  # ARABIC-INDIC DIGIT THREE: ASCII digits only
        ("30\u017f", {}, "is not a duration like"),  # LATIN SMALL LETTER LONG S: ASCII units only
        ("1h\u202e", {}, "'1h\\u202e' is not a duration"),  # shown escaped
        # Longer than the calendar: refused in one line, no traceback.
        ("3000000d", {}, "'3000000d' is too long: it reaches back before year 1"),
        ("99999999999w", {}, "is too long: it reaches back before year 1"),
        ("9" * 5000 + "s", {}, "…' is too long: it reaches back before year 1"),
        ("366d", {"now": datetime(2, 1, 1, tzinfo=UTC)}, "is too long"),
    ],
)
def test_durations_it_refuses_and_why(text: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse(text, "--opt", **{"now": NOW, **options})
    assert message in str(refused.value)
    assert str(refused.value).startswith("--opt ")  # the option is named
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 200


@pytest.mark.parametrize(
    ("text", "options", "message"),
    [
        ("soon", {}, "--opt 'soon' is not a duration like 90s, 4m, 1h30m, 90d or 12w"),
        (
            "soon",
            {"units": "wdh"},
            "--opt 'soon' is not a duration like 48h, 90d or 12w (hours, days or weeks only)",
        ),
        ("4", {}, "--opt '4' is not a duration: a number needs a unit, as in 4s, 4m, 4h, 4d or 4w"),
        (
            "30m1h",
            {},
            "--opt '30m1h' is not a duration: each unit at most once, largest first, as in 2d12h",
        ),
        (
            "0s",
            {},
            "--opt '0s' is not a duration like 90s, 4m, 1h30m, 90d or 12w: "
            "it must be longer than zero",
        ),
        (
            "90m",
            {"units": "wdh"},
            "--opt '90m' is not a duration like 48h, 90d or 12w: "
            "minutes are not taken here, only hours, days or weeks",
        ),
        ("3000000d", {}, "--opt '3000000d' is too long: it reaches back before year 1"),
    ],
)
def test_a_refusal_says_this_and_nothing_more(
    text: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse(text, "--opt", **{"now": NOW, **options})
    assert str(refused.value) == message


@pytest.fixture
def local_zone() -> Iterator[Callable[[str], None]]:
    """Sets the process's local time zone (``TZ``) for one test, then puts it back."""
    local = os.environ.get("TZ")

    def set_zone(name: str) -> None:
        os.environ["TZ"] = name
        time.tzset()

    yield set_zone
    if local is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = local
    time.tzset()


@pytest.mark.parametrize(
    ("zone", "past_year_1", "taken"),
    [
        ("Etc/GMT+12", timedelta(hours=-6), True),  # twelve hours behind UTC
        ("Etc/GMT-14", timedelta(hours=6), False),  # fourteen hours ahead of UTC
    ],
    ids=["behind-utc", "ahead-of-utc"],
)
def test_year_1_is_reckoned_from_now_in_utc_whatever_the_local_zone(
    local_zone: Callable[[str], None], zone: str, past_year_1: timedelta, taken: bool
) -> None:
    local_zone(zone)
    back_to_year_1 = datetime.now(UTC) - datetime(1, 1, 1, tzinfo=UTC)
    text = f"{int((back_to_year_1 + past_year_1).total_seconds())}s"
    if taken:
        assert parse(text, "--opt") > timedelta(days=365 * 2000)
    else:
        with pytest.raises(InvalidInput, match="is too long: it reaches back before year 1"):
            parse(text, "--opt")


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("24h", NOW - timedelta(hours=24)),
        ("1H30M", NOW - timedelta(hours=1, minutes=30)),
        (" 7d ", NOW - timedelta(days=7)),
        ("0s", NOW),  # zero makes sense here: from now on
        ("2024-01-01", datetime(2024, 1, 1, tzinfo=UTC)),  # no offset: UTC
        ("20240101", datetime(2024, 1, 1, tzinfo=UTC)),  # a number that is an ISO 8601 date
        ("2024-01-01T00:00:00+02:00", datetime(2023, 12, 31, 22, tzinfo=UTC)),
    ],
)
def test_since_is_a_duration_back_from_now_or_a_time(text: str, moment: datetime) -> None:
    assert since(text, "--since", now=NOW) == moment


def test_since_reads_a_time_without_an_offset_as_utc_whatever_the_local_zone(
    local_zone: Callable[[str], None],
) -> None:
    local_zone("Pacific/Auckland")
    assert since("2024-01-01 09:30", "--since") == datetime(2024, 1, 1, 9, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("90", "'90' is neither an ISO 8601 time nor a duration: a number needs a unit, as in "),
        ("yesterday", "'yesterday' is neither an ISO 8601 time nor a duration like 90s, 4m"),
        ("30m1h", "each unit at most once, largest first"),
        ("99999999999d", "is too long: it reaches back before year 1"),
    ],
)
def test_since_refuses_what_is_neither(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        since(text, "--since", now=NOW)
    assert str(refused.value).startswith("--since ") and message in str(refused.value)


def test_since_reaches_back_to_year_1_from_its_own_now_and_no_further() -> None:
    year_2 = datetime(2, 1, 1, tzinfo=UTC)
    assert since("365d", "--since", now=year_2) == datetime(1, 1, 1, tzinfo=UTC)
    with pytest.raises(InvalidInput, match="'366d' is too long: it reaches back before year 1"):
        since("366d", "--since", now=year_2)


# The commands, through the CLI.


def _refused(result: Any, message: str) -> None:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr, result.stderr
    assert result.stdout == ""


@pytest.fixture
def amazon(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)
    return sandbox


def test_refresh_all_takes_a_deadline_in_days_and_refuses_a_bare_number(
    db: Any, cli: Any, amazon: Sandbox, tmp_path: Path
) -> None:
    import_sellers(cli, amazon, tmp_path, 2)
    bare = cli("refresh-all", "--deadline", "4", "--json")
    _refused(bare, "--deadline '4' is not a duration: a number needs a unit, as in 4s, 4m, 4h")
    _refused(cli("refresh-all", "--deadline", "0s"), "--deadline '0s' is not a duration like")
    _refused(cli("refresh-all", "--lease", "60"), "--lease '60' is not a duration: a number")
    _refused(cli("refresh-all", "--lease", "0m"), "it must be longer than zero")
    assert amazon.state.stats()["grants"]["refresh_token"] == 0  # refused before any call
    result = cli("refresh-all", "--deadline", "1d", "--lease", "1M30S", "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["outcomes"]["refreshed"] == 2
    assert result.json()["deadline_reached"] is False


@pytest.mark.parametrize(
    ("window", "seconds"), [("90D", 90 * 86400), (" 1h30m ", 5400), ("2W", 14 * 86400)]
)
def test_health_takes_any_duration_as_its_window(
    db: Any, cli: Any, window: str, seconds: int
) -> None:
    result = cli("health", "--window", window, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.json()["window_seconds"] == seconds


def test_health_refuses_a_window_of_nothing(db: Any, cli: Any) -> None:
    _refused(cli("health", "--window", "0s"), "--window '0s' is not a duration like")
    _refused(cli("health", "--window", "90"), "--window '90' is not a duration: a number needs")


def _event(db: Any, age: timedelta) -> None:
    with db.engine.begin() as connection:
        connection.execute(
            sa.insert(table_of(Event)),
            [
                {
                    "occurred_at": datetime.now(UTC) - age,
                    "kind": "old",
                    "outcome": "info",
                    "detail": {},
                }
            ],
        )


def test_prune_refuses_minutes_and_seconds_and_deletes_nothing(db: Any, cli: Any) -> None:
    _event(db, timedelta(hours=2))  # deleted by a window of 90 minutes, kept by 90 months
    for bad, message in (
        ("90m", "minutes are not taken here, only hours, days or weeks"),
        ("90M", "minutes are not taken here, only hours, days or weeks"),
        ("3600s", "seconds are not taken here"),
        ("1h30m", "minutes are not taken here"),
        ("90", "a number needs a unit, as in 90h, 90d or 90w"),
        ("0h", "it must be longer than zero"),
    ):
        _refused(cli("events", "prune", "--older-than", bad), f"--older-than {bad!r} ")
        _refused(cli("events", "prune", "--older-than", bad), message)
    assert db.scalar("SELECT count(*) FROM events WHERE kind = 'old'") == 1
    pruned = cli("events", "prune", "--older-than", "1H", "--json")
    assert pruned.exit_code == 0, pruned.stderr
    assert pruned.json()["events"] == 1


def test_since_zero_is_now_and_since_takes_combinations(db: Any, cli: Any) -> None:
    _event(db, timedelta(minutes=80))
    assert cli("events", "--since", "0s", "--json").json() == []
    assert cli("events", "--since", "1h", "--json").json() == []
    assert [e["kind"] for e in cli("events", "--since", "1H30M", "--json").json()] == ["old"]
    _refused(cli("events", "--since", "90"), "--since '90' is neither an ISO 8601 time nor a")


def test_token_mint_takes_a_combination_and_refuses_zero(
    cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JWT_SECRET", "s" * 40)
    minted = cli("token", "mint", "--user", "alice", "--ttl", "1H30M")
    assert minted.exit_code == 0, minted.stderr
    claims = jwt.decode(minted.stdout.strip(), "s" * 40, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 5400
    assert claims["exp"] - 5 <= time.time() + 5400 <= claims["exp"] + 5
    _refused(cli("token", "mint", "--user", "alice", "--ttl", "0s"), "--ttl '0s' is not a")
    _refused(cli("token", "mint", "--user", "alice", "--ttl", "3600"), "as in 3600s, 3600m")
