"""`discoveryctl health`: rates and alerts over a window."""

from __future__ import annotations

from typing import Any

import typer


def health(
    ctx: typer.Context,
    window: str = typer.Option("1h", "--window", help="How far back: 30m, 1h, 24h, 7d, 1d12h."),
    max_revoked: float = typer.Option(
        0.05, "--max-revoked", help="Alert above this share of active sellers revoked per hour."
    ),
    max_stripe_failures: float = typer.Option(
        0.10, "--max-stripe-failures", help="Alert above this share of failed Stripe creations."
    ),
    max_callback_failures: float = typer.Option(
        0.15, "--max-callback-failures", help="Alert above this share of failed OAuth callbacks."
    ),
    max_api_errors: float = typer.Option(
        0.01, "--max-api-errors", help="Alert above this share of provider-side call failures."
    ),
    as_json: bool = typer.Option(False, "--json", help="The figures and alerts as JSON."),
    prometheus: bool = typer.Option(
        False, "--prometheus", help="Prometheus text format (node_exporter's textfile collector)."
    ),
    output: str | None = typer.Option(
        None, "--output", help="With --prometheus: write this .prom file, atomically."
    ),
    notify: bool = typer.Option(
        False,
        "--notify",
        help="Open an admin alert (and post it to the admin webhook) for each alert firing; "
        "resolve those that stopped.",
    ),
) -> None:
    """Integration health over a window: statuses, success rates, errors, and alerts.

    Exit 1 while any alert fires (for cron or a monitor). --prometheus writes the same
    figures in Prometheus's text format; --output FILE.prom for node_exporter's textfile
    collector (written to a temporary file and renamed, never read half-written). --notify
    turns each alert into an admin notification, open while it fires (posted to the admin
    webhook when it opens and when it resolves): run it from one cron line, with one window
    and one set of thresholds.

    \b
    Example: discoveryctl health --window 24h
    """
    from discoveryctl.cli.application import Application
    from discoveryctl.errors import InvalidInput, NeedsAttention
    from discoveryctl.integrations.health import Thresholds, compute, notify_admins
    from discoveryctl.support import durations

    app: Application = ctx.obj
    for name, value in (
        ("--max-revoked", max_revoked),
        ("--max-stripe-failures", max_stripe_failures),
        ("--max-callback-failures", max_callback_failures),
        ("--max-api-errors", max_api_errors),
    ):
        if not 0 <= value <= 1:
            raise InvalidInput(f"{name} is a share from 0 to 1, not {value:g}")
    thresholds = Thresholds(max_revoked, max_stripe_failures, max_callback_failures, max_api_errors)
    length = durations.parse(window, "--window")
    if output is not None and not prometheus:
        raise InvalidInput("--output goes with --prometheus")
    with app.session() as session:
        found = compute(session, length, thresholds)
        if notify:
            opened, resolved = notify_admins(session, found)
    if notify:
        for name in opened:
            app.err.print(f"admin alert opened: {name}")
        for name in resolved:
            app.err.print(f"admin alert resolved: {name}")
    if prometheus:
        _prometheus(app, found, output)
    elif as_json:
        app.print_json(found.as_dict())
    else:
        app.print_text(_report(found.as_dict(), window.strip()))
    if found.firing:
        names = ", ".join(alert.name for alert in found.firing)
        raise NeedsAttention(f"alert{'s' if len(found.firing) > 1 else ''} firing: {names}")


def _prometheus(app: Any, found: Any, output: str | None) -> None:
    from prometheus_client import generate_latest, write_to_textfile

    from discoveryctl.errors import InvalidInput
    from discoveryctl.integrations.health import prometheus_registry

    registry = prometheus_registry(found)
    if output is None:
        app.print_text(generate_latest(registry).decode().rstrip("\n"))
        return
    try:  # a temporary file beside it, renamed into place: never read half-written
        write_to_textfile(output, registry)
    except OSError as error:
        raise InvalidInput(f"cannot write {output}: {error.strerror}") from None
    app.err.print(f"wrote {output}")


def _report(figures: dict[str, Any], window: str) -> str:
    def share(value: float | None) -> str:
        return "—" if value is None else f"{value:.1%}"

    lines = [f"health over the last {window}", ""]
    lines.append(
        f"{'provider':10}"
        + "".join(f"{s:>10}" for s in ("active", "revoked", "expired", "pending"))
    )
    for provider, counts in figures["statuses"].items():
        lines.append(
            f"{provider:10}"
            + "".join(
                f"{counts.get(s, 0):>10}" for s in ("active", "revoked", "expired", "pending")
            )
        )
    lines.append("")
    for label, key in (
        ("OAuth callbacks", "oauth_callbacks"),
        ("token refreshes", "token_refreshes"),
        ("Stripe customers", "stripe_customers"),
    ):
        rate = figures[key]
        lines.append(
            f"{label:18} {share(rate['success_rate']):>7} succeeded "
            f"({rate['succeeded']} ok, {rate['failed']} failed)"
        )
    attempts = figures["stripe_customers"]["average_attempts"]
    lines.append(f"{'Stripe attempts':18} {'—' if attempts is None else attempts:>7} a customer")
    lines.append(
        f"{'provider calls':18} {figures['calls']:>7}: {share(figures['api_error_rate'])} "
        f"provider errors, {share(figures['auth_error_rate'])} 401/403, "
        f"{share(figures['timeout_rate'])} timeouts; {figures['retries']} retries"
    )
    periods = figures["failures_by_period"]
    counts = periods["counts"]
    hours = periods["period_seconds"] // 3600
    every = "an hour" if hours == 1 else f"every {hours} hours"
    lines.append(
        f"{'failures':18} {_sparkline(counts)}  (one mark {every}, oldest first; "
        f"at most {max(counts, default=0)})"
    )
    lines.append("")
    for alert in figures["alerts"]:
        state = "FIRING" if alert["firing"] else "ok"
        lines.append(
            f"{state:7} {alert['name']:24} {share(alert['value']):>7} "
            f"(threshold {alert['threshold']:.0%}): {alert['detail']}"
        )
    return "\n".join(lines)


def _sparkline(counts: list[int]) -> str:
    """One mark per period, as tall as its share of the busiest one; a dot for none."""
    marks = "▁▂▃▄▅▆▇█"
    top = max(counts, default=0)
    return "".join(
        marks[min(7, max(0, round(count / top * 8) - 1))] if count else "·" for count in counts
    )
