"""Settings: every knob is an environment variable named LOQUENT_<FIELD>."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOQUENT_", env_file=None, extra="ignore")

    # Storage and fan-out
    database_url: str = "sqlite+aiosqlite:///./loquent.db"
    redis_url: str | None = None

    # The URL Twilio calls; signatures are checked against it, never against what the
    # server sees behind a proxy.
    public_url: str = "http://127.0.0.1:8000"

    # Keys for credentials at rest and session cookies. Comma-separated: the first encrypts,
    # all decrypt (MultiFernet), so a key can be rotated without losing stored tokens.
    secret_key: SecretStr = SecretStr("dev-insecure-secret-key-change-me")

    twilio_api_base: str = "https://api.twilio.com"
    twilio_events_api_base: str = "https://events.twilio.com"
    twilio_timeout_seconds: float = 10.0

    # Background jobs
    run_worker: bool = True  # embedded default: the worker runs inside the web process
    worker_poll_seconds: float = 5.0
    worker_batch_size: int = 20
    worker_per_org_concurrency: int = 4
    worker_lease_seconds: float = 60.0
    enrich_max_attempts: int = 8
    enrich_not_found_attempts: int = 4
    enrich_backoff_base_seconds: float = 1.0
    enrich_backoff_max_seconds: float = 300.0

    # Realtime
    sse_ping_seconds: float = 15.0
    sse_poll_seconds: float = 5.0  # re-check even without a wake-up
    sse_max_stream_seconds: float = 300.0
    sse_replay_limit: int = 1000
    sse_backlog: int = 1000  # frames a stream may fall behind before it is dropped
    event_log_retention_hours: float = 24.0

    # Sessions
    session_max_age_seconds: int = 14 * 24 * 3600
    cookie_secure: bool = False

    log_json: bool = False
    log_level: str = "INFO"

    sqlite_busy_timeout_ms: int = Field(default=10_000)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def secret_keys(self) -> list[str]:
        return [k.strip() for k in self.secret_key.get_secret_value().split(",") if k.strip()]


@lru_cache
def get_settings() -> Settings:
    return Settings()
