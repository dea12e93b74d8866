"""The one settings object. Read from the environment only at the entry point.

Every setting is an environment variable ``RECIPROCITY_<NAME>`` (upper case);
the CLI's options override them. Secrets (the ClickHouse URL may carry a
password) are ``SecretStr`` and print masked.
"""

from __future__ import annotations

import os
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pipeline.reciprocity import DEFAULT_WEIGHTS, Params
from pipeline.windows import parse_window
from schemas.event import ENGAGEMENT_KINDS


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def mask_webhook(url: str) -> str:
    """A webhook URL's path is its secret: keep only scheme and host."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}/***"


class Settings(BaseSettings):
    """Pipeline settings. Field descriptions name the env var and default."""

    model_config = SettingsConfigDict(
        env_prefix="RECIPROCITY_", frozen=True, extra="forbid",
        hide_input_in_errors=True,  # a rejected URL may carry a password
        # Secrets may come from files (Kubernetes/compose secrets): a file named
        # after the variable, e.g. reciprocity_clickhouse_url, in this directory.
        secrets_dir=os.environ.get("RECIPROCITY_SECRETS_DIR") or None,
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
    clickhouse_cluster: str = Field(
        "",
        description=("RECIPROCITY_CLICKHOUSE_CLUSTER: ClickHouse cluster name for cluster mode "
                     "(replicated local tables + Distributed tables, DDL ON CLUSTER); empty "
                     "for a single server."),
        pattern=r"^([A-Za-z_][A-Za-z0-9_]*)?$",
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
    batch_max_bytes: int = Field(
        4 * 1024 * 1024, ge=1,
        description=("RECIPROCITY_BATCH_MAX_BYTES: a batch of the pair and inbound stages is "
                     "full once its message values add up to this (bounds memory with "
                     "packed messages)."),
    )
    ingest_batch_max_bytes: int = Field(
        1024 * 1024, ge=1,
        description=("RECIPROCITY_INGEST_BATCH_MAX_BYTES: a batch of stage 1 (the input "
                     "topic) is full once its message values add up to this; smaller than "
                     "the other stages' so that alignment holds an input partition before "
                     "it runs far ahead."),
    )
    batch_within_s: float = Field(
        0.1, gt=0,
        description=("RECIPROCITY_BATCH_WITHIN_S: longest a batch waits to fill, counted from "
                     "the arrival of its first message."),
    )
    inbound_batch_within_s: float = Field(
        1.0, gt=0,
        description=("RECIPROCITY_INBOUND_BATCH_WITHIN_S: the same for the inbound stage "
                     "(engagement received per org and day, drop alerts): it writes every "
                     "org a batch touched to its table, so fewer, larger batches cost the "
                     "worker less, and a drop is a day's count."),
    )
    kafka_security_protocol: str = Field(
        "PLAINTEXT",
        description=(
            "RECIPROCITY_KAFKA_SECURITY_PROTOCOL: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
        ),
    )
    kafka_sasl_mechanism: str = Field(
        "SCRAM-SHA-512",
        description="RECIPROCITY_KAFKA_SASL_MECHANISM: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.",
    )
    kafka_sasl_username: str = Field(
        "", description="RECIPROCITY_KAFKA_SASL_USERNAME: SASL user (SASL_* protocols)."
    )
    kafka_sasl_password: SecretStr = Field(
        SecretStr(""),
        description="RECIPROCITY_KAFKA_SASL_PASSWORD: SASL password (secret; or a secrets file).",
    )
    kafka_ssl_cafile: str = Field(
        "", description="RECIPROCITY_KAFKA_SSL_CAFILE: CA bundle to verify the brokers (SSL)."
    )
    kafka_ssl_certfile: str = Field(
        "", description="RECIPROCITY_KAFKA_SSL_CERTFILE: client certificate (mutual TLS)."
    )
    kafka_ssl_keyfile: str = Field(
        "", description="RECIPROCITY_KAFKA_SSL_KEYFILE: client key (mutual TLS)."
    )
    web_enabled: bool = Field(False, description="RECIPROCITY_WEB_ENABLED: Faust web server.")
    web_host: str = Field("127.0.0.1", description="RECIPROCITY_WEB_HOST: web bind address.")
    web_port: int = Field(6066, description="RECIPROCITY_WEB_PORT: web port.")
    web_token: SecretStr = Field(
        SecretStr(""),
        description=(
            "RECIPROCITY_WEB_TOKEN: when set, /metrics and /api/live (the live page's data) "
            "require 'Authorization: Bearer <token>'; open the page as /#token=<token> "
            "(/health and the page's HTML never need it)."
        ),
    )
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
    producer_max_batch_bytes: int = Field(
        1_000_000, ge=1,
        description=("RECIPROCITY_PRODUCER_MAX_BATCH_BYTES: largest record batch the worker's "
                     "Kafka producer builds (keep it under the broker's message.max.bytes, "
                     "1 MiB by default). The producer sends one batch per partition per "
                     "request and waits for each reply, so a batch's changelog writes take "
                     "one round trip per this many bytes of a partition (Faust's default, "
                     "16 KiB, took a 10k/s latency run's pair-state writes from 30 to "
                     "210 ms; 512 KiB held one 256 KiB part of a pair-state snapshot a "
                     "batch, 1,000,000 bytes hold three). 1 sends one record per batch "
                     "(needed on the Tansu broker for table recovery, its ListOffsets is "
                     "wrong for multi-record batches)."),
    )
    fetch_max_wait_ms: int = Field(
        100, ge=1,
        description=("RECIPROCITY_FETCH_MAX_WAIT_MS: longest a consumer fetch waits at the "
                     "broker for new messages (Faust hard-codes 1500). Kafka answers as "
                     "soon as there are some; the Tansu broker within about half the wait."),
    )
    dedup_retention_s: float = Field(
        7 * 86400, gt=0,
        description=("RECIPROCITY_DEDUP_RETENTION_S: event time an event id is remembered "
                     "for dedup beyond the partition's watermark; an older copy is late."),
    )
    malloc_trim_s: float = Field(
        1.0, ge=0,
        description=("RECIPROCITY_MALLOC_TRIM_S: how often the worker hands the C heap's free "
                     "pages back to the system (glibc malloc_trim), and the embedded "
                     "store's (its jemalloc purged); 0 never."),
    )
    switch_interval_s: float = Field(
        0.001, gt=0, le=1,
        description=("RECIPROCITY_SWITCH_INTERVAL_S: how long a worker thread may hold the GIL "
                     "while another waits for it (sys.setswitchinterval; Python's default "
                     "0.005): the store's and Kafka's threads get in sooner while the event "
                     "loop is busy."),
    )
    stats_interval_s: float = Field(
        10.0, gt=0, description="RECIPROCITY_STATS_INTERVAL_S: period of the progress log line."
    )
    log_level: str = Field("WARNING", description="RECIPROCITY_LOG_LEVEL: log level.")
    source_dlq_topic: str = Field(
        "social-events.source-dlq",
        description=(
            "RECIPROCITY_SOURCE_DLQ_TOPIC: where sources put records they cannot map "
            "(headers source.reason, source.name, source.error)."
        ),
    )
    thanks_words: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description=(
            "RECIPROCITY_THANKS_WORDS: comma-separated words that make a reply or mention a "
            "thank-you (default: the built-in multilingual list, docs/producers.md)."
        ),
    )
    alerts_topic: str = Field(
        "reciprocity-alerts", description="RECIPROCITY_ALERTS_TOPIC: topic alerts go to (JSON)."
    )
    horizon: Annotated[float, NoDecode] = Field(
        72 * 3600.0,
        description="RECIPROCITY_HORIZON: reciprocity horizon H, e.g. 72h (default 72h).",
    )
    lateness: Annotated[float, NoDecode] = Field(
        300.0, description="RECIPROCITY_LATENESS: allowed lateness L, e.g. 5m (default 5m)."
    )
    idle_timeout_s: float = Field(
        30.0, gt=0,
        description=(
            "RECIPROCITY_IDLE_TIMEOUT_S: seconds without input after which a partition "
            "stops holding the watermark back."
        ),
    )
    align_drift_s: float = Field(
        86400.0, ge=0,
        description=(
            "RECIPROCITY_ALIGN_DRIFT_S: while catching up, stage 1 stops reading an input "
            "partition whose event time runs more than this many seconds ahead of the "
            "slowest one (0: never)."
        ),
    )
    weights: Annotated[tuple[tuple[str, float], ...], NoDecode] = Field(
        tuple(DEFAULT_WEIGHTS.items()),
        description=(
            "RECIPROCITY_WEIGHTS: value weights, e.g. share=3,mention=2,reply=2,thanks=2,"
            "follow=1,like=1 (the default; kinds left out weigh 0)."
        ),
    )
    drop_threshold: float = Field(
        0.5, gt=0, le=1, description="RECIPROCITY_DROP_THRESHOLD: relative drop that alerts."
    )
    drop_days: int = Field(
        7, ge=1, description="RECIPROCITY_DROP_DAYS: previous days in the drop baseline."
    )
    drop_min_baseline: float = Field(
        5.0, ge=0, description="RECIPROCITY_DROP_MIN_BASELINE: smallest baseline that alerts."
    )
    watched_orgs: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="RECIPROCITY_WATCHED_ORGS: orgs that get alerts, comma-separated "
        "(default: all)."
    )
    webhook_url: SecretStr | None = Field(
        None, description="RECIPROCITY_WEBHOOK_URL: Slack-compatible webhook for alerts (optional)."
    )

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

    @field_validator("horizon", "lateness", mode="before")
    @classmethod
    def _parse_duration(cls, value: Any) -> float:
        if isinstance(value, str):
            text = value.strip()
            try:
                return float(text)
            except ValueError:
                return float(parse_window(text))
        return float(value)

    @field_validator("horizon")
    @classmethod
    def _check_horizon(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("the horizon must be positive")
        return value

    @field_validator("lateness")
    @classmethod
    def _check_lateness(cls, value: float) -> float:
        if value < 0:
            raise ValueError("the lateness must not be negative")
        return value

    @field_validator("weights", mode="before")
    @classmethod
    def _parse_weights(cls, value: Any) -> tuple[tuple[str, float], ...]:
        if isinstance(value, str):
            pairs = []
            for part in (p.strip() for p in value.split(",")):
                if not part:
                    continue
                kind, sep, weight = part.partition("=")
                if not sep:
                    raise ValueError(f"weight {part!r} must look like kind=number")
                pairs.append((kind.strip(), weight.strip()))
            value = pairs
        elif isinstance(value, dict):
            value = list(value.items())
        out = []
        for kind, weight in value:
            if kind not in ENGAGEMENT_KINDS:
                raise ValueError(f"unknown engagement kind {kind!r} in weights "
                                 f"(kinds: {', '.join(ENGAGEMENT_KINDS)})")
            try:
                number = float(weight)
            except (TypeError, ValueError):
                raise ValueError(f"weight of {kind} must be a number, got {weight!r}") from None
            if number < 0:
                raise ValueError(f"weight of {kind} must not be negative")
            out.append((kind, number))
        if len({k for k, _ in out}) != len(out):
            raise ValueError("each kind may have one weight only")
        return tuple(out)

    @field_validator("watched_orgs", "thanks_words", mode="before")
    @classmethod
    def _parse_orgs(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = value.split(",")
        return tuple(v.strip() for v in value if v.strip())

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("the webhook URL must start with http:// or https://")
        return value

    @field_validator("kafka_security_protocol")
    @classmethod
    def _check_protocol(cls, value: str) -> str:
        value = value.upper()
        if value not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise ValueError("must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
        return value

    @field_validator("kafka_sasl_mechanism")
    @classmethod
    def _check_mechanism(cls, value: str) -> str:
        value = value.upper()
        if value not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            raise ValueError("must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
        return value

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
    def pairs_topic(self) -> str:
        """Internal topic: engagements keyed by unordered org pair."""
        return f"{self.app_id}-pairs"

    @property
    def inbound_topic(self) -> str:
        """Internal topic: engagements keyed by receiving org."""
        return f"{self.app_id}-inbound"

    def params(self) -> Params:
        """The metric definitions' tunables."""
        return Params(
            windows=self.windows, horizon_s=self.horizon, lateness_s=self.lateness,
            weights=dict(self.weights), drop_threshold=self.drop_threshold,
            drop_days=self.drop_days, drop_min_baseline=self.drop_min_baseline,
            watched_orgs=frozenset(self.watched_orgs),
        )

    @property
    def effective_stream_id(self) -> str:
        return self.stream_id or self.topic

    @property
    def bootstrap_servers(self) -> list[str]:
        """Broker URL as host:port strings for kafka-python/aiokafka."""
        return [h for h in self.broker.removeprefix("kafka://").split(";") if h]

    def kafka_client_options(self) -> dict[str, Any]:
        """Security options for kafka-python clients (producers, admin)."""
        protocol = self.kafka_security_protocol
        options: dict[str, Any] = {"security_protocol": protocol}
        if protocol in ("SSL", "SASL_SSL"):
            for name in ("cafile", "certfile", "keyfile"):
                path = getattr(self, f"kafka_ssl_{name}")
                if path:
                    options[f"ssl_{name}"] = path
        if protocol.startswith("SASL"):
            options.update(sasl_mechanism=self.kafka_sasl_mechanism,
                           sasl_plain_username=self.kafka_sasl_username,
                           sasl_plain_password=self.kafka_sasl_password.get_secret_value())
        return options

    def faust_credentials(self) -> Any:
        """Broker credentials for Faust (aiokafka), or None for PLAINTEXT."""
        protocol = self.kafka_security_protocol
        if protocol == "PLAINTEXT":
            return None
        import ssl

        import faust

        context = None
        if protocol in ("SSL", "SASL_SSL"):
            context = ssl.create_default_context(cafile=self.kafka_ssl_cafile or None)
            if self.kafka_ssl_certfile:
                context.load_cert_chain(self.kafka_ssl_certfile, self.kafka_ssl_keyfile or None)
        if protocol == "SSL":
            return faust.SSLCredentials(context)
        mechanism = self.kafka_sasl_mechanism
        return faust.SASLCredentials(
            username=self.kafka_sasl_username,
            password=self.kafka_sasl_password.get_secret_value(),
            ssl_context=context, mechanism=mechanism,
        )

    def masked(self) -> dict[str, Any]:
        """Effective settings for display, with secrets masked."""
        out = self.model_dump()
        out["clickhouse_url"] = mask_url(self.clickhouse_url.get_secret_value())
        for secret in ("kafka_sasl_password", "web_token"):
            out[secret] = "***" if getattr(self, secret).get_secret_value() else ""
        if self.webhook_url is not None:
            out["webhook_url"] = mask_webhook(self.webhook_url.get_secret_value())
        return out
