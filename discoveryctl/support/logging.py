"""structlog to stderr: console on a TTY, JSON lines otherwise, secrets redacted
(docs/behaviour.md §7).

A command calls ``setup`` at start; structlog itself is only imported and configured when
something is first logged (``get_logger``), so commands that log nothing never pay for it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

from discoveryctl.support.redaction import REDACTED, is_sensitive_key, redact, redact_text


def _redact_processor(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        if key in ("exception", "exc_info"):
            continue
        event_dict[key] = REDACTED if is_sensitive_key(key) else redact(value)
    return event_dict


def _redact_rendered(_logger: Any, _method: str, rendered: Any) -> Any:
    """Last line of defence: a rendered line (tracebacks included) never carries a token."""
    return redact_text(rendered)


class _StderrLogger:
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    def msg(self, message: str) -> None:
        stream: TextIO = sys.stderr
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


_pending: tuple[str, str, bool] | None = None


def setup(level: str = "info", fmt: str = "json", colors: bool = False) -> None:
    """Remember how to log; structlog is configured on the first ``get_logger``."""
    global _pending
    _pending = (level, fmt, colors)


def get_logger() -> Any:
    """A structlog logger, configured as ``setup`` asked."""
    global _pending
    import structlog

    if _pending is not None:
        configure(*_pending)
        _pending = None
    return structlog.get_logger()


def configure(level: str = "info", fmt: str = "json", colors: bool = False) -> None:
    """Set up structlog for one process (or one CLI invocation), now."""
    import structlog

    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback
        )
        exception_processors: list[Any] = []
    else:
        renderer = structlog.processors.JSONRenderer()
        exception_processors = [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_processor,
            *exception_processors,
            renderer,
            _redact_rendered,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=lambda *_: _StderrLogger(),
        cache_logger_on_first_use=False,
    )
