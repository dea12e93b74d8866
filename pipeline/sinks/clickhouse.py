"""Backend for a real ClickHouse server over the native protocol (clickhouse-driver).

URL: ``clickhouse://user:password@host:9000/database`` with optional query
parameters ``secure=1`` (TLS; ``clickhouses://`` implies it), ``verify=0``,
``ca_certs=PATH``, ``connect_timeout`` and ``send_receive_timeout`` (seconds).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from clickhouse_driver import Client
from clickhouse_driver.errors import Error as DriverError

from pipeline.sinks.base import Backend, ColumnBlock, StoreError, check_identifier
from pipeline.sinks.schema import Table

_TRUE = {"1", "true", "yes", "on"}


def client_kwargs(url: str) -> tuple[dict[str, Any], str]:
    """clickhouse-driver ``Client`` arguments and the database from a URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("clickhouse", "clickhouses"):
        raise ValueError(f"not a clickhouse:// URL: {parts.scheme}://...")
    params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    secure = parts.scheme == "clickhouses" or params.get("secure", "").lower() in _TRUE
    kwargs: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or (9440 if secure else 9000),
        "user": unquote(parts.username) if parts.username else "default",
        "password": unquote(parts.password) if parts.password else "",
        "secure": secure,
        "verify": params.get("verify", "1").lower() in _TRUE,
        "connect_timeout": float(params.get("connect_timeout", 10)),
        "send_receive_timeout": float(params.get("send_receive_timeout", 300)),
        "database": "default",  # ours may not exist yet; tables are always qualified
        "compression": False,
    }
    if "ca_certs" in params:
        kwargs["ca_certs"] = params["ca_certs"]
    database = check_identifier(parts.path.lstrip("/") or "reciprocity")
    return kwargs, database


class ClickHouseServerBackend(Backend):
    def __init__(self, url: str) -> None:
        kwargs, self.database = client_kwargs(url)
        self._where = f"ClickHouse at {kwargs['host']}:{kwargs['port']}"
        self._client = Client(**kwargs)

    def execute(self, statement: str) -> None:
        try:
            self._client.execute(statement)
        except (DriverError, OSError) as exc:
            raise StoreError(f"{self._where}: {exc}") from exc

    def insert(self, table: Table, rows: Sequence[tuple[Any, ...]]) -> None:
        # Always the parameterized INSERT form: inline VALUES hang on 18.16.
        cols = ", ".join(table.column_names)
        self._client.execute(
            f"INSERT INTO {self.database}.{table.name} ({cols}) VALUES", list(rows)
        )

    def insert_columns(self, table: Table, block: ColumnBlock) -> None:
        cols = ", ".join(table.column_names)
        self._client.execute(
            f"INSERT INTO {self.database}.{table.name} ({cols}) VALUES", block.lists(table),
            columnar=True,
        )

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        try:
            return [tuple(row) for row in self._client.execute(sql)]
        except (DriverError, OSError) as exc:
            raise StoreError(f"{self._where}: query failed: {exc}") from exc

    def close(self) -> None:
        self._client.disconnect()
