"""What needs an operator's attention after a refresh or a check: the one rule behind exit
code 1 of ``refresh-all`` and ``check``.

A seller needs attention when its authorization is gone (``revoked``, ``expired``), when a try
failed and is left for the next run (``failed``), or when the SP-API answered something nobody
planned for (``inconclusive``: recorded, not acted on). A refreshed, verified or merely paced
seller (a check skipped to keep to the call's usage plan) does not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

NEEDS_ATTENTION = frozenset({"revoked", "expired", "failed", "inconclusive"})


def needs_attention(outcome: str) -> bool:
    """Whether a seller with this refresh or check outcome needs an operator's attention."""
    return outcome in NEEDS_ATTENTION


def count(outcomes: Iterable[str]) -> int:
    """How many of these outcomes need attention."""
    return sum(1 for outcome in outcomes if needs_attention(outcome))


def count_tallied(*tallies: Mapping[str, int]) -> int:
    """``count`` over tallies of outcomes (outcome → how many), added together."""
    return sum(n for tally in tallies for outcome, n in tally.items() if needs_attention(outcome))


def sellers_need(n: int) -> str:
    """``1 seller needs attention``, ``3 sellers need attention``."""
    return f"{n} seller{'s need' if n != 1 else ' needs'} attention"
