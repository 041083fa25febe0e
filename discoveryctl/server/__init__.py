"""The HTTP API served by ``discoveryctl serve`` (docs/behaviour.md §8)."""
