"""The CLI's answers to bad input: clear messages, exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True,
                          text=True, timeout=60, check=False, env=env)


def test_invalid_registry_names_file_entry_and_problem(tmp_path: Path) -> None:
    registry = tmp_path / "reg.yaml"
    registry.write_text("orgs:\n  - {id: uni, name: U}\n  - {id: med, name: M, parent: unix}\n"
                        "accounts:\n  a1: nowhere\n")
    events = tmp_path / "events.jsonl"
    events.write_text("")
    result = cli("run", "--registry", str(registry), "--input", str(events),
                 "--store", str(tmp_path / "store"), "--until-drained")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(registry) in result.stderr
    assert "orgs[1] ('med'): unknown parent 'unix'" in result.stderr
    assert "accounts['a1']: account of unknown org 'nowhere'" in result.stderr


def test_missing_input_file(tmp_path: Path) -> None:
    result = cli("run", "--registry", "r.yaml", "--input", str(tmp_path / "nope.jsonl"),
                 "--until-drained")
    assert result.returncode == 2
    assert "no such file" in result.stderr


def test_until_drained_needs_input() -> None:
    result = cli("run", "--until-drained")
    assert result.returncode == 2
    assert "--until-drained needs --input" in result.stderr


def test_report_on_missing_store(tmp_path: Path) -> None:
    result = cli("report", "pairs", "--store", str(tmp_path / "absent"), "--window", "1h")
    assert result.returncode == 2
    assert "no such directory" in result.stderr


def test_report_rejects_bad_window(tmp_path: Path) -> None:
    result = cli("report", "pairs", "--store", str(tmp_path), "--window", "fortnight")
    assert result.returncode == 2
    assert "fortnight" in result.stderr


def test_bad_setting_from_environment_is_named(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "RECIPROCITY_CLICKHOUSE_URL": "http://u:hunter2@h:8123/db"}
    result = cli("report", "pairs", "--window", "1h", "--store", str(tmp_path), env=env)
    # --store overrides the URL: the answer is about the empty store, not the URL
    assert result.returncode == 2, result.stderr
    assert "holds no reciprocity results" in result.stderr
    result = cli("run", "--registry", "r.yaml", env=env)
    assert result.returncode == 2
    assert "clickhouse_url" in result.stderr
    assert "hunter2" not in result.stderr


def test_store_in_use_by_another_process(tmp_path: Path) -> None:
    from pipeline.sinks import open_backend

    holder = open_backend(f"chdb://{tmp_path / 'store'}")
    try:
        holder.ensure_schema()
        result = cli("report", "pairs", "--store", str(tmp_path / "store"), "--window", "1h")
    finally:
        holder.close()
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "only one process at a time" in result.stderr


def test_unreachable_clickhouse_is_one_clear_line() -> None:
    from pipeline.broker import free_port

    url = f"clickhouse://default:secret@127.0.0.1:{free_port()}/db?connect_timeout=2"
    result = cli("report", "pairs", "--clickhouse", url, "--window", "1h")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "ClickHouse at 127.0.0.1" in result.stderr
    assert "secret" not in result.stderr
