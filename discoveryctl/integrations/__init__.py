"""The integration core: the vocabulary, statuses and their transitions, reconnects, events,
notifications, retention, the alerts' outbox and the health report (docs/behaviour.md §4, §7)."""
