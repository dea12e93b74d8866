"""deploy/clickhouse/*.sql is generated from pipeline/sinks/schema.py and must match it."""

from __future__ import annotations

from pathlib import Path

from pipeline.sinks.schema import render_sql

ROOT = Path(__file__).parents[3]


def test_committed_ddl_matches_the_generator() -> None:
    committed = (ROOT / "deploy" / "clickhouse" / "001_init.sql").read_text()
    assert committed == render_sql("reciprocity"), (
        "regenerate: python -m pipeline.sinks.schema > deploy/clickhouse/001_init.sql"
    )
