"""One grammar for every duration an option takes (``--deadline``, ``--lease``, ``--window``,
``--since``, ``--older-than``, ``--ttl``).

A duration is one or more numbers, each with its unit, largest unit first and each unit at
most once: ``30s``, ``4m``, ``1h``, ``2d``, ``1w``, ``1h30m``, ``2d12h``. Units are read
whatever their case (``90D`` is ninety days); spaces around the whole, and between a number
and its unit, are allowed (``" 4 m "``). A bare number is refused, never read as seconds: the
message names the units it needs. Each option says which units it takes (``events prune
--older-than`` takes no minutes, so ``90m`` is never read as ninety months) and whether zero
makes sense for it. A duration reaches back no further than year 1 from now, so every
duration taken from (or added to) the present is a date.

Every refusal is ``InvalidInput`` naming the option, in one line.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from discoveryctl.errors import InvalidInput
from discoveryctl.support.user_ids import shown

UNITS = "wdhms"
"""Every unit, largest first: weeks, days, hours, minutes, seconds."""

_NAMES = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}

# One optional group per unit, in order: each unit at most once, largest first. ASCII only:
# ``\d`` would take other scripts' digits, and a Unicode case-insensitive match would read
# the long s (U+017F) as seconds.
_DURATION = re.compile(
    r"\s*" + "".join(rf"(?:([0-9]+)\s*{unit}\s*)?" for unit in UNITS),
    re.IGNORECASE | re.ASCII,
)
_BARE_NUMBER = re.compile(r"\s*[0-9]+\s*", re.ASCII)
_NUMBERS_WITH_UNITS = re.compile(rf"(?:\s*[0-9]+\s*[{UNITS}])+\s*", re.IGNORECASE | re.ASCII)


def parse(
    text: str,
    option: str,
    *,
    units: str = UNITS,
    zero: bool = False,
    now: datetime | None = None,
) -> timedelta:
    """``text`` as a duration in ``units`` only; zero only where ``zero`` says it makes sense."""
    match = _DURATION.fullmatch(text)
    if match is None or match.lastindex is None:
        raise InvalidInput(_refusal(text, option, units, "is not a duration"))
    return _length(text, option, match, units=units, zero=zero, now=now)


def since(text: str, option: str, now: datetime | None = None) -> datetime:
    """A duration back from now (zero: now), or an ISO 8601 time (UTC unless it says)."""
    now = now or datetime.now(UTC)
    match = _DURATION.fullmatch(text)
    if match is not None and match.lastindex is not None:
        return now - _length(text, option, match, units=UNITS, zero=True, now=now)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(
            _refusal(text, option, UNITS, "is neither an ISO 8601 time nor a duration")
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _length(
    text: str,
    option: str,
    match: re.Match[str],
    *,
    units: str,
    zero: bool,
    now: datetime | None,
) -> timedelta:
    # The pattern has one group per unit: the lengths are always equal, whatever ``strict``.
    numbers = zip(UNITS, match.groups(), strict=True)  # pragma: no mutate  (see above)
    given = {unit: n for unit, n in numbers if n is not None}
    refused = [_NAMES[unit] for unit in given if unit not in units]
    if refused:
        raise InvalidInput(
            f"{option} {shown(text)} is not a duration like {_examples(units)}: "
            f"{_listed(refused, 'and')} are not taken here, only {_names(units)}"
        )
    try:
        length = timedelta(**{_NAMES[unit]: int(number) for unit, number in given.items()})
        (now or datetime.now(UTC)) - length  # a date: no further back than year 1
    except (OverflowError, ValueError):  # ValueError: a number of over 4,300 digits
        raise InvalidInput(
            f"{option} {shown(text)} is too long: it reaches back before year 1"
        ) from None
    if not length and not zero:
        raise InvalidInput(
            f"{option} {shown(text)} is not a duration like {_examples(units)}: "
            "it must be longer than zero"
        )
    return length


def _refusal(text: str, option: str, units: str, head: str) -> str:
    """Why ``text`` is no duration: a number without its unit, units out of order, or neither."""
    if _BARE_NUMBER.fullmatch(text):
        number = text.strip() if len(text.strip()) <= 12 else "4"  # the number, when short
        return f"{option} {shown(text)} {head}: a number needs a unit, as in " + _listed(
            [number + unit for unit in _smallest_first(units)], "or"
        )
    if _NUMBERS_WITH_UNITS.fullmatch(text):
        return f"{option} {shown(text)} {head}: each unit at most once, largest first, as in 2d12h"
    restricted = f" ({_names(units)} only)" if set(units) != set(UNITS) else ""
    return f"{option} {shown(text)} {head} like {_examples(units)}{restricted}"


def _examples(units: str) -> str:
    examples = {
        "s": "90s",
        "m": "4m",
        "h": "1h30m" if "m" in units else "48h",
        "d": "90d",
        "w": "12w",
    }
    return _listed([examples[unit] for unit in _smallest_first(units)], "or")


def _names(units: str) -> str:
    return _listed([_NAMES[unit] for unit in _smallest_first(units)], "or")


def _smallest_first(units: str) -> list[str]:
    return [unit for unit in UNITS[::-1] if unit in units]


def _listed(words: list[str], conjunction: str) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} {conjunction} {words[-1]}"
