"""The integration core: statuses, transitions, reconnects, import and export (SPEC §4)."""
