"""The one settings object. Read from the environment only at the entry point.

Every setting is an environment variable ``RECIPROCITY_<NAME>`` (upper case);
the CLI's options override them. Secrets (the ClickHouse URL may carry a
password) are ``SecretStr`` and print masked.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pipeline.windows import parse_window


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class Settings(BaseSettings):
    """Pipeline settings. Field descriptions name the env var and default."""

    model_config = SettingsConfigDict(
        env_prefix="RECIPROCITY_", frozen=True, extra="forbid",
        hide_input_in_errors=True,  # a rejected URL may carry a password
    )

    broker: str = Field(
        "kafka://127.0.0.1:9092",
        description="RECIPROCITY_BROKER: Kafka bootstrap URL(s), kafka://host:port[;host:port].",
    )
    topic: str = Field("social-events", description="RECIPROCITY_TOPIC: input topic.")
    dlq_topic: str = Field(
        "social-events.dlq", description="RECIPROCITY_DLQ_TOPIC: dead-letter topic."
    )
    partitions: int = Field(
        4, ge=1, description="RECIPROCITY_PARTITIONS: partitions of topics we create."
    )
    clickhouse_url: SecretStr = Field(
        SecretStr("chdb://./store"),
        description=(
            "RECIPROCITY_CLICKHOUSE_URL: clickhouse://user:pass@host:9000/db[?secure=1] "
            "or chdb:///path (embedded, the default)."
        ),
    )
    registry: str = Field("registry.yaml", description="RECIPROCITY_REGISTRY: registry YAML.")
    windows: Annotated[tuple[int, ...], NoDecode] = Field(
        (3600, 86400),
        description="RECIPROCITY_WINDOWS: tumbling window sizes, comma-separated (default 1h,1d).",
    )
    app_id: str = Field(
        "reciprocity", description="RECIPROCITY_APP_ID: Faust app id (consumer group)."
    )
    stream_id: str = Field(
        "",
        description=(
            "RECIPROCITY_STREAM_ID: identity of the event stream in stored rows "
            "(default: the topic name)."
        ),
    )
    batch_max: int = Field(
        10_000, ge=1, description="RECIPROCITY_BATCH_MAX: most messages per batch."
    )
    batch_within_s: float = Field(
        0.5, gt=0, description="RECIPROCITY_BATCH_WITHIN_S: longest wait to fill a batch."
    )
    web_enabled: bool = Field(False, description="RECIPROCITY_WEB_ENABLED: Faust web server.")
    web_host: str = Field("127.0.0.1", description="RECIPROCITY_WEB_HOST: web bind address.")
    web_port: int = Field(6066, description="RECIPROCITY_WEB_PORT: web port.")
    session_timeout_s: float = Field(
        60.0, gt=0, description="RECIPROCITY_SESSION_TIMEOUT_S: consumer group session timeout."
    )
    heartbeat_interval_s: float = Field(
        3.0, gt=0, description="RECIPROCITY_HEARTBEAT_INTERVAL_S: group heartbeat interval."
    )
    rebalance_timeout_s: float = Field(
        60.0, gt=0, description="RECIPROCITY_REBALANCE_TIMEOUT_S: rebalance timeout."
    )
    commit_interval_s: float = Field(
        2.8, gt=0, description="RECIPROCITY_COMMIT_INTERVAL_S: how often consumed offsets commit."
    )
    stats_interval_s: float = Field(
        10.0, gt=0, description="RECIPROCITY_STATS_INTERVAL_S: period of the progress log line."
    )
    log_level: str = Field("WARNING", description="RECIPROCITY_LOG_LEVEL: log level.")

    @field_validator("windows", mode="before")
    @classmethod
    def _parse_windows(cls, value: Any) -> tuple[int, ...]:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        sizes = tuple(parse_window(v) if isinstance(v, str) else int(v) for v in value)
        if any(size <= 0 for size in sizes):
            raise ValueError("window sizes must be positive")
        if not sizes:
            raise ValueError("at least one window size is required")
        if len(set(sizes)) != len(sizes):
            raise ValueError("window sizes must be distinct")
        return sizes

    @field_validator("broker")
    @classmethod
    def _check_broker(cls, value: str) -> str:
        if not value.startswith("kafka://"):
            raise ValueError(f"broker must be a kafka://host:port URL, got {value!r}")
        return value

    @field_validator("clickhouse_url")
    @classmethod
    def _check_clickhouse(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if not url.startswith(("clickhouse://", "clickhouses://", "chdb://")):
            raise ValueError(
                f"clickhouse URL must start with clickhouse:// or chdb://, got {mask_url(url)!r}"
            )
        return value

    @property
    def effective_stream_id(self) -> str:
        return self.stream_id or self.topic

    @property
    def bootstrap_servers(self) -> list[str]:
        """Broker URL as host:port strings for kafka-python/aiokafka."""
        return [h for h in self.broker.removeprefix("kafka://").split(";") if h]

    def masked(self) -> dict[str, Any]:
        """Effective settings for display, with secrets masked."""
        out = self.model_dump()
        out["clickhouse_url"] = mask_url(self.clickhouse_url.get_secret_value())
        return out
