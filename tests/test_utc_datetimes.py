"""UTCDateTime's own SQLite formatter writes exactly what SQLAlchemy's DATETIME would (rows
written before and after it compare and sort the same), and still refuses naive values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from discoveryctl.db.models import UTCDateTime


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 11, 26, 20, 1, 2, 3, tzinfo=UTC),
        datetime(2026, 5, 5, 1, 2, 3, 999999, tzinfo=UTC),
        datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=5))),  # stored as UTC
        datetime(999, 1, 1, tzinfo=UTC),
    ],
)
def test_sqlite_text_is_sqlalchemys(moment: datetime) -> None:
    dialect = sqlite.dialect()
    ours = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    theirs = sa.DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
    assert ours is not None and theirs is not None
    assert ours(moment) == theirs(moment.astimezone(UTC))
    assert ours(None) is None


def test_a_naive_datetime_is_refused() -> None:
    dialect = sqlite.dialect()
    ours = UTCDateTime().dialect_impl(dialect).bind_processor(dialect)
    assert ours is not None
    with pytest.raises(ValueError, match="naive datetime"):
        ours(datetime(2026, 1, 1))
