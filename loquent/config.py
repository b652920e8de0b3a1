"""Settings: every knob is an environment variable named LOQUENT_<FIELD>."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# The built-in key only lets a fresh checkout import and run its tests; `loquent serve` and
# `loquent worker` refuse to start with it (anyone can read it here, and it would encrypt
# customers' Twilio auth tokens).
DEFAULT_SECRET_KEY = "dev-insecure-secret-key-change-me"  # noqa: S105 - refused by serve/worker
GENERATE_KEY_HINT = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOQUENT_", env_file=None, extra="ignore")

    # Storage and fan-out
    database_url: str = "sqlite+aiosqlite:///./loquent.db"
    redis_url: str | None = None
    # /readyz answers 503 while a configured Redis is down. Set false to answer 200
    # "degraded" instead: every process still works without it (wake-ups fall back to polling),
    # and a load balancer would otherwise take every instance out at once over one Redis.
    readyz_require_redis: bool = True

    # The URL Twilio calls; signatures are checked against it, never against what the
    # server sees behind a proxy.
    public_url: str = "http://127.0.0.1:8000"

    # Keys for credentials at rest and session cookies. Comma-separated: the first encrypts,
    # all decrypt (MultiFernet), so a key can be rotated without losing stored tokens.
    secret_key: SecretStr = SecretStr(DEFAULT_SECRET_KEY)

    twilio_api_base: str = "https://api.twilio.com"
    twilio_events_api_base: str = "https://events.twilio.com"
    twilio_timeout_seconds: float = 10.0

    # Background jobs
    run_worker: bool = True  # embedded default: the worker runs inside the web process
    worker_poll_seconds: float = 5.0
    worker_batch_size: int = 20
    worker_per_org_concurrency: int = 4
    worker_lease_seconds: float = 60.0
    # Body enrichment (loquent.messaging.enrichment). Transient failures (5xx, timeouts,
    # connection errors, 429) are retried for a span of TIME, like Twilio's own 4-hour webhook
    # retries, not for a number of attempts: backoff grows to the cap, then repeats at the cap
    # until the deadline after the body's first attempt.
    enrich_deadline_seconds: float = 24 * 3600.0
    enrich_backoff_base_seconds: float = 1.0
    enrich_backoff_max_seconds: float = 300.0
    enrich_not_found_attempts: int = 4  # consecutive 404s before `failed`
    # Backstop on attempts of any kind, for a job that keeps crashing its worker (each crash
    # costs a lease, not a backoff). Far above what the deadline allows at the cap.
    enrich_max_attempts: int = 1000
    # Campaign-scale enrichment (loquent.messaging.bulk_enrichment): an organization with at
    # least this many due bodies captured within the window has them fetched by listing
    # Messages.json a day range at a time instead of one GET each. 0 turns listing off.
    enrich_list_threshold: int = 100
    enrich_list_window_hours: float = 24.0
    enrich_list_max_bodies: int = 10_000  # bodies leased by one listing run
    enrich_list_max_pages: int = 50  # pages one run may read before the rest go one by one

    # History import and catch-up after downtime (loquent.twilio.history / catchup)
    catchup_interval_seconds: float = 900.0  # 0 disables catch-up (also the one at start)
    catchup_overlap_seconds: float = 3600.0  # re-list this much before the last known point
    import_page_size: int = 1000  # Twilio's maximum PageSize for Messages.json
    import_max_attempts: int = 5  # per page, on 429/5xx/timeouts, before the run fails
    import_backoff_base_seconds: float = 1.0
    import_backoff_max_seconds: float = 20.0
    import_lease_seconds: float = 120.0  # a run whose process died is resumed after this
    import_concurrency: int = 2  # import/catch-up runs at once per worker process

    # Realtime
    sse_ping_seconds: float = 15.0
    sse_poll_seconds: float = 5.0  # re-check even without a wake-up
    sse_max_stream_seconds: float = 300.0
    sse_replay_limit: int = 1000
    # An open stream re-checks its session or token this often and ends once it is logged
    # out, expired or revoked.
    sse_auth_recheck_seconds: float = 20.0
    sse_backlog: int = 1000  # frames a stream may fall behind before it is dropped
    event_log_retention_hours: float = 24.0

    # MMS media relayed from Twilio: largest file, and downloads in flight per organization
    # in one process (more answer 429 with Retry-After).
    media_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    media_per_org_concurrency: int = Field(default=8, ge=1)

    # Sessions
    session_max_age_seconds: int = 14 * 24 * 3600
    cookie_secure: bool = False

    log_json: bool = False
    log_level: str = "INFO"
    # SQL statements in the log (parameters always redacted). Off even at DEBUG: statements
    # name tables and columns of customer data, and drivers are noisy.
    log_sql: bool = False

    sqlite_busy_timeout_ms: int = Field(default=10_000)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def uses_default_secret_key(self) -> bool:
        """True when nothing but the built-in development key would encrypt credentials."""
        keys = self.secret_keys
        return not keys or keys[0] == DEFAULT_SECRET_KEY

    @property
    def secret_keys(self) -> list[str]:
        return [k.strip() for k in self.secret_key.get_secret_value().split(",") if k.strip()]


@lru_cache
def get_settings() -> Settings:
    return Settings()
