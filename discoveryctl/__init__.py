"""discoveryctl: keep a seller's Amazon and Stripe integrations healthy."""

__version__ = "0.1.0"
