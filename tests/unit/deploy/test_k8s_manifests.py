"""deploy/k8s: the Kubernetes manifests, checked offline.

- Every built-in kind is validated against the OpenAPI schemas of Kubernetes
  1.31 bundled in ``kubernetes-validate`` (strict: unknown fields fail).
- The operators' kinds (Strimzi, Altinity) have no schema there: they are
  checked structurally, with the fields the application depends on.
- The links between the files and the application: every ``RECIPROCITY_*``
  name is a setting, the ConfigMap parses with the settings and keeps the
  documented defaults, probes and metrics hit the web port, mounted files exist,
  secrets stay out of ConfigMaps, selectors match, the kustomization lists every
  default manifest, topics/ACLs/users follow the settings, the schema Job and
  the workers migrate the ClickHouse installation's cluster.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pipeline.settings import Settings
from producers.mastodon import parse_accounts
from schemas.registry import parse_registry

ROOT = Path(__file__).parents[3]
K8S = ROOT / "deploy" / "k8s"
REFERENCE = K8S / "reference"
#: Kubernetes version whose OpenAPI schemas the built-in kinds must satisfy.
K8S_VERSION = "1.31.0"
NAMESPACE = "reciprocity"
SECRETS_TEMPLATE = "secrets.example.yaml"
IMAGE = "ghcr.io/reciprocity/reciprocity:0.1.0"
APP_UID = 10001

#: Kinds defined by operators' CRDs (no schema in kubernetes-validate).
CRD_KINDS = {
    ("kafka.strimzi.io/v1beta2", "Kafka"),
    ("kafka.strimzi.io/v1beta2", "KafkaNodePool"),
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"),
    ("kafka.strimzi.io/v1beta2", "KafkaUser"),
    ("clickhouse.altinity.com/v1", "ClickHouseInstallation"),
    ("clickhouse-keeper.altinity.com/v1", "ClickHouseKeeperInstallation"),
}
#: Settings whose deployment value differs from the documented default, on purpose.
DEPLOYMENT_OVERRIDES = {
    "broker", "kafka_security_protocol", "kafka_sasl_username", "kafka_ssl_cafile",
    "registry", "partitions", "clickhouse_cluster",
}
#: Kubernetes kinds that are not namespaced.
CLUSTER_SCOPED = {"Namespace"}


# -- loading -----------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def docs_of(*names: str) -> list[dict[str, Any]]:
    return [doc for name in names for doc in load(K8S / name)]


def all_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in manifest_files() for doc in load(path)]


def default_docs() -> list[dict[str, Any]]:
    """What ``kubectl apply -k deploy/k8s`` applies."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return docs_of(*kustomization["resources"])


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def doc_id(path: Path, doc: dict[str, Any]) -> str:
    return f"{path.relative_to(K8S)}:{doc['kind']}/{doc['metadata']['name']}"


def settings_fields() -> dict[str, Any]:
    return dict(Settings.model_fields)


def secret_fields() -> set[str]:
    return {name for name, f in settings_fields().items() if "SecretStr" in str(f.annotation)}


def env_name(field: str) -> str:
    return f"RECIPROCITY_{field.upper()}"


def field_of(var: str) -> str:
    return var.removeprefix("RECIPROCITY_").lower()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RECIPROCITY_* variable of the outer environment leaks into Settings()."""
    for name in list(os.environ):
        if name.upper().startswith("RECIPROCITY_"):
            monkeypatch.delenv(name)


# -- pods --------------------------------------------------------------------------------


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod template) of every Deployment and Job."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc, doc["spec"]["template"]


def container_env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", [])}


def effective_env(container: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    """Plain values a container sees: envFrom ConfigMaps, then its own values."""
    out: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            out.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for name, entry in container_env(container).items():
        if "value" in entry:
            out[name] = entry["value"]
    return out


def mount_of(container: dict[str, Any], pod: dict[str, Any],
             path: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(volumeMount, volume, path inside the volume) that holds ``path``."""
    target = PurePosixPath(path)
    best = None
    for mount in container.get("volumeMounts", []):
        base = PurePosixPath(mount["mountPath"])
        if (target == base or base in target.parents) and (
                best is None or len(base.parts) > len(PurePosixPath(best["mountPath"]).parts)):
            best = mount
    assert best is not None, f"{path} is on no volume of container {container['name']}"
    volume = {v["name"]: v for v in pod["spec"]["volumes"]}[best["name"]]
    return best, volume, str(target.relative_to(best["mountPath"]))


def secret_template() -> list[dict[str, Any]]:
    return load(K8S / SECRETS_TEMPLATE)


def assert_file_in_volume(volume: dict[str, Any], relative: str, docs: list[dict[str, Any]],
                          what: str) -> None:
    """``relative`` is a key projected by a ConfigMap or Secret volume that exists."""
    if "configMap" in volume:
        source, data = volume["configMap"], one(docs, "ConfigMap", volume["configMap"]["name"])
        keys = set(data["data"])
    elif "secret" in volume:
        source = volume["secret"]
        secret = one(secret_template(), "Secret", source["secretName"])
        keys = set(secret["stringData"])
    else:
        raise AssertionError(f"{what}: volume {volume['name']} is no ConfigMap or Secret")
    items = source.get("items")
    paths = {i["path"]: i["key"] for i in items} if items else {k: k for k in keys}
    assert relative in paths, f"{what}: {relative} is not projected by volume {volume['name']}"
    assert paths[relative] in keys, f"{what}: key {paths[relative]} missing from its source"


# -- generic structure ---------------------------------------------------------------------


def test_every_document_has_kind_and_name() -> None:
    docs = all_docs()
    assert docs
    for path, doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), path
        assert doc.get("metadata", {}).get("name"), f"{path}: {doc['kind']} without a name"


BUILTIN = [pytest.param(doc, id=doc_id(path, doc)) for path, doc in all_docs()
           if (doc["apiVersion"], doc["kind"]) not in CRD_KINDS]


@pytest.mark.parametrize("doc", BUILTIN)
def test_builtin_kinds_match_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    try:
        used = kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} at {where}: {exc.message}")
    assert used == "1.31"


def test_strict_validation_rejects_unknown_fields() -> None:
    """The validator is strict: a misspelt field fails (so passing above means something)."""
    deployment = one(docs_of("workers.yaml"), "Deployment", "reciprocity-worker")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    bad = {**deployment, "spec": {**deployment["spec"], "template": {
        "metadata": deployment["spec"]["template"]["metadata"],
        "spec": {**deployment["spec"]["template"]["spec"],
                 "containers": [{**container, "livenesProbe": container["livenessProbe"]}]},
    }}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_crd_kinds_are_only_in_reference_manifests() -> None:
    for path, doc in all_docs():
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            assert path.parent == REFERENCE, f"{doc_id(path, doc)} needs a CRD: reference/ only"
            assert isinstance(doc.get("spec"), dict) and doc["spec"], doc_id(path, doc)
            assert doc["metadata"].get("namespace"), doc_id(path, doc)


# -- kustomization -------------------------------------------------------------------------


def test_kustomization_lists_every_default_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["namespace"] == NAMESPACE
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    expected = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", SECRETS_TEMPLATE}
    assert set(listed) == expected
    assert SECRETS_TEMPLATE not in listed
    assert not any(r.startswith("reference") for r in listed)


def test_default_manifests_are_in_the_namespace() -> None:
    for doc in default_docs():
        if doc["kind"] in CLUSTER_SCOPED:
            assert doc["metadata"]["name"] == NAMESPACE
        else:
            assert doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]["name"]
    for doc in secret_template()[:3]:
        assert doc["metadata"]["namespace"] == NAMESPACE


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
def test_kustomize_builds_the_default_manifests() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    built = [d for d in yaml.safe_load_all(out) if d]
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, built)) == sorted(map(key, default_docs()))


# -- settings ------------------------------------------------------------------------------


def test_every_reciprocity_variable_is_a_setting() -> None:
    """Every RECIPROCITY_* name anywhere in deploy/k8s (manifests, comments, README)
    is a settings field; ``RECIPROCITY_WEB_*`` style prefixes must prefix one."""
    fields = set(settings_fields())
    for path in sorted(K8S.rglob("*")):
        if not path.is_file():
            continue
        text = path.read_text()
        for match in re.finditer(r"RECIPROCITY_[A-Z0-9_]*", text):
            name = field_of(match.group())
            if text[match.end():match.end() + 1] == "*":
                assert any(f.startswith(name) for f in fields), f"{path}: {match.group()}*"
            else:
                assert name in fields, f"{path}: {match.group()} is not a Settings field"


def config_map() -> dict[str, str]:
    return one(docs_of("config.yaml"), "ConfigMap", "reciprocity-config")["data"]


def worker() -> dict[str, Any]:
    return one(docs_of("workers.yaml"), "Deployment", "reciprocity-worker")


def worker_container() -> dict[str, Any]:
    containers = worker()["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_config_map_covers_every_non_secret_setting() -> None:
    text = (K8S / "config.yaml").read_text()
    commented = {field_of(m) for m in re.findall(r"^\s*#\s*(RECIPROCITY_[A-Z0-9_]+):", text,
                                                  re.MULTILINE)}
    in_worker = {field_of(n) for n in container_env(worker_container())
                 if n.startswith("RECIPROCITY_")}
    present = {field_of(k) for k in config_map()}
    missing = set(settings_fields()) - secret_fields() - present - commented - in_worker
    assert not missing, f"settings absent from config.yaml: {sorted(map(env_name, missing))}"


def test_config_map_holds_no_secret_setting() -> None:
    for doc in (d for _, d in all_docs() if d["kind"] == "ConfigMap"):
        for key in doc.get("data", {}):
            if key.startswith("RECIPROCITY_"):
                assert field_of(key) not in secret_fields(), f"{key} belongs in a Secret"


def test_config_values_parse_and_keep_the_documented_defaults() -> None:
    data = config_map()
    defaults = Settings()
    parsed = Settings(**{field_of(k): v for k, v in data.items()})
    for key in data:
        name = field_of(key)
        if name in DEPLOYMENT_OVERRIDES:
            continue
        got, want = getattr(parsed, name), getattr(defaults, name)
        if name == "weights":
            got, want = dict(got), dict(want)
        assert got == want, f"{key}={data[key]!r} is not the documented default"
    assert parsed.kafka_security_protocol == "SASL_SSL"
    assert parsed.kafka_sasl_mechanism == "SCRAM-SHA-512"


def test_worker_settings_parse() -> None:
    env = effective_env(worker_container(), docs_of("config.yaml"))
    settings = Settings(**{field_of(k): v for k, v in env.items()
                           if k.startswith("RECIPROCITY_")})
    assert settings.web_enabled is True
    assert settings.web_host == "0.0.0.0"  # noqa: S104 (the pod's address, on purpose)
    assert settings.web_port == 6066


def test_no_secret_values_in_config_maps() -> None:
    userinfo = re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^@\s/]+@", re.IGNORECASE)
    credential = re.compile(r"(password|passwd|token|secret)\w*\s*[:=]\s*(\S+)", re.IGNORECASE)
    env_ref = re.compile(r"^[\"']?(\$\{\w+\}|\$__env\{\w+\}|\$\w+)[\"']?$")
    for path, doc in all_docs():
        if doc["kind"] != "ConfigMap":
            continue
        for key, value in doc.get("data", {}).items():
            where = f"{doc_id(path, doc)}[{key}]"
            assert not re.search(r"(password|token|secret|private)", key, re.IGNORECASE), where
            assert not userinfo.search(value), f"{where}: a URL with a password"
            assert "PRIVATE KEY" not in value, where
            for match in credential.finditer(value):
                assert env_ref.match(match.group(2)), f"{where}: {match.group(1)} inline"


def test_secret_template_is_placeholders_only() -> None:
    fields = secret_fields()
    for doc in secret_template():
        assert doc["kind"] == "Secret"
        assert "data" not in doc, "stringData placeholders only"
        for key, value in doc["stringData"].items():
            assert "CHANGE_ME" in value, f"{doc['metadata']['name']}[{key}] is no placeholder"
            if key.startswith("RECIPROCITY_"):
                assert field_of(key) in fields, f"{key} is not a secret setting"
    app_secret = one(secret_template(), "Secret", "reciprocity-secrets")["stringData"]
    assert {"RECIPROCITY_CLICKHOUSE_URL", "RECIPROCITY_KAFKA_SASL_PASSWORD"} <= set(app_secret)


# -- workers -------------------------------------------------------------------------------


def test_worker_deployment() -> None:
    deployment = worker()
    pod = deployment["spec"]["template"]["spec"]
    container = worker_container()
    assert deployment["spec"]["replicas"] == 3
    assert container["image"] == IMAGE
    assert container["args"] == ["run"]
    assert {s.get("configMapRef", s.get("secretRef"))["name"] for s in container["envFrom"]} == {
        "reciprocity-config", "reciprocity-secrets"}
    assert pod["terminationGracePeriodSeconds"] == 60
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"},
                                      "limits": {"cpu": "2", "memory": "2Gi"}}


def test_probes_hit_health_on_the_declared_web_port() -> None:
    container = worker_container()
    env = effective_env(container, docs_of("config.yaml"))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    web_port = int(env["RECIPROCITY_WEB_PORT"])
    assert web_port in ports.values()
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/health", probe
        port = ports.get(get["port"], get["port"])
        assert port == web_port, f"{probe} targets {get['port']}, the web server is on {web_port}"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60, "group join + recovery"


def test_metrics_service_scrapes_every_worker() -> None:
    docs = docs_of("workers.yaml")
    service = one(docs, "Service", "reciprocity-worker-metrics")
    annotations = service["metadata"]["annotations"]
    container = worker_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert service["spec"]["clusterIP"] == "None"
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == int(
        effective_env(container, docs_of("config.yaml"))["RECIPROCITY_WEB_PORT"])
    for port in service["spec"]["ports"]:
        target = port["targetPort"]
        assert ports.get(target, target) == int(annotations["prometheus.io/port"])
    assert selects(service["spec"]["selector"], worker()["spec"]["template"])


def test_faust_data_dir_and_tmp_are_writable() -> None:
    pod = worker()["spec"]["template"]
    container = worker_container()
    env = effective_env(container, docs_of("config.yaml"))
    for path in (env["APP_DATADIR"], "/tmp"):  # noqa: S108 (the pod's own /tmp)
        mount, volume, _ = mount_of(container, pod, path)
        assert "emptyDir" in volume and not mount.get("readOnly"), path
    # changelog topics created by Faust must satisfy min.insync.replicas 2
    assert int(env["TOPIC_REPLICATION_FACTOR"]) >= 2
    assert env["APP_WEB_TABLES_ENABLED"] == "false"


def test_pdb_selects_the_workers_only() -> None:
    docs = default_docs()
    pdb = one(docs, "PodDisruptionBudget", "reciprocity-worker")
    assert pdb["spec"]["maxUnavailable"] == 1
    for workload, template in pod_specs(docs):
        assert selects(pdb["spec"]["selector"]["matchLabels"], template) == (
            workload["metadata"]["name"] == "reciprocity-worker")


# -- producers -----------------------------------------------------------------------------


def producers() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in find(docs_of("producers.yaml"), "Deployment")}


def test_producers_run_one_instance_at_a_time() -> None:
    deployments = producers()
    assert set(deployments) == {"reciprocity-producer-bluesky", "reciprocity-producer-mastodon"}
    for deployment in deployments.values():
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == IMAGE
        # only the Kafka password of the application's Secret
        assert not any("secretRef" in s for s in container.get("envFrom", []))


def test_bluesky_cursor_is_on_its_volume_claim() -> None:
    deployment = producers()["reciprocity-producer-bluesky"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["produce", "bluesky", "--cursor-file", "/state/bluesky.cursor"]
    mount, volume, _ = mount_of(container, pod, "/state/bluesky.cursor")
    assert not mount.get("readOnly")
    claim = volume["persistentVolumeClaim"]["claimName"]
    pvc = one(docs_of("producers.yaml"), "PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_mastodon_tokens_come_from_the_secret_and_match_the_registry() -> None:
    deployment = producers()["reciprocity-producer-mastodon"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["produce", "mastodon", "--tokens",
                                 "/secrets/mastodon/tokens.yaml"]
    _, volume, relative = mount_of(container, pod, "/secrets/mastodon/tokens.yaml")
    assert_file_in_volume(volume, relative, docs_of("config.yaml"), "tokens")
    secret = one(secret_template(), "Secret", volume["secret"]["secretName"])
    registry = parse_registry(yaml.safe_load(registry_text()))
    accounts = parse_accounts(yaml.safe_load(secret["stringData"]["tokens.yaml"]),
                              registry=registry, env={})
    assert accounts and all(a.acct for a in accounts)


# -- every pod -----------------------------------------------------------------------------


POD_DOCS = [pytest.param(path, workload, id=doc_id(path, workload))
            for path, workload in all_docs() if workload["kind"] in ("Deployment", "Job")]


@pytest.mark.parametrize(("path", "workload"), POD_DOCS)
def test_pods_are_locked_down(path: Path, workload: dict[str, Any]) -> None:
    spec = workload["spec"]["template"]["spec"]
    pod_security = spec["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    if path.parent == K8S:
        assert pod_security["runAsUser"] == APP_UID
    assert spec["automountServiceAccountToken"] is False
    # RECIPROCITY_* Service link variables could clash with the settings
    assert spec["enableServiceLinks"] is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    for container in spec["containers"]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert container["resources"]["requests"] and container["resources"]["limits"]
        for mount in container["volumeMounts"]:
            assert mount["name"] in volumes
        _, tmp, _ = mount_of(container, workload["spec"]["template"], "/tmp")  # noqa: S108
        assert "emptyDir" in tmp


@pytest.mark.parametrize(("path", "workload"), POD_DOCS)
def test_referenced_objects_exist(path: Path, workload: dict[str, Any]) -> None:
    docs = [d for _, d in all_docs() if d["kind"] != "Secret"]
    secrets = {s["metadata"]["name"]: s for s in secret_template()}
    spec = workload["spec"]["template"]["spec"]
    namespace = workload["metadata"]["namespace"]
    for volume in spec["volumes"]:
        if "configMap" in volume:
            cm = one(docs, "ConfigMap", volume["configMap"]["name"])
            assert cm["metadata"]["namespace"] == namespace
        if "secret" in volume:
            assert secrets[volume["secret"]["secretName"]]["metadata"]["namespace"] == namespace
        if "persistentVolumeClaim" in volume:
            one(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    for container in spec["containers"]:
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                assert source["secretRef"]["name"] in secrets
            else:
                one(docs, "ConfigMap", source["configMapRef"]["name"])
        for entry in container.get("env", []):
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                secret = secrets[ref["name"]]
                assert secret["metadata"]["namespace"] == namespace
                assert ref["key"] in secret["stringData"], f"{ref['name']}[{ref['key']}]"


@pytest.mark.parametrize(("path", "workload"), [p for p in POD_DOCS if p.values[0].parent == K8S])
def test_files_named_by_settings_are_mounted(path: Path, workload: dict[str, Any]) -> None:
    docs = default_docs()
    pod = workload["spec"]["template"]
    for container in pod["spec"]["containers"]:
        env = effective_env(container, docs)
        for var in ("RECIPROCITY_REGISTRY", "RECIPROCITY_KAFKA_SSL_CAFILE"):
            _, volume, relative = mount_of(container, pod, env[var])
            assert_file_in_volume(volume, relative, docs, var)


def test_registry_example_is_valid() -> None:
    registry = parse_registry(yaml.safe_load(registry_text()))
    assert registry.org_of_account


def registry_text() -> str:
    return str(one(docs_of("config.yaml"), "ConfigMap", "reciprocity-registry")["data"][
        "registry.yaml"])


# -- labels and selectors ------------------------------------------------------------------


def selects(selector: dict[str, str], template: dict[str, Any]) -> bool:
    labels = template["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in selector.items())


def test_selectors_match_their_pods_and_no_other() -> None:
    docs = default_docs()
    workloads = [(w, t) for w, t in pod_specs(docs) if w["kind"] == "Deployment"]
    for deployment, template in workloads:
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selects(selector, template), deployment["metadata"]["name"]
        for other, other_template in workloads:
            if other is not deployment:
                assert not selects(selector, other_template), (
                    f"{deployment['metadata']['name']} selects {other['metadata']['name']}'s pods")
    for service in find(docs, "Service"):
        matched = [w["metadata"]["name"] for w, t in workloads
                   if selects(service["spec"]["selector"], t)]
        assert matched == ["reciprocity-worker"], service["metadata"]["name"]


# -- Kafka (Strimzi) -----------------------------------------------------------------------


def kafka_docs() -> list[dict[str, Any]]:
    return load(REFERENCE / "kafka-strimzi.yaml")


def deployed_settings() -> Settings:
    return Settings(**{field_of(k): v for k, v in config_map().items()})


def test_kafka_cluster_is_kraft_with_three_replicated_nodes() -> None:
    docs = kafka_docs()
    (kafka,) = find(docs, "Kafka")
    (pool,) = find(docs, "KafkaNodePool")
    name = kafka["metadata"]["name"]
    assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"
    assert kafka["metadata"]["annotations"]["strimzi.io/node-pools"] == "enabled"
    assert "zookeeper" not in kafka["spec"]
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == name
    assert pool["metadata"]["namespace"] == kafka["metadata"]["namespace"]
    assert pool["spec"]["replicas"] == 3
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}
    config = kafka["spec"]["kafka"]["config"]
    assert config["default.replication.factor"] == 3
    assert config["min.insync.replicas"] == 2
    assert config["offsets.topic.replication.factor"] == 3
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    assert "userOperator" in kafka["spec"]["entityOperator"]


def test_broker_setting_points_at_the_scram_tls_listener() -> None:
    (kafka,) = find(kafka_docs(), "Kafka")
    settings = deployed_settings()
    bootstrap = f"{kafka['metadata']['name']}-kafka-bootstrap.{kafka['metadata']['namespace']}"
    assert len(settings.bootstrap_servers) == 1
    host, port = settings.bootstrap_servers[0].rsplit(":", 1)
    assert host == bootstrap
    (listener,) = [x for x in kafka["spec"]["kafka"]["listeners"] if x["port"] == int(port)]
    assert listener["tls"] is True
    assert listener["type"] == "internal"
    assert listener["authentication"]["type"] == "scram-sha-512"
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_sasl_mechanism == "SCRAM-SHA-512"
    (user,) = find(kafka_docs(), "KafkaUser")
    assert settings.kafka_sasl_username == user["metadata"]["name"]


def test_topics_follow_the_settings() -> None:
    docs = kafka_docs()
    (kafka,) = find(docs, "Kafka")
    settings = deployed_settings()
    topics = {t["spec"]["topicName"]: t for t in find(docs, "KafkaTopic")}
    expected = {settings.topic, settings.dlq_topic, settings.source_dlq_topic,
                settings.alerts_topic, settings.pairs_topic, settings.inbound_topic}
    assert set(topics) == expected
    assert {"social-events", "social-events.dlq", "social-events.source-dlq",
            "reciprocity-alerts", "reciprocity-pairs", "reciprocity-inbound"} == expected
    for name, topic in topics.items():
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
        assert topic["metadata"]["namespace"] == kafka["metadata"]["namespace"]
        # the worker refuses other counts on the input and internal topics
        assert topic["spec"]["partitions"] == settings.partitions, name
        assert topic["spec"]["replicas"] == 3, name
        assert topic["spec"]["config"]["min.insync.replicas"] == 2, name
        # offsets without holes: never compacted (docs/pipeline.md)
        assert "compact" not in str(topic["spec"]["config"].get("cleanup.policy", "delete"))


def acl_operations(user: dict[str, Any], kind: str, name: str) -> set[str]:
    """Operations the user may do on a resource, from literal and prefix rules."""
    ops: set[str] = set()
    for rule in user["spec"]["authorization"]["acls"]:
        resource = rule["resource"]
        if resource["type"] != kind:
            continue
        pattern = resource.get("patternType", "literal")
        if (pattern == "literal" and resource["name"] == name) or (
                pattern == "prefix" and name.startswith(resource["name"])):
            ops |= set(rule["operations"])
    return ops


def test_kafka_user_may_do_what_the_application_does() -> None:
    (user,) = find(kafka_docs(), "KafkaUser")
    settings = deployed_settings()
    assert user["spec"]["authentication"]["type"] == "scram-sha-512"
    assert user["spec"]["authorization"]["type"] == "simple"
    app = settings.app_id
    assert {"Read", "Describe"} <= acl_operations(user, "group", app)
    for topic in (settings.topic, settings.pairs_topic, settings.inbound_topic):
        assert {"Describe", "Read", "Write"} <= acl_operations(user, "topic", topic), topic
    for topic in (settings.dlq_topic, settings.source_dlq_topic, settings.alerts_topic):
        assert {"Describe", "Write"} <= acl_operations(user, "topic", topic), topic
    # Faust creates and uses its own topics: table changelogs and the assignor topic
    for table in ("event-id-batches", "pair-columns", "inbound-states"):
        changelog = f"{app}-{table}-changelog"
        assert {"Create", "Describe", "Read", "Write"} <= acl_operations(
            user, "topic", changelog), changelog
    leader = f"{app}-__assignor-__leader"
    assert {"Create", "Read", "Write"} <= acl_operations(user, "topic", leader)
    # and nothing beyond the application's names
    assert acl_operations(user, "topic", "other-topic") == set()
    assert acl_operations(user, "group", "other-group") == set()


# -- ClickHouse (Altinity) -----------------------------------------------------------------


def clickhouse_docs() -> list[dict[str, Any]]:
    return load(REFERENCE / "clickhouse-altinity.yaml")


def test_clickhouse_is_one_shard_two_replicas_with_a_keeper_quorum() -> None:
    docs = clickhouse_docs()
    (chi,) = find(docs, "ClickHouseInstallation")
    (chk,) = find(docs, "ClickHouseKeeperInstallation")
    (cluster,) = chi["spec"]["configuration"]["clusters"]
    assert cluster["layout"] == {"shardsCount": 1, "replicasCount": 2}
    (keeper,) = chk["spec"]["configuration"]["clusters"]
    assert keeper["layout"]["replicasCount"] == 3
    nodes = chi["spec"]["configuration"]["zookeeper"]["nodes"]
    assert [n["host"] for n in nodes] == [f"keeper-{chk['metadata']['name']}"]
    assert chk["metadata"]["namespace"] == chi["metadata"]["namespace"]


def test_clickhouse_passwords_come_from_the_secret() -> None:
    (chi,) = find(clickhouse_docs(), "ClickHouseInstallation")
    users = chi["spec"]["configuration"]["users"]
    secrets = {s["metadata"]["name"]: s for s in secret_template()}
    names = {key.split("/", 1)[0] for key in users}
    assert names == {"reciprocity", "grafana"}
    for name in names:
        assert f"{name}/password" not in users, "no inline password"
        namespace, secret, key = users[f"{name}/k8s_secret_password"].split("/")
        assert secrets[secret]["metadata"]["namespace"] == namespace == chi["metadata"]["namespace"]
        assert key in secrets[secret]["stringData"]
    profile = users["grafana/profile"]
    assert chi["spec"]["configuration"]["profiles"][f"{profile}/readonly"] in ("1", "2", 1, 2)


def clickhouse_service() -> str:
    (chi,) = find(clickhouse_docs(), "ClickHouseInstallation")
    return f"clickhouse-{chi['metadata']['name']}.{chi['metadata']['namespace']}.svc"


def test_clickhouse_url_template_points_at_the_installation() -> None:
    from urllib.parse import urlsplit

    url = one(secret_template(), "Secret", "reciprocity-secrets")["stringData"][
        "RECIPROCITY_CLICKHOUSE_URL"]
    parts = urlsplit(url)
    assert parts.scheme == "clickhouse"
    assert parts.hostname == clickhouse_service()
    assert parts.username == "reciprocity"
    assert parts.path == "/reciprocity"
    Settings(clickhouse_url=url)  # a valid setting


def chi_cluster() -> str:
    (chi,) = find(clickhouse_docs(), "ClickHouseInstallation")
    (cluster,) = chi["spec"]["configuration"]["clusters"]
    return str(cluster["name"])


def migrate_job() -> dict[str, Any]:
    return one(clickhouse_docs(), "Job", "reciprocity-db-migrate")


def test_schema_job_migrates_the_installations_cluster() -> None:
    from pipeline.cli import build_parser, cmd_db

    job = migrate_job()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == IMAGE, "the workers' image"
    args = build_parser().parse_args(container["args"])
    assert args.func is cmd_db and args.db == "migrate"
    assert args.cluster == chi_cluster()
    assert args.store is None and args.clickhouse is None, "the URL comes from the Secret"
    # the workers' ClickHouse URL, from their Secret (the Job is in their namespace)
    assert job["metadata"]["namespace"] == worker()["metadata"]["namespace"] == NAMESPACE
    env = container_env(container)
    assert set(env) == {"RECIPROCITY_CLICKHOUSE_URL"}
    ref = env["RECIPROCITY_CLICKHOUSE_URL"]["valueFrom"]["secretKeyRef"]
    worker_secrets = {s["secretRef"]["name"] for s in worker_container()["envFrom"]
                      if "secretRef" in s}
    assert ref["name"] in worker_secrets
    assert ref["key"] in one(secret_template(), "Secret", ref["name"])["stringData"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
    assert job["spec"]["backoffLimit"] >= 5, "retries until the installation answers"


def test_workers_migrate_in_cluster_mode_on_the_same_cluster() -> None:
    """Workers apply the migrations on start: in the single-server form they would
    create unreplicated tables on whichever replica they reach."""
    assert deployed_settings().clickhouse_cluster == chi_cluster()
    env = effective_env(worker_container(), docs_of("config.yaml"))
    assert env["RECIPROCITY_CLICKHOUSE_CLUSTER"] == chi_cluster()


def test_committed_cluster_sql_is_for_the_installations_cluster() -> None:
    """deploy/clickhouse/cluster/ shows what the Job applies on this installation."""
    sql = "".join(p.read_text() for p in sorted((ROOT / "deploy" / "clickhouse" / "cluster")
                                                 .glob("*.sql")))
    clusters = set(re.findall(r"ON CLUSTER (\w+)", sql))
    assert clusters == {chi_cluster()}


# -- Grafana -------------------------------------------------------------------------------


def test_grafana_datasource_reads_clickhouse_with_the_read_only_user() -> None:
    (cm,) = find(load(REFERENCE / "grafana.yaml"), "ConfigMap")
    (content,) = cm["data"].values()
    provisioning = yaml.safe_load(content)
    assert provisioning["apiVersion"] == 1
    (source,) = provisioning["datasources"]
    assert source["type"] == "grafana-clickhouse-datasource"
    data = source["jsonData"]
    assert data["host"] == clickhouse_service()
    assert data["port"] == 9000
    assert data["protocol"] == "native"
    assert data["username"] == "grafana"
    assert data["defaultDatabase"] == "reciprocity"
    (variable,) = re.fullmatch(r"\$\{(\w+)\}", source["secureJsonData"]["password"]).groups()
    grafana_secret = one(secret_template(), "Secret", "reciprocity-grafana-clickhouse")
    assert variable in grafana_secret["stringData"]
    assert grafana_secret["metadata"]["namespace"] == cm["metadata"]["namespace"]
