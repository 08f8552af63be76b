"""deploy/: manifests that a cluster would accept, wired to settings the service really has.

Built-in kinds are validated offline against the Kubernetes OpenAPI schemas bundled in kubernetes-validate
(strict: unknown fields fail, so a misspelt ``livenesProbe`` is caught rather than silently ignored). KEDA
objects are custom resources with no bundled schema, so their structure is checked by hand. The rest checks
the joints between files, where drift hides: env names vs ``Settings``, the shutdown grace vs the pod's
grace period, probes vs the health server's routes, the scaler vs the consumer group and topic.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel

from consumer.ops.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
#: Oldest Kubernetes minor we support (policy/v1 PDB, unhealthyPodEvictionPolicy GA in 1.31 but accepted
#: since 1.27) and the newest whose schemas kubernetes-validate bundles.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
BUILT_IN_GROUPS = ("v1", "apps/v1", "policy/v1", "autoscaling/v2", "batch/v1")


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


DOCS = _documents()


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in DOCS if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


DEPLOYMENT = _one("Deployment", "enrich")
POD = DEPLOYMENT["spec"]["template"]["spec"]
CONTAINER = POD["containers"][0]
CONFIG = _one("ConfigMap", "enrich-config")["data"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    ("filename", "doc"),
    [(f, d) for f, d in DOCS if d["apiVersion"] in BUILT_IN_GROUPS],
    ids=lambda v: v if isinstance(v, str) else f"{v['kind']}/{v['metadata']['name']}",
)
def test_built_in_manifests_validate_offline(filename: str, doc: dict[str, Any], version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{filename}: {'.'.join(map(str, exc.path))}: {exc.message}")


def test_every_document_is_a_kind_we_check() -> None:
    kinds = {(d["apiVersion"], d["kind"]) for _, d in DOCS}
    custom = {k for k in kinds if k[0] not in BUILT_IN_GROUPS}
    assert custom == {("keda.sh/v1alpha1", "ScaledObject"), ("keda.sh/v1alpha1", "TriggerAuthentication")}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "Secret"} <= {k for _, k in kinds}


def test_kustomization_lists_everything_but_the_example_secret_and_the_replay_job() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    resources = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert resources == on_disk - {"secret.example.yaml", "replay-job.yaml"}  # the Job: created per rollout
    assert _one("Secret")["metadata"]["name"] == "enrich-kafka"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds() -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    kinds = [d["kind"] for d in yaml.safe_load_all(built) if d]
    assert sorted(kinds) == sorted(
        [
            "ConfigMap",
            "PersistentVolumeClaim",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "TriggerAuthentication",
            "ScaledObject",
        ]
    )


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


def _container_env_names() -> set[str]:
    return {e["name"] for e in CONTAINER.get("env", [])}


def test_every_enrich_env_var_is_a_settings_field() -> None:
    names = set(CONFIG) | {n for n in _container_env_names() if n.startswith("ENRICH_")}
    assert all(n.startswith("ENRICH_") for n in CONFIG), "the ConfigMap is for ENRICH_* settings only"
    unknown = sorted(n for n in names if not _settings_field_exists(n))
    assert unknown == [], f"not fields of consumer.ops.settings.Settings: {unknown}"


def test_the_field_check_rejects_typos() -> None:
    assert _settings_field_exists("ENRICH_FETCH__TOTAL_TIMEOUT_S")
    assert not _settings_field_exists("ENRICH_FETCH__TOTAL_TIMEOUT")
    assert not _settings_field_exists("ENRICH_INPUT_TOPIC__X")
    assert not _settings_field_exists("ENRICH_SHUTDOWN_GRACE")


def test_configmap_and_secret_load_into_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The values parse (types, ranges, cross-field rules), not only the names."""
    for key in list(os.environ):
        if key.startswith("ENRICH_"):
            monkeypatch.delenv(key)
    for key, value in CONFIG.items():
        monkeypatch.setenv(key, value)
    secret = _one("Secret", "enrich-kafka")["stringData"]
    for env in CONTAINER["env"]:
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == "enrich-kafka" and ref["key"] in secret
            monkeypatch.setenv(env["name"], secret[ref["key"]])
    settings = Settings()
    assert settings.security_protocol == "SASL_SSL"
    assert settings.sasl_password is not None and settings.sasl_password.get_secret_value() == "change-me"
    assert str(settings.bundle) == "/models/bundle"
    assert settings.http_port == 8080


def test_sasl_password_comes_from_a_secret_not_the_configmap() -> None:
    assert not any("PASSWORD" in k or "SECRET" in k for k in CONFIG)
    env = {e["name"]: e for e in CONTAINER["env"]}
    assert env["ENRICH_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "enrich-kafka"
    assert "value" not in env["ENRICH_SASL_PASSWORD"]
    assert CONTAINER["envFrom"] == [{"configMapRef": {"name": "enrich-config"}}]


# --- pod behaviour -------------------------------------------------------------------------------------


def test_probes_point_at_the_health_endpoints() -> None:
    port_names = {p["name"]: p["containerPort"] for p in CONTAINER["ports"]}
    assert port_names == {"metrics": 8080} and CONFIG["ENRICH_HTTP_PORT"] == "8080"
    expected = {"startupProbe": "/livez", "livenessProbe": "/livez", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        http = CONTAINER[probe]["httpGet"]
        assert (http["path"], http["port"]) == (path, "metrics"), probe
    routes = set(re.findall(r'web\.get\("(/[a-z]+)"', (ROOT / "consumer" / "ops" / "health.py").read_text()))
    assert {"/livez", "/readyz", "/metrics"} <= routes


def test_liveness_allows_for_the_heartbeat_timeout() -> None:
    """Kubernetes must not kill a pod before the service itself would call its loop stuck."""
    live = CONTAINER["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= float(CONFIG["ENRICH_LIVENESS_TIMEOUT_S"])


def test_shutdown_fits_in_the_grace_period() -> None:
    assert POD["terminationGracePeriodSeconds"] == 40
    assert float(CONFIG["ENRICH_SHUTDOWN_GRACE_S"]) == 30
    assert float(CONFIG["ENRICH_SHUTDOWN_GRACE_S"]) + 5 <= POD["terminationGracePeriodSeconds"]


def test_prometheus_scrape_annotations() -> None:
    annotations = DEPLOYMENT["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8080",
        "prometheus.io/path": "/metrics",
    }
    service = _one("Service", "enrich-metrics")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"] == DEPLOYMENT["spec"]["selector"]["matchLabels"]
    assert _one("PodDisruptionBudget")["spec"]["selector"] == DEPLOYMENT["spec"]["selector"]


def test_pod_is_locked_down() -> None:
    assert POD["securityContext"]["runAsNonRoot"] is True
    assert POD["securityContext"]["runAsUser"] != 0
    sc = CONTAINER["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m for m in CONTAINER["volumeMounts"]}
    volumes = {v["name"]: v for v in POD["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    bundle = mounts[CONFIG["ENRICH_BUNDLE"]]
    assert bundle["readOnly"] is True
    assert (
        volumes[bundle["name"]]["persistentVolumeClaim"]["claimName"]
        == _one("PersistentVolumeClaim")["metadata"]["name"]
    )
    for key in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(CONTAINER["resources"][key])


def test_rollout_never_surges_past_the_partitions() -> None:
    rolling = DEPLOYMENT["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxSurge"] == 0 and rolling["maxUnavailable"] >= 1


# --- KEDA ----------------------------------------------------------------------------------------------


def test_keda_scaled_object_structure() -> None:
    scaled = _one("ScaledObject", "enrich")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == DEPLOYMENT["metadata"]["name"]
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    partitions = int(scaled["metadata"]["annotations"]["enrich/input-topic-partitions"])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
    [trigger] = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert int(meta["lagThreshold"]) > 0
    assert all(isinstance(v, str) for v in meta.values()), "KEDA trigger metadata values must be strings"
    assert meta.get("allowIdleConsumers", "false") == "false"
    # The scaler must watch the group and topic the pods actually consume.
    assert meta["bootstrapServers"] == CONFIG["ENRICH_BOOTSTRAP_SERVERS"]
    assert meta["consumerGroup"] == CONFIG["ENRICH_GROUP_ID"]
    assert meta["topic"] == CONFIG["ENRICH_INPUT_TOPIC"]
    keda_sasl = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
    assert meta["sasl"] == keda_sasl[CONFIG["ENRICH_SASL_MECHANISM"]]
    assert (meta.get("tls") == "enable") == CONFIG["ENRICH_SECURITY_PROTOCOL"].endswith("SSL")


def test_keda_authentication_reads_the_same_secret() -> None:
    scaled = _one("ScaledObject", "enrich")
    auth = _one("TriggerAuthentication", scaled["spec"]["triggers"][0]["authenticationRef"]["name"])
    assert auth["apiVersion"] == "keda.sh/v1alpha1"
    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    secret = _one("Secret", "enrich-kafka")["stringData"]
    assert set(refs) == {"username", "password"}
    assert all(r["name"] == "enrich-kafka" and r["key"] in secret for r in refs.values())


# --- image ---------------------------------------------------------------------------------------------


def test_dockerfile_contract() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cpu$", text, re.M)
    assert 'ENTRYPOINT ["enrich"]' in text and 'CMD ["run"]' in text
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and all(u.split(":")[0] == str(POD["securityContext"]["runAsUser"]) for u in users)
    assert "ENRICH_BUNDLE=/models/bundle" in text
    stages = re.findall(r"^FROM \S+(?: AS (\S+))?$", text, re.M)
    assert stages[-1] == "", "the default (last) stage is the image without a baked bundle"
    assert "bundled" in stages
    # Allow-list build context: .venv, .git and datasets must never be sent to the builder.
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
    assert next(line for line in ignore if line and not line.startswith("#")) == "**"
    for copied in re.findall(r"^COPY (?!--from)(?:--\S+ )*(\S+) ", text, re.M):
        path = copied.rstrip("/")
        if not path.startswith("$"):
            assert (ROOT / path).exists(), f"Dockerfile copies missing {path}"


# --- replay Job ----------------------------------------------------------------------------------------


def test_replay_job_runs_enrich_replay_as_its_own_group_and_fails_fast_on_bad_config() -> None:
    import typer

    from consumer.cli import app

    job = _one("Job", "enrich-replay")
    spec = job["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    assert args[0] == "replay" and "--from-beginning" in args
    assert not any(a.startswith(("--replay-group", "--group-id")) for a in args)  # <group>-replay-<version>
    command = typer.main.get_command(app).commands["replay"]  # type: ignore[attr-defined]
    flags = {opt for param in command.params for opt in param.opts}
    for arg in args[1:]:
        assert arg.split("=")[0] in flags, arg  # every flag is one the command has
    options = dict(a.removeprefix("--").split("=", 1) for a in args[1:] if "=" in a)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    bundle = mounts[options["bundle"]]
    assert bundle["readOnly"] is True
    assert volumes[bundle["name"]]["persistentVolumeClaim"]["claimName"] != _one("PersistentVolumeClaim")[
        "metadata"]["name"]  # the new bundle, next to the serving one
    assert options["output-topic"] != CONFIG["ENRICH_OUTPUT_TOPIC"]  # as shipped: a shadow replay
    assert spec["parallelism"] == 1 and pod["restartPolicy"] == "Never"
    fail = [r for r in spec["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert fail[0]["onExitCodes"]["values"] == [2, 3] and fail[0]["onExitCodes"]["containerName"] == container["name"]
    labels = spec["template"]["metadata"]["labels"]
    selector = DEPLOYMENT["spec"]["selector"]["matchLabels"]
    assert not all(labels.get(k) == v for k, v in selector.items())  # not counted by the PDB / Service
    assert container["envFrom"] == CONTAINER["envFrom"]
    assert all(_settings_field_exists(e["name"]) for e in container["env"] if e["name"].startswith("ENRICH_"))
    assert pod["terminationGracePeriodSeconds"] >= float(CONFIG["ENRICH_SHUTDOWN_GRACE_S"]) + 5
    assert container["securityContext"] == CONTAINER["securityContext"]
    assert pod["securityContext"] == POD["securityContext"]
