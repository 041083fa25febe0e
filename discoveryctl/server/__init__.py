"""The HTTP API served by ``discoveryctl serve`` (SPEC §8)."""
