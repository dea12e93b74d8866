"""deploy/clickhouse/**/*.sql is generated from pipeline/sinks/migrations.py: the
committed files must be exactly what the generator writes, and every statement in
them must parse as ClickHouse SQL (chdb's parser, ``EXPLAIN AST``)."""

from __future__ import annotations

import re
from pathlib import Path

import chdb
import pytest

from pipeline.sinks.migrations import MIGRATIONS, Migration, Target, generated_files
from pipeline.sinks.schema import TABLES

ROOT = Path(__file__).resolve().parents[4]
SQL_DIR = ROOT / "deploy" / "clickhouse"
#: the cluster name the committed cluster-mode files are generated for
CLUSTER = "reciprocity"
REGENERATE = "regenerate: python -m pipeline.sinks.migrations"

FILES = [
    pytest.param(migration, target, id=f"{'cluster' if target.cluster else 'single'}-"
                 f"{migration.label}")
    for target in (Target(), Target(cluster=CLUSTER))
    for migration in MIGRATIONS
]


def committed_path(migration: Migration, target: Target) -> Path:
    folder = SQL_DIR / "cluster" if target.cluster else SQL_DIR
    return folder / f"{migration.label}.sql"


def committed_statements(migration: Migration, target: Target) -> list[str]:
    """The statements of a committed file: its header comments dropped, split at
    the ``;`` ending each one."""
    text = committed_path(migration, target).read_text(encoding="utf-8")
    body = "".join(line for line in text.splitlines(keepends=True)
                   if not line.startswith("--"))
    statements = [s.strip() for s in body.split(";\n") if s.strip()]
    assert not any(";" in s for s in statements), "a statement not ended by ';' + newline"
    return statements


def test_committed_sql_files_are_the_generated_ones() -> None:
    expected = generated_files(SQL_DIR, cluster=CLUSTER)
    committed = set(SQL_DIR.rglob("*.sql"))
    assert committed == set(expected), (
        f"{REGENERATE} (and delete stale files): "
        f"missing {sorted(map(str, set(expected) - committed))}, "
        f"stale {sorted(map(str, committed - set(expected)))}")
    for path, text in expected.items():
        assert path.read_bytes() == text.encode("utf-8"), f"{path} is out of date: {REGENERATE}"


@pytest.mark.parametrize(("migration", "target"), FILES)
def test_every_statement_parses(migration: Migration, target: Target) -> None:
    statements = committed_statements(migration, target)
    assert len(statements) == len(migration.statements(target))
    for statement in statements:
        kind = {"CREATE": "CreateQuery", "ALTER": "AlterQuery"}[statement.split()[0]]
        ast = chdb.query(f"EXPLAIN AST {statement}", "CSV").bytes().decode()
        assert ast.lstrip('"').startswith(kind), f"{migration.label}: {statement}\n{ast}"


@pytest.mark.parametrize(("migration", "target"), FILES)
def test_cluster_mode_runs_everything_on_the_cluster(migration: Migration,
                                                     target: Target) -> None:
    for statement in committed_statements(migration, target):
        on_cluster = f" ON CLUSTER {CLUSTER}" in statement
        assert on_cluster == bool(target.cluster), statement
        if target.cluster and "ENGINE = " in statement:
            assert re.search(r"ENGINE = (ReplicatedReplacingMergeTree|Distributed)\(",
                             statement), statement


def test_distributed_tables_shard_by_the_tables_keys() -> None:
    statements = committed_statements(MIGRATIONS[0], Target(cluster=CLUSTER))
    sharding = {}
    for statement in statements:
        found = re.search(rf"ENGINE = Distributed\({CLUSTER}, \w+, (\w+)_local, (.+)\)$",
                          statement)
        if found:
            sharding[found[1]] = found[2]
    assert sharding == {table.name: table.shard_by for table in TABLES}


def test_extras_are_only_in_the_gated_migration() -> None:
    """LowCardinality and TTL need ClickHouse 20.3+: only the migration that
    ``db migrate`` skips on older servers may use them."""
    for migration in MIGRATIONS:
        for target in (Target(), Target(cluster=CLUSTER)):
            text = " ".join(committed_statements(migration, target))
            uses_extras = bool(re.search(r"LowCardinality|\bTTL\b", text))
            assert uses_extras == migration.needs_extras, migration.label
