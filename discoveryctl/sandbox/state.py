"""Everything the emulator remembers: sellers and their tokens, consent codes, Stripe customers
and idempotency keys, the behaviours switched on, and what it was asked.

The server's event loop and the test (or operator) thread both use one ``SandboxState``, so
every method takes the lock and returns copies, never live records.
"""

from __future__ import annotations

import copy
import secrets
import string
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from discoveryctl.sandbox.clock import SandboxClock

STRIPE = "stripe"
"""The behaviour target of the global Stripe switches."""

_UPPER_ALNUM = string.ascii_uppercase + string.digits
_ALNUM = string.ascii_letters + string.digits


@dataclass(frozen=True)
class BehaviourSpec:
    """Who a behaviour applies to and which integer parameters it takes besides ``times``."""

    target: Literal["seller", "stripe"]
    params: frozenset[str] = frozenset()
    required: frozenset[str] = frozenset()


BEHAVIOURS: dict[str, BehaviourSpec] = {
    # LWA token requests of one seller.
    "revoked": BehaviourSpec("seller"),
    "flaky": BehaviourSpec("seller", frozenset({"status"})),
    "throttled": BehaviourSpec("seller", frozenset({"retry_after"})),
    "slow": BehaviourSpec("seller", frozenset({"ms"}), frozenset({"ms"})),
    "bad_gateway": BehaviourSpec("seller"),
    "omit_refresh_token": BehaviourSpec("seller"),
    "app_rejected": BehaviourSpec("seller"),
    "app_unauthorized": BehaviourSpec("seller"),
    "rotate_refresh_token": BehaviourSpec("seller", frozenset({"revoke_old"})),
    "expires_in_string": BehaviourSpec("seller"),
    # SP-API calls made with one seller's access tokens.
    "spapi_401": BehaviourSpec("seller"),
    "spapi_403_ambiguous": BehaviourSpec("seller"),
    "spapi_429": BehaviourSpec("seller", frozenset({"retry_after"})),
    # Every Stripe request.
    "stripe_5xx": BehaviourSpec("stripe", frozenset({"status", "html", "should_retry", "writes"})),
    "stripe_429": BehaviourSpec("stripe"),
    "stripe_lock_timeout": BehaviourSpec("stripe"),
    "stripe_edge_4xx": BehaviourSpec("stripe", frozenset({"edge_status"})),
    "stripe_slow": BehaviourSpec("stripe", frozenset({"ms"}), frozenset({"ms"})),
    "stripe_drop_after_create": BehaviourSpec("stripe"),
    "stripe_500_after_create": BehaviourSpec("stripe", frozenset({"replay_should_retry"})),
    "stripe_search_lag": BehaviourSpec("stripe", frozenset({"ms"}), frozenset({"ms"})),
    "stripe_search_unavailable": BehaviourSpec("stripe", frozenset({"refusal_status"})),
    "stripe_email_invalid": BehaviourSpec("stripe"),
}
"""Every behaviour by name. Each also takes ``times=N`` (apply to the next N requests, then
switch off); without it a behaviour stays on until cleared."""

_PARAM_RANGES = {
    "times": (1, None),
    "ms": (0, None),
    "retry_after": (0, None),
    "status": (500, 599),
    "refusal_status": (400, 499),
    "html": (0, 1),
    "revoke_old": (0, 1),
    "should_retry": (0, 1),
    "writes": (0, 1),
    "replay_should_retry": (0, 1),
    "edge_status": (400, 499),
}


@dataclass(frozen=True)
class Seller:
    """A seller as `add_seller` hands it out: its id and its refresh token."""

    selling_partner_id: str
    refresh_token: str


@dataclass(frozen=True)
class Tokens:
    """The outcome of a successful LWA grant."""

    selling_partner_id: str
    access_token: str
    refresh_token: str


@dataclass
class StoredResponse:
    """What an idempotent Stripe request answered, kept to be replayed: its status and body
    byte for byte, and only the headers a switch asks for."""

    status: int
    body: bytes
    request_id: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class IdempotencyClaim:
    """What an ``Idempotency-Key`` means for an incoming request.

    ``new``: the key is now in flight for this request; ``in_flight``: another request holds it;
    ``mismatch``: it was used with other parameters; ``replay``: ``stored`` is the first answer.
    """

    outcome: Literal["new", "in_flight", "mismatch", "replay"]
    stored: StoredResponse | None = None


@dataclass
class _Behaviour:
    params: dict[str, int]
    remaining: int | None


@dataclass
class _IdempotencyRecord:
    fingerprint: tuple[Any, ...]
    first_used: float
    stored: StoredResponse | None = None


class SandboxState:
    """The emulator's memory; safe to use from any thread."""

    def __init__(self, clock: SandboxClock | None = None) -> None:
        self.clock = clock or SandboxClock()
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._sellers: dict[str, set[str]] = {}  # seller id -> its live refresh tokens
        self._refresh_tokens: dict[str, str] = {}
        self._access_tokens: dict[str, tuple[str, float]] = {}
        self._codes: dict[str, tuple[str, str, float]] = {}
        self._amazon_states: dict[str, tuple[str, float]] = {}
        self._behaviours: dict[str, dict[str, _Behaviour]] = {}
        self._customers: dict[str, dict[str, Any]] = {}
        self._created: dict[str, float] = {}  # customer id → creation time (clock)
        self._idempotency: dict[str, _IdempotencyRecord] = {}
        self._stripe_admitted: dict[str, deque[float]] = {}  # rate-limit bucket → times
        self._requests: Counter[str] = Counter()
        self._stripe_versions: Counter[str] = Counter()
        self._grants: Counter[str] = Counter({"authorization_code": 0, "refresh_token": 0})
        self._refreshes: Counter[str] = Counter()
        self._client_secret: str | None = None  # the LWA client secret, if rotated
        self._lwa_rate: tuple[float, int] | None = None  # requests a second, burst
        self._lwa_buckets: dict[str, tuple[float, float]] = {}  # client id → tokens, when

    def reset(self) -> None:
        """Forget everything: sellers, tokens, customers, keys, behaviours and counters."""
        with self._lock:
            self._reset()

    # -- sellers --------------------------------------------------------------------------------

    def add_seller(self, selling_partner_id: str | None = None) -> Seller:
        """A new, authorized seller with a fresh refresh token."""
        with self._lock:
            seller_id = selling_partner_id or _new_selling_partner_id()
            if seller_id in self._sellers:
                raise ValueError(f"seller {seller_id} already exists")
            self._sellers[seller_id] = set()
            return Seller(seller_id, self._issue_refresh_token(seller_id))

    def revoke(self, selling_partner_id: str) -> None:
        """The seller withdraws the app's authorization: its refresh and access tokens die."""
        with self._lock:
            if selling_partner_id not in self._sellers:
                raise KeyError(f"no seller {selling_partner_id}")
            for token in self._sellers[selling_partner_id]:
                del self._refresh_tokens[token]
            self._sellers[selling_partner_id] = set()
            self._access_tokens = {
                token: grant
                for token, grant in self._access_tokens.items()
                if grant[0] != selling_partner_id
            }

    def consenting_seller(self, selling_partner_id: str | None) -> str:
        """The seller approving consent: the one named, created if new, or a new one."""
        with self._lock:
            seller_id = selling_partner_id or _new_selling_partner_id()
            self._sellers.setdefault(seller_id, set())
            return seller_id

    def _issue_refresh_token(self, seller_id: str) -> str:
        token = "Atzr|" + secrets.token_urlsafe(96)
        self._sellers[seller_id].add(token)
        self._refresh_tokens[token] = seller_id
        return token

    # -- consent ----------------------------------------------------------------------------------

    def open_amazon_state(self, selling_partner_id: str, ttl: float) -> str:
        """An opaque, single-use ``amazon_state`` for the login-URI step. Single use and the
        lifetime (the caller passes the code's) are the sandbox's own choice: the SP-API pages
        only call it a guard against cross-site request forgery."""
        amazon_state = secrets.token_urlsafe(32)
        with self._lock:
            self._amazon_states[amazon_state] = (selling_partner_id, self.clock.now() + ttl)
        return amazon_state

    def close_amazon_state(self, amazon_state: str) -> str | None:
        """The seller an ``amazon_state`` was issued for, consuming it; ``None`` if unknown,
        already used or expired."""
        with self._lock:
            entry = self._amazon_states.pop(amazon_state, None)
        if entry is None or entry[1] <= self.clock.now():
            return None
        return entry[0]

    def issue_code(self, selling_partner_id: str, redirect_uri: str, ttl: float) -> str:
        """A single-use ``spapi_oauth_code`` bound to the seller and the redirect URI: it
        "expires after five minutes" (Website Authorization Workflow), "authorization codes are
        one-use tokens" (Amazon Video Central, "Token requests",
        https://videocentral.amazon.com/support/pt_BR/token-requests); the binding to the
        redirect URI follows RFC 6749 §4.1.3, no Amazon page."""
        code = "".join(secrets.choice(_ALNUM) for _ in range(20))
        with self._lock:
            self._codes[code] = (selling_partner_id, redirect_uri, self.clock.now() + ttl)
        return code

    # -- LWA ----------------------------------------------------------------------------------

    def seller_of_code(self, code: str) -> str | None:
        """The seller a live code was issued for, without using it."""
        with self._lock:
            entry = self._codes.get(code)
        if entry is None or entry[2] <= self.clock.now():
            return None
        return entry[0]

    def exchange_code(
        self, code: str, redirect_uri: str | None, access_ttl: float
    ) -> Tokens | Literal["invalid_code", "redirect_mismatch"]:
        """Use a code once: a new refresh token for its seller and an access token. A redirect
        URI, when given, must be the one the code was issued for."""
        with self._lock:
            entry = self._codes.get(code)
            if entry is None or entry[2] <= self.clock.now():
                self._codes.pop(code, None)
                return "invalid_code"
            seller_id, bound_redirect_uri, _ = entry
            if redirect_uri is not None and redirect_uri != bound_redirect_uri:
                return "redirect_mismatch"
            del self._codes[code]
            refresh_token = self._issue_refresh_token(seller_id)
            self._grants["authorization_code"] += 1
            return Tokens(seller_id, self._issue_access_token(seller_id, access_ttl), refresh_token)

    def record_refresh_request(self, refresh_token: str) -> str | None:
        """Count a refresh request against the seller of a live refresh token; returns that
        seller, or ``None`` for an unknown or revoked token."""
        with self._lock:
            seller_id = self._refresh_tokens.get(refresh_token)
            if seller_id is not None:
                self._refreshes[seller_id] += 1
            return seller_id

    def refresh(
        self,
        refresh_token: str,
        access_ttl: float,
        rotate: Literal["no", "keep_old", "revoke_old"] = "no",
    ) -> Tokens | None:
        """A new access token for a live refresh token; ``None`` if unknown or revoked.

        ``rotate`` also issues a new refresh token for the seller, keeping the old one live or
        revoking it."""
        with self._lock:
            seller_id = self._refresh_tokens.get(refresh_token)
            if seller_id is None:
                return None
            self._grants["refresh_token"] += 1
            if rotate != "no":
                new_refresh_token = self._issue_refresh_token(seller_id)
                if rotate == "revoke_old":
                    del self._refresh_tokens[refresh_token]
                    self._sellers[seller_id].discard(refresh_token)
                refresh_token = new_refresh_token
            return Tokens(seller_id, self._issue_access_token(seller_id, access_ttl), refresh_token)

    def rotate_client_secret(self, client_secret: str | None) -> None:
        """The app's LWA client secret changes, for every seller at once: from now on LWA only
        accepts ``client_secret``; ``None`` brings the configured secret back."""
        with self._lock:
            self._client_secret = client_secret

    def client_secret(self, configured: str) -> str:
        """The client secret LWA accepts now: ``configured`` unless it was rotated."""
        with self._lock:
            return configured if self._client_secret is None else self._client_secret

    def limit_lwa_rate(self, per_second: float | None, burst: int = 1) -> None:
        """Throttle LWA token requests per client id (a token bucket of ``burst`` requests,
        refilled at ``per_second``, by the clock); ``None`` lifts the limit."""
        if per_second is not None and (per_second <= 0 or burst < 1):
            raise ValueError("the rate must be positive and the burst at least 1")
        with self._lock:
            self._lwa_rate = None if per_second is None else (per_second, burst)
            self._lwa_buckets = {}

    def admit_lwa_request(self, client_id: str) -> bool:
        """Spend one request from the client's bucket; ``False`` when it is empty."""
        with self._lock:
            if self._lwa_rate is None:
                return True
            per_second, burst = self._lwa_rate
            now = self.clock.now()
            tokens, since = self._lwa_buckets.get(client_id, (float(burst), now))
            tokens = min(float(burst), tokens + (now - since) * per_second)
            admitted = tokens >= 1
            self._lwa_buckets[client_id] = (tokens - 1 if admitted else tokens, now)
            return admitted

    def _issue_access_token(self, seller_id: str, ttl: float) -> str:
        token = "Atza|" + secrets.token_urlsafe(96)
        self._access_tokens[token] = (seller_id, self.clock.now() + ttl)
        return token

    # -- SP-API -------------------------------------------------------------------------------

    def seller_of_access_token(self, access_token: str) -> str | None:
        """The seller behind a live, unexpired access token."""
        seller_id, expired = self.access_token_holder(access_token)
        return None if expired else seller_id

    def access_token_holder(self, access_token: str) -> tuple[str | None, bool]:
        """The seller an access token was issued to (None if unknown or revoked), and
        whether it has expired."""
        with self._lock:
            grant = self._access_tokens.get(access_token)
        if grant is None:
            return None, False
        return grant[0], grant[1] <= self.clock.now()

    # -- behaviours -------------------------------------------------------------------------

    def set_behaviour(self, target: str, behaviour: str, **params: int) -> str:
        """Switch a behaviour on for a seller (by id or refresh token) or for ``"stripe"``.

        Returns the resolved target (the seller id, or ``"stripe"``). Raises ``KeyError`` for
        an unknown seller and ``ValueError`` for an unknown behaviour or bad parameters.
        """
        spec = BEHAVIOURS.get(behaviour)
        if spec is None:
            raise ValueError(f"unknown behaviour {behaviour!r}; known: {', '.join(BEHAVIOURS)}")
        _check_params(behaviour, spec, params)
        with self._lock:
            key = self._target(target)
            if (key == STRIPE) != (spec.target == "stripe"):
                where = "Stripe" if spec.target == "stripe" else "a seller"
                raise ValueError(f"behaviour {behaviour!r} applies to {where}")
            remaining = params.pop("times", None)
            self._behaviours.setdefault(key, {})[behaviour] = _Behaviour(params, remaining)
            return key

    def clear_behaviour(self, target: str | None = None, behaviour: str | None = None) -> None:
        """Switch off one behaviour, every behaviour of a target, or (no target) everything."""
        with self._lock:
            if target is None:
                self._behaviours.clear()
                return
            key = self._target(target)
            if behaviour is None:
                self._behaviours.pop(key, None)
            else:
                self._behaviours.get(key, {}).pop(behaviour, None)

    def take_behaviour(
        self,
        target: str,
        behaviour: str,
        applies: Callable[[dict[str, int]], bool] | None = None,
    ) -> dict[str, int] | None:
        """The parameters of a behaviour that is on for ``target`` (and, given ``applies``,
        meant for this request), using up one of its ``times``; ``None`` when it is off."""
        with self._lock:
            active = self._behaviours.get(target)
            if not active or behaviour not in active:
                return None
            entry = active[behaviour]
            if applies is not None and not applies(dict(entry.params)):
                return None
            if entry.remaining is not None:
                entry.remaining -= 1
                if entry.remaining == 0:
                    del active[behaviour]
            return dict(entry.params)

    def _target(self, target: str) -> str:
        if target == STRIPE or target in self._sellers:
            return target
        seller_id = self._refresh_tokens.get(target)
        if seller_id is None:
            raise KeyError("no seller with that id or refresh token")
        return seller_id

    # -- Stripe ---------------------------------------------------------------------------------

    def create_customer(self, customer: dict[str, Any]) -> dict[str, Any]:
        """Store a new customer object (given without ``id``); returns it with its id."""
        with self._lock:
            customer = {
                "id": "cus_" + "".join(secrets.choice(_ALNUM) for _ in range(14))
            } | customer
            self._customers[customer["id"]] = customer
            self._created[customer["id"]] = self.clock.now()
            return copy.deepcopy(customer)

    def customers(self, older_than: float = 0.0) -> list[dict[str, Any]]:
        """Every customer, newest first; with ``older_than``, only those created at least
        that many seconds ago (what Stripe's search index has caught up with)."""
        cutoff = self.clock.now() - older_than
        with self._lock:
            return [
                copy.deepcopy(c)
                for c in reversed(self._customers.values())
                if older_than <= 0 or self._created[c["id"]] <= cutoff
            ]

    def customer(self, customer_id: str) -> dict[str, Any] | None:
        """One customer by id."""
        with self._lock:
            found = self._customers.get(customer_id)
            return None if found is None else copy.deepcopy(found)

    def customers_for(self, user_id: str) -> list[dict[str, Any]]:
        """The customers whose ``metadata[user_id]`` is ``user_id``, oldest first."""
        with self._lock:
            return [
                copy.deepcopy(c)
                for c in self._customers.values()
                if c["metadata"].get("user_id") == user_id
            ]

    def claim_idempotency_key(
        self, key: str, fingerprint: tuple[Any, ...], ttl: float
    ) -> IdempotencyClaim:
        """Check an ``Idempotency-Key`` and, when it is new (or its answer was first kept
        ``ttl`` seconds ago or more, by the clock), hold it for this request."""
        with self._lock:
            now = self.clock.now()
            record = self._idempotency.get(key)
            if record is None or (record.stored is not None and now - record.first_used >= ttl):
                self._idempotency[key] = _IdempotencyRecord(fingerprint, now)
                return IdempotencyClaim("new")
            if record.stored is None:
                return IdempotencyClaim("in_flight")
            if record.fingerprint != fingerprint:
                return IdempotencyClaim("mismatch")
            return IdempotencyClaim("replay", record.stored)

    def store_idempotent_response(self, key: str, stored: StoredResponse) -> None:
        """Keep the answer of the request holding ``key``, to replay it."""
        with self._lock:
            self._idempotency[key].stored = stored

    def release_idempotency_key(self, key: str) -> None:
        """Let go of a key whose request ended without an answer to keep."""
        with self._lock:
            record = self._idempotency.get(key)
            if record is not None and record.stored is None:
                del self._idempotency[key]

    def forget_idempotency_keys(self) -> None:
        """Prune every idempotency key, as Stripe does once keys are 24 hours old."""
        with self._lock:
            self._idempotency = {k: r for k, r in self._idempotency.items() if r.stored is None}

    def admit_stripe_request(self, limits: dict[str, int], window: float) -> bool:
        """Count a request against every rate-limit bucket in ``limits`` (bucket → requests
        allowed per ``window`` seconds, by the clock); ``False``, counting nothing, when one
        of them is full."""
        with self._lock:
            now = self.clock.now()
            buckets = {name: self._stripe_admitted.setdefault(name, deque()) for name in limits}
            for times in buckets.values():
                while times and times[0] <= now - window:
                    times.popleft()
            if any(len(buckets[name]) >= limit for name, limit in limits.items()):
                return False
            for times in buckets.values():
                times.append(now)
            return True

    # -- statistics -------------------------------------------------------------------------

    def record_request(self, route: str) -> None:
        """Count one request to ``route`` ("METHOD /path/template")."""
        with self._lock:
            self._requests[route] += 1

    def record_stripe_version(self, version: str | None) -> None:
        """Count one Stripe request by the ``Stripe-Version`` it named ("" for none)."""
        with self._lock:
            self._stripe_versions[version or ""] += 1

    def stats(self) -> dict[str, Any]:
        """Requests per route, customers per user, successful grants by type, refresh
        requests per seller (whatever their outcome), and Stripe requests by the API version
        they named."""
        with self._lock:
            per_user: Counter[str] = Counter(
                c["metadata"]["user_id"]
                for c in self._customers.values()
                if "user_id" in c["metadata"]
            )
            return {
                "requests": dict(self._requests),
                "customers_per_user": dict(per_user),
                "grants": dict(self._grants),
                "refreshes_per_seller": dict(self._refreshes),
                "stripe_versions": dict(self._stripe_versions),
            }


def _new_selling_partner_id() -> str:
    return "A" + "".join(secrets.choice(_UPPER_ALNUM) for _ in range(13))


def _check_params(behaviour: str, spec: BehaviourSpec, params: dict[str, Any]) -> None:
    allowed = spec.params | {"times"}
    unknown = set(params) - allowed
    if unknown:
        raise ValueError(f"behaviour {behaviour!r} takes {sorted(allowed)}, not {sorted(unknown)}")
    missing = spec.required - set(params)
    if missing:
        raise ValueError(f"behaviour {behaviour!r} needs {sorted(missing)}")
    for name, value in params.items():
        low, high = _PARAM_RANGES[name]
        if type(value) is not int or value < low or (high is not None and value > high):
            bounds = f"{low}..{high}" if high is not None else f">= {low}"
            raise ValueError(f"{name} must be an integer {bounds}")
