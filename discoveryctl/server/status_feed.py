"""The live status stream behind ``GET /api/v1/integrations/events``: every status change, from
whichever process or machine wrote it, to the streams of the user it belongs to.

One poller per server process reads the events written since its last look, by the primary
key (a few rows a tick, whatever the size of the history), twice a second, and hands each status
change to the queues of that user's open streams: the cost does not grow with the number of
streams, and it works the same on SQLite and PostgreSQL. On PostgreSQL ids are handed out
before commit, so an id may show up after a higher one: a missing id is looked for again for
``GAP_WAIT`` seconds (a rolled-back insert never shows), so a slow transaction's change is
still streamed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from discoveryctl.db.engine import Database
from discoveryctl.integrations import events
from discoveryctl.support.logging import get_logger

POLL_INTERVAL = 0.5
GAP_WAIT = 30.0


@dataclass(frozen=True)
class Change:
    """One status change, as a stream sends it (``id`` is the event's)."""

    id: int
    user_id: str
    data: dict[str, Any]


def change_of(event: sa.Row[Any]) -> Change:
    return Change(event.id, event.user_id or "", events.status_change_view(event))


class StatusFeed:
    def __init__(self, database: Database, interval: float = POLL_INTERVAL) -> None:
        self._database = database
        self._interval = interval
        self._streams: dict[str, set[asyncio.Queue[Change]]] = {}  # the event loop's alone
        self._read_up_to = 0
        self._gaps: dict[int, float] = {}  # id → when first missed (the poller's alone)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    async def start(self) -> None:
        """Poll on a thread of its own: a poll that finds nothing, nearly every one, never
        wakes the event loop (a poll handed to the loop's thread pool costs the loop twice
        the CPU of the poll itself)."""
        self._read_up_to = await asyncio.to_thread(self._last_id)
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="status-feed", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop polling once the poll under way, if any, is done: its connection must be back
        in the pool before the database is disposed."""
        self._stopping.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def open(self, user_id: str) -> asyncio.Queue[Change]:
        queue: asyncio.Queue[Change] = asyncio.Queue()
        self._streams.setdefault(user_id, set()).add(queue)
        return queue

    def close(self, user_id: str, queue: asyncio.Queue[Change]) -> None:
        streams = self._streams.get(user_id)
        if streams is not None:
            streams.discard(queue)
            if not streams:
                del self._streams[user_id]

    def history(self, user_id: str, after: int) -> list[Change]:
        """What a stream resumed after event ``after`` missed (run it in a thread)."""
        with self._database.reading() as connection:
            changes = events.status_changes_of(connection, user_id, after=after)
        return [change_of(row) for row in changes]

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                found = self._poll()
            except Exception as error:  # the database away for a moment: the next tick tries
                get_logger().warning("status_feed_poll_failed", error_type=type(error).__name__)
                continue
            if found and self._loop is not None:
                self._loop.call_soon_threadsafe(self._hand_out, found)

    def _hand_out(self, found: list[Change]) -> None:
        """On the event loop: each change to its user's open streams."""
        for change in found:
            for queue in self._streams.get(change.user_id, ()):
                queue.put_nowait(change)

    def _last_id(self) -> int:
        with self._database.reading() as connection:
            return events.last_id(connection)

    def _poll(self) -> list[Change]:
        now = time.monotonic()
        with self._database.reading() as connection:  # no BEGIN/COMMIT round trips
            newer = events.newer_than(connection, self._read_up_to)
            late = events.with_ids(connection, sorted(self._gaps)) if self._gaps else []
        expected = self._read_up_to + 1
        for event in newer:
            for missing in range(expected, event.id):
                self._gaps[missing] = now
            expected = event.id + 1
        if newer:
            self._read_up_to = newer[-1].id
        for event in late:
            self._gaps.pop(event.id, None)
        for missing, since in list(self._gaps.items()):
            if now - since > GAP_WAIT:
                del self._gaps[missing]
        return [change_of(e) for e in (*late, *newer) if e.kind == events.Kind.status_changed]
