"""How the emulated Amazon app and Stripe account are set up."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SandboxConfig:
    """The emulated SP-API app registration, Stripe account and injected faults.

    ``login_uri`` switches consent to Amazon's login-URI flow; ``draft`` makes the app a draft
    one, which Seller Central only authorizes with ``version=beta``; ``latency_ms`` delays and
    ``fail_rate`` randomly fails (5xx) every LWA, SP-API and Stripe request.
    """

    client_id: str = "sandbox-client-id"
    client_secret: str = "sandbox-client-secret"
    other_apps: tuple[tuple[str, str], ...] = (
        ("sandbox-other-client-id", "sandbox-other-client-secret"),
    )
    """Other apps of the same developer (client id, secret): LWA accepts their credentials,
    but not the tokens this app was issued (``invalid_grant``)."""
    application_id: str = "amzn1.sp.solution.sandbox"
    stripe_api_key: str = "sk_test_sandbox"
    stripe_search_lag_seconds: float = 60.0
    """How long, by the sandbox clock, a new customer stays invisible to search (0: at once)."""
    stripe_rate_limits: bool = True
    """Stripe's sandbox rate limits: 25 operations a second in total, 20 searches a second."""
    redirect_uris: tuple[str, ...] = ("http://127.0.0.1:8765/callback",)
    login_uri: str | None = None
    amazon_callback_base: str = "https://amazon.com"
    """Where login-URI mode sends the seller back to: Amazon documents the
    ``amazon_callback_uri`` as ``https://amazon.com/apps/authorize/confirm/<application id>``
    (SP-API "Website Authorization Workflow"); tests reach it with ``Sandbox.browser_url``."""
    draft: bool = True
    latency_ms: int = 0
    fail_rate: float = 0.0
    access_token_ttl: int = 3600
    code_ttl: int = 300
