"""helm/conveyor: `helm lint`, and its rendered manifests against the Kubernetes schemas.

No cluster here. Helm runs as a library: `helm lint` through helm-sdkpy (Helm's Go
library behind cffi, in a child process), and rendering (`helm template`, which helm-sdkpy does not
offer) plus a lint that takes a values file through helm-python-sdk (the same Go
library behind ctypes). Each manifest is validated with kubernetes-validate, strictly
(unknown fields are errors), for the oldest Kubernetes the chart supports and the newest
the package knows, for the default values and for ci/gpu-values.yaml (GPU workers,
Ingress with TLS, HPA).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helm_python.chart import Chart
from helm_python.chart import lint as helm_lint
from helm_python.errors import HelmValuesError

from conveyor.cli import build_parser

from .conftest import CHART, load_yaml

RELEASE = "prod"
NAMESPACE = "llm"
KUBE_VERSIONS = ("1.25.0", kubernetes_validate.utils.latest_version())
INFO, WARNING = 1, 2  # Helm's lint severities (3 is an error)

VALUES = {
    "default": None,
    "gpu": load_yaml(CHART / "ci" / "gpu-values.yaml"),
}


def render(values: dict[str, Any] | None) -> list[dict[str, Any]]:
    rendered = Chart.load(CHART).render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return [
        doc
        for path, text in sorted(rendered.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


@pytest.fixture(scope="module", params=sorted(VALUES))
def manifests(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(VALUES[request.param])


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["spec"]["template"]["spec"]["containers"]


HELM_SDKPY_LINT = """
import asyncio, json, sys
import helm_sdkpy
report = asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(sys.argv[1]))
print(json.dumps(report, default=str))
"""


def test_helm_lint_with_helm_sdkpy() -> None:
    """`helm lint helm/conveyor` (default values): nothing above INFO.

    In a child process: helm-sdkpy and helm-python-sdk each load their own Go runtime,
    and two Go runtimes are better not mixed in one process.
    """
    run = subprocess.run(
        [sys.executable, "-c", HELM_SDKPY_LINT, str(CHART)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(run.stdout)
    assert report["TotalChartsLinted"] == 1
    assert not report["Errors"]
    assert [m for m in report["Messages"] if m["Severity"] > INFO] == []


@pytest.mark.parametrize("name", sorted(VALUES))
def test_helm_lint_strict_with_values(name: str) -> None:
    """`helm lint --strict -f VALUES`: warnings count as failures too."""
    report = helm_lint(CHART, VALUES[name], strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= WARNING] == []


def test_manifests_match_the_kubernetes_schemas(
    manifests: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = manifests
    for doc in docs:
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_validation_is_not_vacuous(manifests: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = manifests
    deployment = copy.deepcopy(next(iter(by_kind(docs, "Deployment").values())))
    containers(deployment)[0]["livenessProbe"]["httpGet"]["paht"] = "/health"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


def test_the_release_has_every_part(manifests: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = manifests
    base = f"{RELEASE}-conveyor"
    assert set(by_kind(docs, "Deployment")) == {
        f"{base}-api",
        f"{base}-worker",
        f"{base}-batch-worker",
    }
    assert set(by_kind(docs, "Service")) == {f"{base}-api"}
    assert set(by_kind(docs, "ConfigMap")) == {base}
    assert set(by_kind(docs, "Secret")) == {base, f"{base}-migrate"}
    assert set(by_kind(docs, "ServiceAccount")) == {base}
    assert set(by_kind(docs, "PersistentVolumeClaim")) == {f"{base}-files"}
    assert f"{base}-api" in by_kind(docs, "PodDisruptionBudget")
    gpu = name == "gpu"
    assert set(by_kind(docs, "Ingress")) == ({f"{base}-api"} if gpu else set())
    assert set(by_kind(docs, "HorizontalPodAutoscaler")) == ({f"{base}-api"} if gpu else set())


def test_every_container_runs_a_real_conveyor_command(
    manifests: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = manifests
    roles = set()
    for doc in [*by_kind(docs, "Deployment").values(), *by_kind(docs, "Job").values()]:
        for container in containers(doc):
            args = build_parser().parse_args(container["args"])
            roles.add(args.command)
    assert roles == {"api", "worker", "batch-worker", "db"}


def test_migration_job_is_a_pre_install_and_pre_upgrade_hook(
    manifests: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = manifests
    (job,) = by_kind(docs, "Job").values()
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert containers(job)[0]["args"] == ["db", "upgrade"]
    # Hooks run before the release's Secret exists: the Job's own is an earlier hook.
    secret_name = containers(job)[0]["env"][0]["valueFrom"]["secretKeyRef"]["name"]
    secret = by_kind(docs, "Secret")[secret_name]
    assert secret["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        annotations["helm.sh/hook-weight"]
    )


def test_api_probes_and_settings(manifests: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = manifests
    (api,) = containers(by_kind(docs, "Deployment")[f"{RELEASE}-conveyor-api"])
    # Readiness is the pod's own (Redis, not draining), not every model's workers.
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Liveness must not depend on workers or Redis (see values.yaml).
    assert api["livenessProbe"]["httpGet"]["path"] == "/version"
    assert {"configMapRef": {"name": f"{RELEASE}-conveyor"}} in api["envFrom"]
    assert {"secretRef": {"name": f"{RELEASE}-conveyor"}} in api["envFrom"]
    mounts = {m["mountPath"]: m["name"] for m in api["volumeMounts"]}
    assert mounts["/var/lib/conveyor/files"] == "files"
    config = by_kind(docs, "ConfigMap")[f"{RELEASE}-conveyor"]["data"]
    assert config["CONVEYOR_BATCH_API_URL"] == f"http://{RELEASE}-conveyor-api:8000"
    secret = by_kind(docs, "Secret")[f"{RELEASE}-conveyor"]["data"]
    assert set(secret) == {
        "CONVEYOR_REDIS_URL",
        "CONVEYOR_DATABASE_URL",
        "CONVEYOR_ADMIN_KEY",
        "CONVEYOR_SERVICE_KEY",
    }


def test_config_values_reach_conveyor_as_it_reads_them() -> None:
    """Helm reads numbers as floats: a large one must not become 1.073741824e+09, which
    Settings refuses (every pod would crash-loop)."""
    config = {
        "CONVEYOR_MAX_UPLOAD_BYTES": 1073741824,
        "CONVEYOR_GPU_MEMORY_UTILIZATION": 0.85,
        "CONVEYOR_ENFORCE_EAGER": True,
        "CONVEYOR_SERVED_MODEL_NAME": "qwen3",
    }
    docs = render({"config": config})
    data = by_kind(docs, "ConfigMap")[f"{RELEASE}-conveyor"]["data"]
    assert {name: data[name] for name in config} == {
        "CONVEYOR_MAX_UPLOAD_BYTES": "1073741824",
        "CONVEYOR_GPU_MEMORY_UTILIZATION": "0.85",
        "CONVEYOR_ENFORCE_EAGER": "true",
        "CONVEYOR_SERVED_MODEL_NAME": "qwen3",
    }
    from conveyor.settings import Settings

    read = Settings(**{k.removeprefix("CONVEYOR_").lower(): v for k, v in data.items()})
    assert read.max_upload_bytes == 1073741824


def test_gpu_values_place_workers_on_gpus() -> None:
    docs = render(VALUES["gpu"])
    worker = by_kind(docs, "Deployment")[f"{RELEASE}-conveyor-worker"]
    pod = worker["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"] == "registry.example.com/conveyor:0.1.0-cuda"
    assert {"name": "CONVEYOR_DEVICE", "value": "cuda"} in container["env"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    # GPUs are not oversubscribed during a rollout.
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    api = by_kind(docs, "Deployment")[f"{RELEASE}-conveyor-api"]
    assert "replicas" not in api["spec"]  # the HPA owns it
    assert containers(api)[0]["image"] == "registry.example.com/conveyor:0.1.0"
    (ingress,) = by_kind(docs, "Ingress").values()
    assert ingress["spec"]["tls"][0]["hosts"] == ["llm.example.com"]


def test_the_secret_checksum_changes_only_with_the_values_put_in_it() -> None:
    """It hashed a fresh render of the Secret, whose generated keys differ every time: the
    first upgrade restarted every pod, GPU workers included, with nothing changed."""

    def checksums(values: dict[str, Any] | None) -> set[str]:
        return {
            deployment["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]
            for deployment in by_kind(render(values), "Deployment").values()
        }

    (first,) = checksums(None)  # one for every role
    assert checksums(None) == {first}  # a render later: keys generated anew, same sum
    assert checksums({"auth": {"adminKey": "set-by-hand"}}) != {first}


def test_existing_secret_replaces_the_charts() -> None:
    docs = render({"auth": {"existingSecret": "conveyor-prod"}})
    assert by_kind(docs, "Secret") == {}
    for doc in by_kind(docs, "Deployment").values():
        assert {"secretRef": {"name": "conveyor-prod"}} in containers(doc)[0]["envFrom"]
    (job,) = by_kind(docs, "Job").values()
    assert containers(job)[0]["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "conveyor-prod"


@pytest.mark.parametrize(
    "values",
    [
        {"api": {"replicaCount": "three"}},
        {"externalDatabase": {"url": "sqlite:///conveyor.db"}},
        {"config": {"MAX_NUM_SEQS": "8"}},
        {"workers": {"replicaCount": 2}},
    ],
    ids=["type", "sqlite", "config-name", "unknown-key"],
)
def test_values_schema_rejects_mistakes(values: dict[str, Any]) -> None:
    with pytest.raises(HelmValuesError):
        Chart.load(CHART).validate_schema(values)


def test_a_worker_model_other_than_the_baked_one_gets_a_writable_cache() -> None:
    """The root filesystem is read-only: a .gguf is converted, a hub id downloaded, under
    the data dir (engine/loader.py), so those folders need a volume; the baked model's
    folder must stay visible when no model is given."""
    data_dir = "/var/lib/conveyor"
    worker_name = f"{RELEASE}-conveyor-worker"
    for model, cached in (("", False), ("/models/llama.gguf", True)):
        docs = render({"worker": {"model": model}})
        worker = by_kind(docs, "Deployment")[worker_name]
        (container,) = containers(worker)
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert (f"{data_dir}/models" in mounts) == cached, model
        assert f"{data_dir}/hub" in mounts  # hub downloads (a --tokenizer) always may
        assert not any(m.startswith(f"{data_dir}/models") for m in mounts) or cached
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(worker, version, strict=True)


def test_workers_are_ready_only_once_they_beat() -> None:
    """A rollout (maxSurge 0) and the PDB count a worker only once its model is loaded:
    every probe runs the image's `conveyor-healthcheck --ready` (the beat file, never
    Redis), with a start-up allowance long enough for a large model."""
    docs = render(None)
    worker = by_kind(docs, "Deployment")[f"{RELEASE}-conveyor-worker"]
    (container,) = containers(worker)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"] == ["conveyor-healthcheck", "--ready"]
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800
    assert worker["spec"]["minReadySeconds"] > 0


def test_the_model_cache_can_be_sized_and_forced() -> None:
    """A model named another way than worker.model (extraArgs) still gets a writable
    models folder when asked, and hub downloads always have one."""
    data_dir = "/var/lib/conveyor"
    values = {
        "worker": {
            "extraArgs": ["--model", "/m/x.gguf"],
            "modelCache": {"enabled": True, "sizeLimit": "40Gi"},
        }
    }
    worker = by_kind(render(values), "Deployment")[f"{RELEASE}-conveyor-worker"]
    (container,) = containers(worker)
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {f"{data_dir}/models", f"{data_dir}/hub"} <= mounts
    (cache,) = [
        v for v in worker["spec"]["template"]["spec"]["volumes"] if v["name"] == "model-cache"
    ]
    assert cache["emptyDir"] == {"sizeLimit": "40Gi"}
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(worker, version, strict=True)


def test_extra_workers_serve_more_models_from_one_release() -> None:
    """One API for several models: each extraWorkers entry is a worker Deployment of its
    own (its keys over `worker`'s), with a selector and a PDB no other Deployment shares."""
    values = {
        "worker": {"resources": {"limits": {"memory": "8Gi"}}, "replicaCount": 2},
        "extraWorkers": [
            {"name": "embed", "model": "/models/bge", "runner": "pooling"},
            {"name": "qwen", "model": "/models/qwen.gguf", "replicaCount": 3},
        ],
    }
    docs = render(values)
    deployments = by_kind(docs, "Deployment")
    workers = {
        name: d for name, d in deployments.items() if "-worker" in name and "batch" not in name
    }
    assert set(workers) == {
        f"{RELEASE}-conveyor-worker",
        f"{RELEASE}-conveyor-worker-embed",
        f"{RELEASE}-conveyor-worker-qwen",
    }
    embed = workers[f"{RELEASE}-conveyor-worker-embed"]
    (container,) = containers(embed)
    assert container["args"][:4] == ["worker", "/models/bge", "--runner", "pooling"]
    assert container["resources"]["limits"]["memory"] == "8Gi"  # worker's, inherited
    assert embed["spec"]["replicas"] == 2
    assert workers[f"{RELEASE}-conveyor-worker-qwen"]["spec"]["replicas"] == 3
    selectors = [
        json.dumps(d["spec"]["selector"]["matchLabels"], sort_keys=True)
        for d in deployments.values()
    ]
    assert len(set(selectors)) == len(selectors)
    budgets = by_kind(docs, "PodDisruptionBudget")
    for name, deployment in workers.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        budget = budgets[name]["spec"]["selector"]["matchLabels"]
        assert budget.items() <= labels.items()
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(deployment, version, strict=True)
    with pytest.raises(HelmValuesError):
        Chart.load(CHART).validate_schema({"extraWorkers": [{"name": "Not_DNS"}]})


def test_an_extra_worker_replaces_keys_whole_and_refuses_unknown_ones() -> None:
    """A CPU embedding worker beside GPU workers must not inherit their GPU limit (a deep
    merge gave it one), and a mistyped key must fail, not vanish."""
    gpu = {"limits": {"nvidia.com/gpu": 1, "memory": "24Gi"}, "requests": {"cpu": "4"}}
    cpu = {"limits": {"memory": "4Gi"}}
    values = {
        "worker": {"resources": gpu},
        "extraWorkers": [{"name": "embed", "model": "/m/bge", "resources": cpu}],
    }
    worker = by_kind(render(values), "Deployment")[f"{RELEASE}-conveyor-worker-embed"]
    (container,) = containers(worker)
    assert container["resources"] == cpu
    with pytest.raises(Exception, match="unknown key"):
        render({"extraWorkers": [{"name": "embed", "replicas": 2}]})
    # Other maps merge key by key: a longer start-up keeps the probe's command, and a
    # wider disruption budget keeps the budget on.
    values = {
        "extraWorkers": [
            {
                "name": "big",
                "startupProbe": {"failureThreshold": 360},
                "podDisruptionBudget": {"maxUnavailable": 2},
            }
        ]
    }
    docs = render(values)
    big = by_kind(docs, "Deployment")[f"{RELEASE}-conveyor-worker-big"]
    (container,) = containers(big)
    assert container["startupProbe"]["failureThreshold"] == 360
    assert container["startupProbe"]["exec"]["command"] == ["conveyor-healthcheck", "--ready"]
    budget = by_kind(docs, "PodDisruptionBudget")[f"{RELEASE}-conveyor-worker-big"]
    assert budget["spec"]["maxUnavailable"] == 2


def test_lora_modules_become_the_workers_flag() -> None:
    adapters = [{"name": "sql", "path": "/adapters/sql"}, {"name": "poet", "path": "/a/poet"}]
    docs = render({"worker": {"loraModules": adapters}})
    worker = by_kind(docs, "Deployment")[f"{RELEASE}-conveyor-worker"]
    (container,) = containers(worker)
    assert container["args"] == ["worker", "--lora-modules", "sql=/adapters/sql", "poet=/a/poet"]
    (container,) = containers(by_kind(render(None), "Deployment")[f"{RELEASE}-conveyor-worker"])
    assert "--lora-modules" not in container["args"]
    with pytest.raises(HelmValuesError):
        Chart.load(CHART).validate_schema(
            {"worker": {"loraModules": [{"name": "x y", "path": "/a"}]}}
        )


def test_an_embedding_worker_gets_the_runner_and_pooler_flags() -> None:
    values = {"worker": {"runner": "pooling", "poolerConfig": {"pooling_type": "MEAN"}}}
    worker = by_kind(render(values), "Deployment")[f"{RELEASE}-conveyor-worker"]
    (container,) = containers(worker)
    assert container["args"] == [
        "worker",
        "--runner",
        "pooling",
        "--pooler-config",
        '{"pooling_type":"MEAN"}',
    ]
    with pytest.raises(HelmValuesError):
        Chart.load(CHART).validate_schema({"worker": {"runner": "embed"}})
