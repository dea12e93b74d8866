"""Numbered schema migrations, applied idempotently and recorded in the store.

``reciprocity db migrate`` and every worker start call :func:`migrate`. Each
migration is a list of statements that are safe to run again (``IF NOT
EXISTS``, ``MODIFY`` to the same type). A migration is recorded in
``{database}.schema_migrations`` with a checksum of its portable SQL; one
recorded with another checksum stops the migration (a released migration was
edited: add a new one instead).

Portability: the SQL in ``deploy/clickhouse/NNN_*.sql`` runs on Debian's
ClickHouse 18.16 and on modern ClickHouse. Extras a server may lack
(LowCardinality columns, TTL retention) are in their own migration, applied
only where :class:`Server` says they are supported and recorded as skipped
elsewhere (and applied by the first migrate after an upgrade).

Cluster mode (``--cluster NAME``): tables become ReplicatedReplacingMergeTree
``*_local`` tables plus Distributed tables under the plain names, every
statement runs ``ON CLUSTER``, and views read the Distributed tables; the
generated SQL is in ``deploy/clickhouse/cluster/``.

Regenerate the SQL files: ``python -m pipeline.sinks.migrations``.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from pipeline.sinks.base import Backend, quote
from pipeline.sinks.schema import TABLES, Table
from pipeline.sinks.views import VIEWS

#: the first server version given the extras (LowCardinality GA, TTL)
EXTRAS_SINCE: Final = (20, 3)
#: days ``pipeline_batches`` rows are kept where TTL is supported
BATCHES_TTL_DAYS: Final = 30
#: String columns stored as LowCardinality where supported (few distinct values)
LOW_CARDINALITY: Final = ("window", "stream", "direction", "community", "kind", "reason")
MIGRATIONS_TABLE: Final = "schema_migrations"
DEFAULT_DATABASE: Final = "reciprocity"
DEFAULT_CLUSTER_PATH: Final = "/clickhouse/tables/{shard}/{database}/{table}"


@dataclass(frozen=True)
class Server:
    """What the target server supports, read once from ``version()``."""

    version: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> Server:
        return cls(tuple(int(p) for p in re.findall(r"\d+", text)[:4]))

    @property
    def extras(self) -> bool:
        return self.version[:2] >= EXTRAS_SINCE

    def __str__(self) -> str:
        return ".".join(map(str, self.version))


#: a modern server (what the generated single-node SQL files assume for extras)
MODERN: Final = Server((24, 8))


@dataclass(frozen=True)
class Target:
    """Where statements go: the database and, in cluster mode, the cluster."""

    database: str = DEFAULT_DATABASE
    cluster: str | None = None

    @property
    def on_cluster(self) -> str:
        return f" ON CLUSTER {self.cluster}" if self.cluster else ""

    def table_name(self, table: Table) -> str:
        """The table rows physically live in (the local one in cluster mode)."""
        return f"{table.name}_local" if self.cluster else table.name


@dataclass(frozen=True)
class Migration:
    number: int
    name: str
    doc: str
    #: statements for a target, or None when the server lacks what it needs
    build: Callable[[Target], list[str]]
    needs_extras: bool = False

    @property
    def label(self) -> str:
        return f"{self.number:03d}_{self.name}"

    def statements(self, target: Target) -> list[str]:
        return self.build(target)

    def checksum(self) -> str:
        """Of the single-node SQL for the default database: the same on every server."""
        text = ";\n".join(self.build(Target()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _create_table(table: Table, target: Target) -> list[str]:
    if not target.cluster:
        return [table.create(target.database)]
    local = f"{table.name}_local"
    replicated = table.create(target.database).replace(
        f"{target.database}.{table.name}\n", f"{target.database}.{local}{target.on_cluster}\n", 1,
    )
    path = quote(DEFAULT_CLUSTER_PATH.format(shard="{shard}", database=target.database,
                                             table=local))
    args = f"{path}, '{{replica}}'" + (f", {table.version}" if table.version else "")
    replicated = re.sub(r"ENGINE = ReplacingMergeTree(\(\w+\))?",
                        f"ENGINE = ReplicatedReplacingMergeTree({args})", replicated)
    distributed = (
        f"CREATE TABLE IF NOT EXISTS {target.database}.{table.name}{target.on_cluster}\n"
        f"AS {target.database}.{local}\n"
        f"ENGINE = Distributed({target.cluster}, {target.database}, {local}, "
        f"{table.shard_by})"
    )
    return [replicated, distributed]


def _tables(target: Target) -> list[str]:
    statements = [f"CREATE DATABASE IF NOT EXISTS {target.database}{target.on_cluster}"]
    for table in TABLES:
        statements.extend(_create_table(table, target))
    return statements


def _views(target: Target) -> list[str]:
    return [view.create(target.database, target.on_cluster) for view in VIEWS]


def _extras(target: Target) -> list[str]:
    statements = []
    for table in TABLES:
        names = [table.name, f"{table.name}_local"] if target.cluster else [table.name]
        columns = [c for c, kind in table.columns if c in LOW_CARDINALITY and kind == "String"]
        for name in names:
            if columns:
                modify = ", ".join(f"MODIFY COLUMN {c} LowCardinality(String)" for c in columns)
                statements.append(
                    f"ALTER TABLE {target.database}.{name}{target.on_cluster} {modify}")
    batches = target.table_name(next(t for t in TABLES if t.name == "pipeline_batches"))
    statements.append(f"ALTER TABLE {target.database}.{batches}{target.on_cluster} "
                      f"MODIFY TTL time + INTERVAL {BATCHES_TTL_DAYS} DAY")
    return statements


MIGRATIONS: Final = (
    Migration(1, "tables", "The tables the pipeline writes.", _tables),
    Migration(2, "views", "Views the dashboards and the live page read.", _views),
    Migration(3, "extras", f"LowCardinality columns and a {BATCHES_TTL_DAYS}-day TTL on "
              "pipeline_batches; only on servers that support them.", _extras,
              needs_extras=True),
)


@dataclass(frozen=True)
class Applied:
    number: int
    name: str
    status: str  # applied | skipped | present


class MigrationError(RuntimeError):
    """A recorded migration differs from the code's, or a statement failed."""


MIGRATIONS_TABLE_DEF: Final = Table(
    MIGRATIONS_TABLE,
    (("number", "UInt32"), ("name", "String"), ("checksum", "String"),
     ("status", "String"), ("server_version", "String"),
     ("applied_at", "DateTime('UTC')")),
    order_by=("number",), shard_by="number",
)


def _migrations_ddl(target: Target) -> list[str]:
    return [f"CREATE DATABASE IF NOT EXISTS {target.database}{target.on_cluster}",
            *_create_table(MIGRATIONS_TABLE_DEF, target)]


def recorded(backend: Backend) -> dict[int, tuple[str, str]]:
    """Applied migrations: number -> (checksum, status)."""
    rows = backend.query(
        "SELECT number, argMax(checksum, applied_at), "  # noqa: S608
        "if(countIf(status = 'applied') > 0, 'applied', argMax(status, applied_at)) "
        f"FROM {backend.database}.{MIGRATIONS_TABLE} GROUP BY number"
    )
    return {int(n): (str(c), str(s)) for n, c, s in rows}


def migrate(backend: Backend, cluster: str | None = None,
            migrations: Sequence[Migration] = MIGRATIONS,
            log: Callable[[str], None] | None = None) -> list[Applied]:
    """Apply the migrations the store lacks, in order; safe to run concurrently
    and repeatedly (statements are idempotent, records are replaced)."""
    target = Target(backend.database, cluster)
    server = Server.parse(str(backend.query("SELECT version()")[0][0]))
    for statement in _migrations_ddl(target):
        backend.execute(statement)
    done = recorded(backend)
    result = []
    for migration in migrations:
        checksum = migration.checksum()
        if migration.number in done:
            stored, status = done[migration.number]
            if stored != checksum:
                raise MigrationError(
                    f"migration {migration.label} was applied with checksum {stored} but the "
                    f"code's is {checksum}: applied migrations must not change; add a new one")
            if not (status == "skipped" and migration.needs_extras and server.extras):
                result.append(Applied(migration.number, migration.name, "present"))
                continue
            # skipped on an older server that has since been upgraded: apply it now
        status = "applied"
        if migration.needs_extras and not server.extras:
            status = "skipped"
        else:
            for statement in migration.statements(target):
                try:
                    backend.execute(statement)
                except Exception as exc:
                    raise MigrationError(
                        f"migration {migration.label} failed on ClickHouse {server}: {exc}\n"
                        f"statement: {statement}") from exc
        backend.insert(MIGRATIONS_TABLE_DEF,
                       [(migration.number, migration.name, checksum, status, str(server),
                         datetime.now(tz=UTC).replace(microsecond=0))])
        if log is not None:
            log(f"migration {migration.label}: {status} (ClickHouse {server})")
        result.append(Applied(migration.number, migration.name, status))
    return result


def render(migration: Migration, target: Target) -> str:
    head = (f"-- {migration.label}: {migration.doc}\n"
            "-- Generated by `python -m pipeline.sinks.migrations`; do not edit by hand.\n"
            "-- Apply with `reciprocity db migrate`, which records it in schema_migrations.\n")
    if migration.needs_extras:
        head += (f"-- Only for ClickHouse {'.'.join(map(str, EXTRAS_SINCE))}+ "
                 "(`db migrate` skips it on older servers).\n")
    return head + "".join(f"\n{statement};\n" for statement in migration.statements(target))


def generated_files(root: Path, cluster: str = "reciprocity") -> dict[Path, str]:
    """Every SQL file under ``deploy/clickhouse``: single node and cluster mode."""
    files = {}
    for migration in MIGRATIONS:
        files[root / f"{migration.label}.sql"] = render(migration, Target())
        files[root / "cluster" / f"{migration.label}.sql"] = render(
            migration, Target(cluster=cluster))
    return files


def write_files(root: Path) -> list[Path]:
    written = []
    for path, text in generated_files(root).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("deploy/clickhouse")
    for path in write_files(out):
        print(path)
