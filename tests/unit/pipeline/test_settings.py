"""Settings from RECIPROCITY_* environment variables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from pipeline.settings import Settings, mask_url

CH_URL = "clickhouse://user:secret@host:9000/db"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No RECIPROCITY_* variable from the outer environment leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith("RECIPROCITY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    settings = Settings()
    assert settings.broker == "kafka://127.0.0.1:9092"
    assert settings.topic == "social-events"
    assert settings.dlq_topic == "social-events.dlq"
    assert settings.windows == (3600, 86400)
    assert settings.clickhouse_url.get_secret_value() == "chdb://./store"
    assert settings.effective_stream_id == "social-events"
    assert settings.bootstrap_servers == ["127.0.0.1:9092"]
    assert settings.web_enabled is False


def test_env_scalars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECIPROCITY_TOPIC", "events-b")
    monkeypatch.setenv("RECIPROCITY_PARTITIONS", "12")
    monkeypatch.setenv("RECIPROCITY_BATCH_WITHIN_S", "0.25")
    monkeypatch.setenv("RECIPROCITY_INBOUND_BATCH_WITHIN_S", "2.5")
    monkeypatch.setenv("RECIPROCITY_WEB_ENABLED", "true")
    monkeypatch.setenv("RECIPROCITY_BROKER", "kafka://k1:9092;k2:9093")
    monkeypatch.setenv("RECIPROCITY_CLICKHOUSE_URL", CH_URL)
    settings = Settings()
    assert settings.topic == "events-b"
    assert settings.effective_stream_id == "events-b"
    assert settings.partitions == 12
    assert settings.batch_within_s == 0.25
    assert settings.inbound_batch_within_s == 2.5
    assert settings.web_enabled is True
    assert settings.bootstrap_servers == ["k1:9092", "k2:9093"]
    assert settings.clickhouse_url.get_secret_value() == CH_URL


def test_env_var_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("reciprocity_topic", "lower")
    assert Settings().topic == "lower"


def test_stream_id_overrides_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECIPROCITY_STREAM_ID", "replay-7")
    assert Settings().effective_stream_id == "replay-7"


def test_env_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECIPROCITY_WINDOWS", "15m,1d")
    assert Settings().windows == (900, 86400)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("15m,1d", (900, 86400)),
        (" 15m , 1d ", (900, 86400)),
        ("1h,,1d,", (3600, 86400)),
        ("1w", (604800,)),
        (["30s", "1h"], (30, 3600)),
        ((60, "1d"), (60, 86400)),
    ],
)
def test_windows_parsing(value: object, expected: tuple[int, ...]) -> None:
    assert Settings(windows=value).windows == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1h,60m", "window sizes must be distinct"),
        ("1d,24h", "window sizes must be distinct"),
        ("1h,1h", "window sizes must be distinct"),
        ("", "at least one window size is required"),
        (",", "at least one window size is required"),
        ("1h,1y", "must look like"),
        ("0h", "must look like"),
    ],
)
def test_windows_rejected(value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(windows=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "broker", ["127.0.0.1:9092", "http://127.0.0.1:9092", "KAFKA://h:1", "", "tcp://h:9092"]
)
def test_bad_broker_url(monkeypatch: pytest.MonkeyPatch, broker: str) -> None:
    monkeypatch.setenv("RECIPROCITY_BROKER", broker)
    with pytest.raises(ValidationError, match="broker must be a kafka://host:port URL"):
        Settings()


@pytest.mark.parametrize(
    "url", ["http://user:secret@host:8123/db", "postgres://h/db", "host:9000", ""]
)
def test_bad_clickhouse_url(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("RECIPROCITY_CLICKHOUSE_URL", url)
    with pytest.raises(ValidationError, match="clickhouse URL must start with") as info:
        Settings()
    # the validator's own message echoes the URL masked
    if "secret" in url:
        assert "user:***@host" in str(info.value)


def test_rejected_clickhouse_url_password_not_in_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECIPROCITY_CLICKHOUSE_URL", "http://user:secret@host:8123/db")
    with pytest.raises(ValidationError) as info:
        Settings()
    assert "secret" not in str(info.value)


@pytest.mark.parametrize(
    "url", ["clickhouse://h:9000/db", "clickhouses://u:p@h:9440/db?secure=1", "chdb:///tmp/x"]
)
def test_good_clickhouse_urls(url: str) -> None:
    assert Settings(clickhouse_url=url).clickhouse_url.get_secret_value() == url  # type: ignore[arg-type]


def test_masked_hides_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECIPROCITY_CLICKHOUSE_URL", CH_URL)
    settings = Settings()
    masked = settings.masked()
    assert masked["clickhouse_url"] == "clickhouse://user:***@host:9000/db"
    assert "secret" not in repr(masked)
    assert masked["topic"] == "social-events"
    assert masked["windows"] == (3600, 86400)
    # the settings object itself never prints the secret either
    assert "secret" not in repr(settings)
    assert "secret" not in str(settings)
    assert isinstance(settings.clickhouse_url, SecretStr)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (CH_URL, "clickhouse://user:***@host:9000/db"),
        ("clickhouse://user:p%40ss@host:9000/db?secure=1",
         "clickhouse://user:***@host:9000/db?secure=1"),
        ("clickhouse://user:a@b@host:9000/db", "clickhouse://user:***@host:9000/db"),
        ("clickhouse://:secret@host/db", "clickhouse://:***@host/db"),
        ("clickhouse://user@host:9000/db", "clickhouse://user@host:9000/db"),
        ("clickhouse://host:9000/db", "clickhouse://host:9000/db"),
        ("chdb://./store", "chdb://./store"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.topic = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.windows = (60,)  # type: ignore[misc]
    assert settings.topic == "social-events"


def test_unknown_init_field_is_rejected() -> None:
    with pytest.raises(ValidationError):
        Settings(not_a_setting=1)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RECIPROCITY_PARTITIONS", "0"),
        ("RECIPROCITY_BATCH_MAX", "0"),
        ("RECIPROCITY_BATCH_WITHIN_S", "0"),
        ("RECIPROCITY_SESSION_TIMEOUT_S", "-1"),
        ("RECIPROCITY_PARTITIONS", "four"),
    ],
)
def test_numeric_bounds(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_every_setting_is_documented_in_the_readme() -> None:
    from pathlib import Path

    readme = (Path(__file__).parents[3] / "README.md").read_text()
    for name, field in Settings.model_fields.items():
        var = f"RECIPROCITY_{name.upper()}"
        assert field.description and field.description.startswith(var), name
        if name.startswith("web_"):
            var = "RECIPROCITY_WEB_ENABLED"  # the web settings share one README row
        assert var in readme, f"{var} is not documented in README.md"


def test_kafka_security_options_and_masking() -> None:
    plain = Settings()
    assert plain.kafka_client_options() == {"security_protocol": "PLAINTEXT"}
    assert plain.faust_credentials() is None
    sasl = Settings(kafka_security_protocol="sasl_ssl", kafka_sasl_username="app",
                    kafka_sasl_password=SecretStr("hunter2"), kafka_ssl_cafile="/ca.pem")
    options = sasl.kafka_client_options()
    assert options == {"security_protocol": "SASL_SSL", "ssl_cafile": "/ca.pem",
                       "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "app",
                       "sasl_plain_password": "hunter2"}
    assert sasl.masked()["kafka_sasl_password"] == "***"  # noqa: S105 - the mask
    assert "hunter2" not in repr(sasl) and "hunter2" not in str(sasl.masked())
    with pytest.raises(ValidationError, match="SASL_SSL"):
        Settings(kafka_security_protocol="TLS")
    with pytest.raises(ValidationError, match="SCRAM"):
        Settings(kafka_sasl_mechanism="GSSAPI")


def test_secrets_from_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "reciprocity_kafka_sasl_password").write_text("from-a-file")
    (tmp_path / "reciprocity_clickhouse_url").write_text("clickhouse://u:pw@ch:9000/db")

    settings = Settings(_secrets_dir=tmp_path)  # what RECIPROCITY_SECRETS_DIR sets
    assert settings.kafka_sasl_password.get_secret_value() == "from-a-file"
    assert settings.masked()["clickhouse_url"] == "clickhouse://u:***@ch:9000/db"


def test_switch_interval_is_set_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from pipeline.runner import tune_threads

    assert Settings().switch_interval_s == 0.001
    monkeypatch.setenv("RECIPROCITY_SWITCH_INTERVAL_S", "0.002")
    settings = Settings()
    before = sys.getswitchinterval()
    try:
        tune_threads(settings.switch_interval_s)
        assert sys.getswitchinterval() == pytest.approx(0.002)
    finally:
        sys.setswitchinterval(before)
    for bad in ("0", "-1", "2"):
        monkeypatch.setenv("RECIPROCITY_SWITCH_INTERVAL_S", bad)
        with pytest.raises(ValidationError):
            Settings()
