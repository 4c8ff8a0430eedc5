"""The Helm chart, linted and rendered offline by Helm's own code, every manifest validated
against Kubernetes' schemas, and what pods get asserted (security, probes, labels, GPUs).

No cluster runs here: helm-python-sdk renders with Helm's Go library (no helm binary, no
cluster; ``lookup`` returns nothing), and kubernetes-validate checks each object against the
OpenAPI schemas of one Kubernetes release, strictly (an unknown field is an error).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.deploy.chart import CHART, container, kind, render
from tests.deploy.cli import unknown_environment, unknown_options

VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
KUBERNETES = "1.33"  # a current release; the chart asks for >= 1.27


def values_of(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def pods(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    workloads = [o for o in objects if o["kind"] in ("StatefulSet", "Deployment")]
    return [o["spec"]["template"]["spec"] for o in workloads]


def test_the_chart_lints_clean() -> None:
    report = helm.lint(CHART, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values", VALUES, ids=[p.stem for p in VALUES])
def test_every_manifest_is_valid_kubernetes(values: Path) -> None:
    objects = render(values_of(values))
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


@pytest.mark.parametrize("values", VALUES, ids=[p.stem for p in VALUES])
def test_every_pod_runs_unprivileged_on_a_read_only_root(values: Path) -> None:
    for pod in pods(render(values_of(values))):
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for each in pod["containers"] + pod.get("initContainers", []):
            context = each["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
        mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert {"/data", "/tmp"} <= mounts  # the only writable places


def test_the_hub_serves_one_address_with_its_data_dir_on_a_volume() -> None:
    objects = render({})
    (statefulset,) = kind(objects, "StatefulSet")
    assert statefulset["spec"]["replicas"] == 1
    claim = statefulset["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data"
    hub = container(objects, "StatefulSet")
    assert hub["args"][:4] == [
        "hub",
        "--data-dir=/data",
        "--address=0.0.0.0:9092",
        "--metrics-address=0.0.0.0:9464",
    ]
    assert "--hostname=pol-pollinate-hub.fl.svc" in hub["args"]
    assert "--insecure" not in hub["args"]
    assert hub["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert hub["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    (service,) = kind(objects, "Service")
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports == {"hub": 9092, "metrics": 9464}
    (policy, *_) = kind(objects, "NetworkPolicy")
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {53}  # the hub never dials a node


def test_an_ingress_passes_tls_through_to_the_hub_whose_certificate_names_its_host() -> None:
    objects = render(values_of(CHART / "ci" / "full-values.yaml"))
    (ingress,) = kind(objects, "Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/ssl-passthrough"] == "true"
    assert ingress["spec"]["rules"][0]["host"] == "hub.example.com"
    hub = container(objects, "StatefulSet")
    assert "--hostname=hub.example.com" in hub["args"]
    assert "--hostname=fl.example.org" in hub["args"]
    assert "--dashboard-address=0.0.0.0:8080" in hub["args"]
    assert hub["image"] == "registry.example.com/pollinate:0.1.0-torch"
    init = kind(objects, "StatefulSet")[0]["spec"]["template"]["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["seed-ca"]


def test_kubernetes_labels_and_gpu_requests_become_node_labels_and_resources() -> None:
    objects = render(values_of(CHART / "ci" / "site-values.yaml"))
    assert kind(objects, "StatefulSet") == []  # a site without a hub of its own
    deployments = {d["metadata"]["name"]: d for d in kind(objects, "Deployment")}
    assert set(deployments) == {"pol-pollinate-node-gpu", "pol-pollinate-node-cpu"}
    gpu = deployments["pol-pollinate-node-gpu"]
    node = gpu["spec"]["template"]["spec"]["containers"][0]
    args = node["args"]
    assert args[:2] == ["node", "--hub=hub.example.com:9092"]
    assert "--label=region=eu" in args and "--label=site=berlin" in args
    assert "--resources=gpus=2" in args
    assert "--node-config=num-partitions=4" in args
    assert not any(a.startswith("--token") for a in args)  # never in the process list
    (token,) = node["env"]
    assert token["name"] == "POLLINATE_TOKEN"
    assert token["valueFrom"]["secretKeyRef"] == {"name": "berlin-gpu-token", "key": "token"}
    assert node["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert gpu["spec"]["template"]["metadata"]["labels"]["pollinate.dev/region"] == "eu"
    assert node["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert node["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    cpu_args = deployments["pol-pollinate-node-cpu"]["spec"]["template"]["spec"]["containers"][0]
    assert not any(a.startswith("--resources") for a in cpu_args["args"])
    assert gpu["spec"]["replicas"] == 2
    assert deployments["pol-pollinate-node-cpu"]["spec"]["replicas"] == 1  # the default
    (policy,) = kind(objects, "NetworkPolicy")
    assert policy["spec"]["ingress"] == []  # nothing dials a node


def test_insecure_mode_passes_no_token() -> None:
    objects = render(values_of(CHART / "ci" / "insecure-values.yaml"))
    for name in ("StatefulSet", "Deployment"):
        each = container(objects, name)
        assert "--insecure" in each["args"]
        assert "env" not in each


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"hub": {"replicas": 2}}, "/hub/replicas"),
        ({"hub": {"replica": 1}}, "replica"),
        ({"nodes": {"pools": [{"name": "Bad_Name"}]}}, "/nodes/pools/0/name"),
        ({"nodes": {"pools": [{"name": "a", "labels": {"no spaces": "x"}}]}}, "no spaces"),
        ({"nodes": {"hub": {"address": "no-port"}}}, "/nodes/hub/address"),
    ],
)
def test_the_values_schema_refuses_mistakes(values: dict[str, Any], error: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=error):
        render(values)


def test_an_ingress_without_a_host_is_refused() -> None:
    with pytest.raises(helm.HelmRenderError, match="hub.ingress.host"):
        render({"hub": {"ingress": {"enabled": True}}})


@pytest.mark.parametrize("values", VALUES, ids=[p.stem for p in VALUES])
def test_the_chart_passes_only_options_the_cli_has(values: Path) -> None:
    objects = render(values_of(values))
    for kind_name in ("StatefulSet", "Deployment"):
        for index in range(len(kind(objects, kind_name))):
            each = container(objects, kind_name, index)
            assert unknown_options(each["args"]) == set(), each["args"]
            assert unknown_environment(each["args"], each.get("env", [])) == set()
