"""`health`: rates and alerts, from event histories just under and just over each
threshold, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from discoveryctl.db.models import Event, table_of

from helpers import amazon_line, write_lines


def _events(
    db: Any,
    kind: str,
    outcome: str,
    count: int,
    *,
    error_type: str | None = None,
    minutes_ago: float = 5,
    at: datetime | None = None,
    **detail: Any,
) -> None:
    at = at or datetime.now(UTC) - timedelta(minutes=minutes_ago)
    row = {"occurred_at": at, "kind": kind, "outcome": outcome, "error_type": error_type}
    with db.engine.begin() as connection:
        connection.execute(sa.insert(table_of(Event)), [{**row, "detail": detail}] * count)


def _alerts(result: Any) -> dict[str, bool]:
    return {alert["name"]: alert["firing"] for alert in result.json()["alerts"]}


@pytest.mark.parametrize(("failed", "fires"), [(9, False), (10, False), (11, True)])
def test_stripe_failures_alert_above_ten_percent(
    db: Any, cli: Any, failed: int, fires: bool
) -> None:
    _events(db, "stripe_customer_created", "success", 100 - failed)
    _events(db, "stripe_customer_failed", "failure", failed)
    result = cli("health", "--json")
    assert result.exit_code == (1 if fires else 0), result.stderr
    assert _alerts(result)["stripe_failures"] is fires
    assert result.json()["stripe_customers"]["failed"] == failed
    if fires:
        assert "alert firing: stripe_failures" in result.stderr


@pytest.mark.parametrize(("failed", "fires"), [(15, False), (16, True)])
def test_oauth_callback_failures_alert_above_fifteen_percent(
    db: Any, cli: Any, failed: int, fires: bool
) -> None:
    _events(db, "oauth_callback_succeeded", "success", 100 - failed)
    _events(db, "oauth_callback_failed", "failure", failed, error_type="invalid_state")
    result = cli("health", "--json")
    assert _alerts(result)["oauth_callback_failures"] is fires
    assert result.exit_code == (1 if fires else 0)
    assert result.json()["oauth_callbacks"]["success_rate"] == (100 - failed) / 100


@pytest.mark.parametrize(("errors", "fires"), [(1, False), (2, True)])
def test_provider_side_errors_alert_above_one_percent(
    db: Any, cli: Any, errors: int, fires: bool
) -> None:
    _events(db, "token_refreshed", "success", 100 - errors - 1)
    _events(db, "token_refresh_failed", "failure", errors, error_type="provider_server_error")
    _events(db, "token_refresh_failed", "failure", 1, error_type="oauth_token_revoked")  # seller
    result = cli("health", "--json")
    assert _alerts(result)["api_errors"] is fires
    assert result.json()["calls"] == 100


@pytest.mark.parametrize(("revoked", "fires"), [(5, False), (6, True)])
def test_revoked_sellers_alert_above_five_percent_an_hour(
    db: Any, cli: Any, tmp_path: Path, revoked: int, fires: bool
) -> None:
    lines = [amazon_line(f"seller-{n}") for n in range(100 - revoked)]
    assert cli("import", str(write_lines(tmp_path / "a.jsonl", *lines))).exit_code == 0
    _events(db, "status_changed", "failure", revoked, to="revoked", **{"from": "active"})
    _events(db, "status_changed", "failure", 9, to="expired", **{"from": "active"})  # not revoked
    result = cli("health", "--json")
    assert result.json()["revoked"] == revoked
    assert _alerts(result)["revoked_integrations"] is fires
    longer = cli("health", "--window", "2h", "--json")  # the same, spread over two hours
    assert _alerts(longer)["revoked_integrations"] is False


def test_rates_count_only_the_window_and_name_auth_errors_and_timeouts(db: Any, cli: Any) -> None:
    _events(db, "token_refreshed", "success", 6)
    _events(
        db,
        "token_refresh_failed",
        "failure",
        1,
        error_type="lwa_app_credentials_rejected",
        http_status=401,
    )
    _events(db, "token_refresh_retried", "failure", 3, error_type="provider_timeout")
    _events(db, "stripe_customer_failed", "failure", 50, minutes_ago=90)  # before the window
    figures = cli("health", "--json").json()
    assert figures["calls"] == 10 and figures["retries"] == 3
    assert figures["auth_error_rate"] == 0.1 and figures["timeout_rate"] == 0.3
    assert figures["token_refreshes"] == {"succeeded": 6, "failed": 1, "success_rate": 0.8571}
    assert figures["stripe_customers"]["failed"] == 0
    day = cli("health", "--window", "24h", "--json")
    assert day.json()["stripe_customers"]["failed"] == 50 and day.exit_code == 1


def test_thresholds_are_options_and_the_table_names_each_alert(db: Any, cli: Any) -> None:
    _events(db, "stripe_customer_created", "success", 80)
    _events(db, "stripe_customer_failed", "failure", 20)
    assert cli("health", "--max-stripe-failures", "0.25").exit_code == 0
    table = cli("health")
    assert table.exit_code == 1
    assert "FIRING  stripe_failures" in table.stdout and "20 of 100" in table.stdout
    bad = cli("health", "--max-api-errors", "5")
    assert bad.exit_code == 2 and "is a share from 0 to 1" in bad.stderr
    assert cli("health", "--window", "soon").exit_code == 2


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_prometheus_output_parses_back_with_the_same_figures(db: Any, cli: Any) -> None:
    _events(db, "stripe_customer_created", "success", 88)
    _events(db, "stripe_customer_failed", "failure", 12)
    _events(db, "token_refresh_retried", "failure", 4, error_type="provider_timeout")
    result = cli("health", "--prometheus")
    assert result.exit_code == 1  # the Stripe alert fires, whatever the format
    assert "# HELP discoveryctl_alert_firing" in result.stdout
    assert "# TYPE discoveryctl_alert_firing gauge" in result.stdout
    found = _samples(result.stdout)
    window = ("window_seconds", "3600")
    assert found[("discoveryctl_alert_firing", (("alert", "stripe_failures"),))] == 1
    assert found[("discoveryctl_alert_firing", (("alert", "api_errors"),))] == 1
    assert found[("discoveryctl_alert_value", (("alert", "stripe_failures"),))] == 0.12
    assert found[("discoveryctl_alert_threshold", (("alert", "stripe_failures"),))] == 0.1
    outcomes = (("flow", "stripe_customer"), ("outcome", "failure"), window)
    assert found[("discoveryctl_window_outcomes", outcomes)] == 12
    causes = (("cause", "timeout"), window)
    assert found[("discoveryctl_window_call_errors", causes)] == 4
    # no data: no value, the alert not firing
    assert ("discoveryctl_alert_value", (("alert", "oauth_callback_failures"),)) not in found
    assert found[("discoveryctl_alert_firing", (("alert", "oauth_callback_failures"),))] == 0


def test_prometheus_output_to_a_file_is_written_whole(db: Any, cli: Any, tmp_path: Path) -> None:
    (tmp_path / "textfiles").mkdir()
    target = tmp_path / "textfiles" / "discoveryctl.prom"
    target.write_text("old\n")
    result = cli("health", "--prometheus", "--output", str(target))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert ("discoveryctl_integrations", (("provider", "amazon"), ("status", "active"))) in (
        _samples(target.read_text())
    )
    assert [p.name for p in target.parent.iterdir()] == ["discoveryctl.prom"]  # nothing left
    assert cli("health", "--output", str(target)).exit_code == 2  # only with --prometheus
    missing = cli("health", "--prometheus", "--output", str(tmp_path / "no" / "x.prom"))
    assert missing.exit_code == 2 and "cannot write" in missing.stderr


def test_failures_per_clock_hour_of_the_window_oldest_first(db: Any, cli: Any) -> None:
    this_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    early = this_hour - timedelta(hours=3) + timedelta(minutes=1)  # in the window's first hour
    _events(db, "token_refresh_failed", "failure", 8, error_type="provider_timeout", at=early)
    _events(db, "stripe_customer_failed", "failure", 2, at=this_hour)
    _events(db, "token_refreshed", "success", 50, at=this_hour)  # not a failure
    _events(db, "stripe_customer_failed", "failure", 5, minutes_ago=300)  # before the window
    figures = cli("health", "--window", "4h", "--json").json()
    assert figures["failures_by_period"] == {"period_seconds": 3600, "counts": [8, 0, 0, 2]}
    table = cli("health", "--window", "4h").stdout
    assert "█··▂  (one mark an hour, oldest first; at most 8)" in table


def test_retries_and_attempts_count_tries_not_users(db: Any, cli: Any, tmp_path: Path) -> None:
    _events(db, "stripe_customer_created", "success", 3)  # 3 users made at their first try
    _events(db, "stripe_customer_attempt", "failure", 6, error_type="stripe_server_error")
    _events(db, "stripe_customer_failed", "failure", 1)  # one user given up on after 6
    figures = cli("health", "--json").json()
    assert figures["retries"] == 5  # the sixth try was not retried
    assert figures["stripe_customers"]["average_attempts"] == 2.25  # 9 tries, 4 users
    lines = [amazon_line(f"seller-{n}") for n in range(99)]
    assert cli("import", str(write_lines(tmp_path / "a.jsonl", *lines))).exit_code == 0
    _events(db, "status_changed", "failure", 1, minutes_ago=1, to="revoked", **{"from": "active"})
    short = cli("health", "--window", "5m", "--json").json()  # counted as an hour
    assert {a["name"]: a["value"] for a in short["alerts"]}["revoked_integrations"] == 0.01


def test_a_window_reaching_before_year_one_is_refused(db: Any, cli: Any) -> None:
    for args in (
        ("health", "--window", "3000000d"),
        ("events", "prune", "--older-than", "99999999w"),
    ):
        result = cli(*args)
        assert result.exit_code == 2 and "reaches back before year 1" in result.stderr


def test_a_window_read_in_two_halves_counts_the_same_as_read_whole(db: Any) -> None:
    from discoveryctl.db.engine import Database
    from discoveryctl.integrations.health import compute

    _events(db, "token_refreshed", "success", 40, minutes_ago=50)
    _events(
        db, "token_refresh_retried", "failure", 7, error_type="provider_timeout", minutes_ago=40
    )
    # written between the window's others, before it: inside the halves' id ranges
    _events(db, "stripe_customer_failed", "failure", 5, minutes_ago=130)
    _events(db, "token_refresh_failed", "failure", 3, error_type="x", http_status=403)
    _events(db, "status_changed", "failure", 2, to="revoked", minutes_ago=20)
    _events(db, "stripe_customer_created", "success", 9, minutes_ago=10)
    database = Database(db.url)
    with database.session() as session:
        whole = compute(session, timedelta(hours=1), split_at=1_000_000).as_dict()
        halves = compute(session, timedelta(hours=1), split_at=1).as_dict()
    database.dispose()
    for figures in (whole, halves):
        figures.pop("until")
    assert halves == whole
    assert whole["token_refreshes"]["failed"] == 3 and whole["retries"] == 7
    assert (whole["stripe_customers"]["succeeded"], whole["stripe_customers"]["failed"]) == (9, 0)
