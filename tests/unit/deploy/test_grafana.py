"""The Grafana provisioning in deploy/grafana, checked offline.

- the dashboards validate against the committed JSON Schema of @grafana/schema
  (deploy/grafana/schema/, see regenerate.sh there) and every panel target is a
  well-formed grafana-clickhouse-datasource SQL query (the schema leaves targets
  open);
- deploy/grafana/generate.py, run again, writes exactly the committed files;
- the datasource, dashboard-provider and alert-rule YAML have the shape Grafana's
  file provisioning reads, refer to each other consistently, and survive
  Grafana's environment-variable expansion.

What the queries return is tests/functional/test_grafana_queries.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD_DIR = GRAFANA / "dashboards"
SCHEMA_DIR = GRAFANA / "schema"
DATASOURCE_FILE = GRAFANA / "provisioning" / "datasources" / "clickhouse.yaml"
PROVIDER_FILE = GRAFANA / "provisioning" / "dashboards" / "reciprocity.yaml"
ALERTING_FILE = GRAFANA / "provisioning" / "alerting" / "reciprocity.yaml"
README = GRAFANA / "README.md"

DATASOURCE_TYPE = "grafana-clickhouse-datasource"
DATASOURCE_UID = "reciprocity-clickhouse"
EXPRESSION = "__expr__"
DASHBOARD_UIDS = ("reciprocity-org", "reciprocity-overview")
#: ClickHouse plugin formats: time series 0, table 1 (sqlutil.FormatQueryOption)
FORMATS = {"timeseries": 0, "table": 1}
#: Go's time.ParseDuration-style durations Grafana accepts for `for`/`interval`
DURATION = re.compile(r"^(?:\d+[smhdw])+$")
DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: what Grafana's provisioning expands in a string ($VAR, ${VAR}; $$ is a literal $)
ENV_REFERENCE = re.compile(r"\$(?:\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z0-9_]+))")


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), path
    return data


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text(encoding="utf-8"))
            for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows
    return found


def seconds(duration: str) -> int:
    assert DURATION.match(duration), duration
    return sum(int(n) * DURATION_UNITS_S[u] for n, u in re.findall(r"(\d+)([smhdw])", duration))


def expand_env(text: str, env: Mapping[str, str]) -> str:
    """Grafana's provisioning interpolation (values.interpolateValue: os.ExpandEnv
    on each part between ``$$``): unset variables become empty."""
    def one(part: str) -> str:
        return ENV_REFERENCE.sub(lambda m: env.get(m["braced"] or m["plain"], ""), part)
    return "$".join(one(part) for part in text.split("$$"))


def env_references(value: Any) -> set[str]:
    if isinstance(value, str):
        return {m["braced"] or m["plain"] for m in ENV_REFERENCE.finditer(value.replace("$$", ""))}
    if isinstance(value, Mapping):
        return set().union(*(env_references(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(env_references(v) for v in value))
    return set()


def assert_clickhouse_query(query: Mapping[str, Any], where: str) -> None:
    """The plugin's SQL-editor query model (src/types/sql.ts)."""
    assert query["datasource"] == {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID}, where
    assert query["editorType"] == "sql", where
    assert query["queryType"] in FORMATS, where
    assert query["format"] == FORMATS[query["queryType"]], where
    assert isinstance(query["rawSql"], str) and query["rawSql"].strip(), where
    assert re.match(r"^\s*SELECT\b", query["rawSql"], re.IGNORECASE), where
    assert query["refId"], where


# ------------------------------------------------------------------------ dashboards


def test_dashboards_are_the_expected_ones() -> None:
    boards = dashboards()
    assert sorted(boards) == sorted(DASHBOARD_UIDS)
    for uid, board in boards.items():
        assert board["uid"] == uid  # the file is named after the uid
        assert "reciprocity" in board["tags"]


@pytest.mark.parametrize("uid", DASHBOARD_UIDS)
def test_dashboard_matches_grafana_schema(uid: str) -> None:
    schema = json.loads((SCHEMA_DIR / "dashboard.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(dashboards()[uid])]
    assert errors == []


def test_schema_validation_can_fail() -> None:
    schema = json.loads((SCHEMA_DIR / "dashboard.schema.json").read_text(encoding="utf-8"))
    broken = dashboards()["reciprocity-overview"] | {"panels": [{"gridPos": {"h": "tall"}}]}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


def test_schema_is_pinned_by_its_script() -> None:
    script = (SCHEMA_DIR / "regenerate.sh").read_text(encoding="utf-8")
    version = re.search(r"^GRAFANA_SCHEMA_VERSION=(\d+\.\d+\.\d+)$", script, re.MULTILINE)
    assert version, "regenerate.sh pins @grafana/schema"
    assert re.search(r"^TS_JSON_SCHEMA_GENERATOR_VERSION=\d+\.\d+\.\d+$", script, re.MULTILINE)
    schema = json.loads((SCHEMA_DIR / "dashboard.schema.json").read_text(encoding="utf-8"))
    assert f"@grafana/schema@{version[1]}" in schema["$comment"]


@pytest.mark.parametrize("uid", DASHBOARD_UIDS)
def test_panel_targets_are_clickhouse_sql(uid: str) -> None:
    board = dashboards()[uid]
    data_panels = [p for p in panels(board) if p["type"] != "row"]
    assert data_panels
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in data_panels:
        where = f"{uid}: {panel['title']}"
        assert panel["datasource"] == {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID}, where
        assert panel["targets"], where
        for target in panel["targets"]:
            assert_clickhouse_query(target, where)
            if panel["type"] == "timeseries":
                assert target["format"] == FORMATS["timeseries"], where


@pytest.mark.parametrize("uid", DASHBOARD_UIDS)
def test_dashboard_variables(uid: str) -> None:
    variables = {v["name"]: v for v in dashboards()[uid]["templating"]["list"]}
    assert set(variables) == {"org", "window"}
    org = variables["org"]
    assert org["type"] == "query"
    assert org["datasource"] == {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID}
    assert org["query"]["rawSql"] == (
        "SELECT DISTINCT org FROM reciprocity.org_roi_daily ORDER BY org")
    assert org["query"]["editorType"] == "sql"
    window = variables["window"]
    assert window["type"] == "custom"
    assert window["query"] == "7d,30d"
    assert window["current"]["value"] == "7d"


def test_queries_use_only_defined_variables() -> None:
    """Every ${name}/$name in panel SQL is a dashboard variable or a plugin macro."""
    for uid, board in dashboards().items():
        names = {v["name"] for v in board["templating"]["list"]}
        for panel in panels(board):
            for target in panel.get("targets", []):
                used = set(re.findall(r"\$\{?(\w+)", target["rawSql"]))
                assert {n for n in used if not n.startswith("__")} <= names, (uid, panel["title"])


# ----------------------------------------------------------------------- regeneration


def test_generator_reproduces_the_committed_files(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(GRAFANA / "generate.py"), "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted([Path("dashboards") / f"{uid}.json" for uid in DASHBOARD_UIDS]
                             + [ALERTING_FILE.relative_to(GRAFANA)])
    for relative in written:
        assert (tmp_path / relative).read_bytes() == (GRAFANA / relative).read_bytes(), (
            f"{relative} is stale: run python deploy/grafana/generate.py")
    committed = sorted(p.relative_to(GRAFANA) for p in DASHBOARD_DIR.glob("*"))
    assert committed == [p for p in written if p.parts[0] == "dashboards"], "no stray dashboards"


# ------------------------------------------------------------------------ datasource

ENV = {"CLICKHOUSE_HOST": "clickhouse", "CLICKHOUSE_PORT": "9000",
       "CLICKHOUSE_PROTOCOL": "native", "CLICKHOUSE_USER": "grafana",
       "CLICKHOUSE_PASSWORD": "s3cret$x", "CLICKHOUSE_DATABASE": "reciprocity"}


def test_datasource_provisioning() -> None:
    document = load_yaml(DATASOURCE_FILE)
    assert document["apiVersion"] == 1
    (source,) = document["datasources"]
    assert source["uid"] == DATASOURCE_UID
    assert source["type"] == DATASOURCE_TYPE
    assert source["jsonData"] == {
        "host": "${CLICKHOUSE_HOST}", "port": "${CLICKHOUSE_PORT}",
        "protocol": "${CLICKHOUSE_PROTOCOL}", "username": "${CLICKHOUSE_USER}",
        "defaultDatabase": "${CLICKHOUSE_DATABASE}",
    }
    assert source["secureJsonData"] == {"password": "${CLICKHOUSE_PASSWORD}"}


def test_datasource_settings_after_grafana_expands_them() -> None:
    """What the plugin's LoadSettings gets: the port arrives as a string and must
    parse (strconv.ParseInt); a password's own $ stays."""
    source = load_yaml(DATASOURCE_FILE)["datasources"][0]
    settings = {k: expand_env(v, ENV) for k, v in source["jsonData"].items()}
    assert settings == {"host": "clickhouse", "port": "9000", "protocol": "native",
                        "username": "grafana", "defaultDatabase": "reciprocity"}
    assert int(settings["port"], 0) == 9000
    assert settings["protocol"] in {"native", "http"}
    password = source["secureJsonData"]["password"]
    assert expand_env(password, ENV) == ENV["CLICKHOUSE_PASSWORD"]


def test_every_environment_variable_is_documented() -> None:
    used = env_references(load_yaml(DATASOURCE_FILE)) | env_references(load_yaml(PROVIDER_FILE))
    assert used == set(ENV)
    readme = README.read_text(encoding="utf-8")
    assert [name for name in sorted(used) if name not in readme] == []


# ------------------------------------------------------------------------ dashboards provider


def test_dashboard_provider() -> None:
    document = load_yaml(PROVIDER_FILE)
    assert document["apiVersion"] == 1
    (provider,) = document["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    assert path.startswith("/") and "$" not in path
    assert path in README.read_text(encoding="utf-8"), "README says where to mount the JSON"


# ------------------------------------------------------------------------ alert rules


def rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTING_FILE)["groups"] for rule in group["rules"]]


def test_alert_groups() -> None:
    document = load_yaml(ALERTING_FILE)
    assert document["apiVersion"] == 1
    for group in document["groups"]:
        assert isinstance(group["orgId"], int)
        assert group["name"] and group["folder"]
        assert seconds(group["interval"]) >= 60
        assert group["rules"]
    uids = [rule["uid"] for rule in rules()]
    assert len(uids) == len(set(uids))
    assert {rule["labels"]["kind"] for rule in rules()} == {"snub", "omission", "drop"}


@pytest.mark.parametrize("rule", rules(), ids=lambda rule: rule["uid"])
def test_alert_rule(rule: dict[str, Any]) -> None:
    assert rule["uid"] and rule["title"]
    ref_ids = [query["refId"] for query in rule["data"]]
    assert len(ref_ids) == len(set(ref_ids))
    assert rule["condition"] in ref_ids
    queries = [q for q in rule["data"] if q["datasourceUid"] != EXPRESSION]
    assert queries, "at least one ClickHouse query"
    for query in rule["data"]:
        assert query["datasourceUid"] in (DATASOURCE_UID, EXPRESSION)
        assert query["model"]["refId"] == query["refId"]
        span = query["relativeTimeRange"]
        assert 0 <= span["to"] <= span["from"]
        if query["datasourceUid"] == EXPRESSION:
            model = query["model"]
            assert model["datasource"] == {"type": EXPRESSION, "uid": EXPRESSION}
            assert model["type"] in ("reduce", "threshold", "math", "classic_conditions")
            assert model["expression"] in ref_ids and model["expression"] != query["refId"]
        else:
            assert_clickhouse_query(query["model"], rule["uid"])
            assert query["model"]["format"] == FORMATS["table"]  # one alert per row
            assert span["from"] > 0
            # alerting has no dashboard variables: backend macros only
            assert set(re.findall(r"\$(\{?\w+)", query["model"]["rawSql"])) <= {
                "__timeFilter", "__fromTime", "__toTime", "__interval_s", "__timeInterval"}
    lookback = min(q["relativeTimeRange"]["from"] for q in queries)
    assert seconds(rule["for"]) < lookback, "`for` shorter than the look-back, or it never fires"
    assert rule["noDataState"] == "OK"  # no new records: nothing to alert on
    assert rule["execErrState"] in ("Error", "Alerting", "OK", "KeepLast")
    assert {"team", "severity", "kind"} <= set(rule["labels"])
    assert rule["labels"]["team"] == "comms"
    assert rule["annotations"]["summary"]


@pytest.mark.parametrize("rule", rules(), ids=lambda rule: rule["uid"])
def test_alert_rule_links_to_a_panel(rule: dict[str, Any]) -> None:
    board = dashboards()[rule["dashboardUid"]]
    assert rule["panelId"] in [p["id"] for p in panels(board)]


def test_alert_rules_survive_environment_expansion() -> None:
    """Grafana expands $VAR in every rule field except the query models and the
    annotations (it reads those raw), so `$` may appear only there."""
    for rule in rules():
        plain = {k: v for k, v in rule.items() if k not in ("data", "annotations")}
        plain["data"] = [{k: v for k, v in q.items() if k != "model"} for q in rule["data"]]
        assert env_references(plain) == set(), rule["uid"]


def test_no_credentials_in_provisioning() -> None:
    for path in (DATASOURCE_FILE, PROVIDER_FILE, ALERTING_FILE):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(?i)password:\s*(?!\$\{)\S", text), path
