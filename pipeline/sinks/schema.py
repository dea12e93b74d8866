"""ClickHouse DDL: the one source of truth for the tables the pipeline writes.

Portable across Debian's clickhouse-server 18.16 and modern ClickHouse
(checked through chdb): no DateTime64, Map, TTL, CODEC or LowCardinality here.
Exact event times are ``Float64`` epoch seconds (18.16 has no DateTime64), with
a ``DateTime`` column beside them for dashboards' time filters.
The migrations (:mod:`pipeline.sinks.migrations`) create these tables;
``deploy/clickhouse/*.sql`` is generated from there and a test checks it.

Idempotency: every table is a ReplacingMergeTree whose sorting key names the
thing a row is about, so writing the same row again (a re-delivered batch)
replaces instead of adding. Window rows are absolute states versioned by the
position of the last input that changed them, so the newest state wins; reads
take ``argMax(column, version)`` per key (see ``pipeline/report.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class Table:
    """One table: columns in insert order, engine and keys."""

    name: str
    columns: tuple[tuple[str, str], ...]
    order_by: tuple[str, ...]
    version: str | None = None
    partition_by: str | None = None
    #: Distributed sharding key in cluster mode: a function of the sorting key,
    #: so every version of a row lands on the same shard and replaces there
    shard_by: str = "rand()"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)

    def create(self, database: str) -> str:
        width = max(len(name) for name, _ in self.columns)
        cols = ",\n".join(f"    {name.ljust(width)} {kind}" for name, kind in self.columns)
        engine = f"ReplacingMergeTree({self.version})" if self.version else "ReplacingMergeTree"
        partition = f"\nPARTITION BY {self.partition_by}" if self.partition_by else ""
        return (
            f"CREATE TABLE IF NOT EXISTS {database}.{self.name}\n(\n{cols}\n)\n"
            f"ENGINE = {engine}{partition}\nORDER BY ({', '.join(self.order_by)})"
        )


KIND_COLUMNS: Final = ("follows", "likes", "shares", "replies", "mentions", "thanks")

PAIR_WINDOWS: Final = Table(
    "pair_windows",
    (
        ("window", "String"),
        ("window_start", "DateTime('UTC')"),
        ("src", "String"),
        ("dst", "String"),
        ("stream", "String"),
        ("partition", "UInt32"),
        *((name, "UInt64") for name in KIND_COLUMNS),
        ("value", "Float64"),
        ("reciprocated", "UInt64"),
        ("snubbed", "UInt64"),
        ("median_reciprocate_s", "Nullable(Float64)"),
        ("version", "UInt64"),
        ("updated_at", "DateTime('UTC')"),
    ),
    order_by=("window", "window_start", "src", "dst", "stream", "partition"),
    version="version",
    partition_by="toYYYYMM(window_start)",
    shard_by="cityHash64(src, dst)",
)

ORG_LINEAGE: Final = Table(
    "org_lineage",
    (
        ("registry", "String"),  # version of the registry (content hash)
        ("member", "String"),  # an org
        ("org", "String"),  # the member itself or one of its ancestors
        ("community", "String"),  # the member's: own, nearest ancestor's, else external
        ("updated_at", "DateTime('UTC')"),
    ),
    order_by=("registry", "member", "org"),
    shard_by="cityHash64(member)",
)

REGISTRIES: Final = Table(
    "registries",
    (
        ("registry", "String"),
        ("orgs", "UInt32"),
        ("loaded_at", "DateTime('UTC')"),  # the newest is the current registry
    ),
    order_by=("registry", "loaded_at"),
    shard_by="cityHash64(registry)",
)

SNUBS: Final = Table(
    "snubs",
    (
        ("id", "String"),
        ("src", "String"),
        ("dst", "String"),
        ("kind", "String"),
        ("ts", "Float64"),
        ("snub_ts", "Float64"),
        ("time", "DateTime('UTC')"),  # snub_ts to the second, for time filters
        ("stream", "String"),
        ("updated_at", "DateTime('UTC')"),
    ),
    order_by=("stream", "src", "dst", "id", "kind"),
    shard_by="cityHash64(src, dst)",
)

OMISSIONS: Final = Table(
    "omissions",
    (
        ("post_id", "String"),
        ("left_out", "String"),
        ("by_org", "String"),
        ("entities", "Array(String)"),
        ("ts", "Float64"),
        ("time", "DateTime('UTC')"),
        ("stream", "String"),
        ("updated_at", "DateTime('UTC')"),
    ),
    order_by=("stream", "left_out", "post_id"),
    shard_by="cityHash64(left_out)",
)

ALERTS: Final = Table(
    "alerts",
    (
        ("id", "String"),
        ("kind", "String"),
        ("org", "String"),
        ("other", "String"),
        ("ts", "Float64"),
        ("time", "DateTime('UTC')"),
        ("message", "String"),
        ("details", "String"),  # JSON object
        ("stream", "String"),
        ("created_at", "DateTime('UTC')"),
    ),
    order_by=("stream", "kind", "org", "id"),
    shard_by="cityHash64(org)",
)

DEAD_LETTERS: Final = Table(
    "dead_letters",
    (
        ("stream", "String"),
        ("partition", "UInt32"),
        ("offset", "UInt64"),
        ("item", "UInt32"),
        ("reason", "String"),
        ("error", "String"),
        ("raw", "String"),
        ("received_at", "DateTime('UTC')"),
    ),
    order_by=("stream", "partition", "offset", "item"),
    shard_by="cityHash64(stream, partition)",
)

PIPELINE_BATCHES: Final = Table(
    "pipeline_batches",
    (
        ("stream", "String"),
        ("partition", "UInt32"),  # input partition
        ("first_offset", "UInt64"),
        ("last_offset", "UInt64"),
        ("messages", "UInt64"),
        ("events", "UInt64"),
        ("late", "UInt64"),
        ("duplicates", "UInt64"),
        ("dead_lettered", "UInt64"),
        ("max_event_ts", "Nullable(Float64)"),  # of the batch's valid events
        ("processed_ts", "Float64"),
        ("time", "DateTime('UTC')"),  # processed_ts to the second
    ),
    order_by=("stream", "partition", "first_offset"),
    version="last_offset",
    partition_by="toYYYYMM(time)",
    shard_by="cityHash64(stream, partition)",
)

TABLES: Final = (PAIR_WINDOWS, ORG_LINEAGE, REGISTRIES, SNUBS, OMISSIONS, ALERTS, DEAD_LETTERS,
                 PIPELINE_BATCHES)
BY_NAME: Final = {t.name: t for t in TABLES}
