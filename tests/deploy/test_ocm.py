"""The Open Cluster Management add-on (deploy/ocm/): every manifest valid against the OCM
CRDs (vendored in ocm-crds/, source and version in its README) or Kubernetes' own schemas,
and every reference between them lining up, as the add-on manager would follow them.

No OCM hub runs here: what is checked is what the API server would check on apply (the
schemas) and what the add-on manager would look up (names, namespaces, template variables).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.cli import unknown_environment, unknown_options

ROOT = Path(__file__).resolve().parents[2]
OCM = ROOT / "deploy" / "ocm"
CRDS = Path(__file__).resolve().parent / "ocm-crds"
KUBERNETES = "1.33"
BUILT_IN = {"CLUSTER_NAME"}  # filled in by OCM itself
VARIABLE = re.compile(r"\{\{([A-Z_][A-Z0-9_]*)\}\}")


def manifests() -> list[dict[str, Any]]:
    return [
        document
        for path in sorted(OCM.glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the CRD's openAPIV3Schema."""
    found = {}
    for path in CRDS.glob("*.crd.yaml"):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            found[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return found


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests() if m["kind"] == kind]


def key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


@pytest.mark.parametrize("obj", manifests(), ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_every_manifest_matches_its_schema(obj: dict[str, Any]) -> None:
    schema = schemas().get((obj["apiVersion"], obj["kind"]))
    if schema is None:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    else:
        jsonschema.validate(obj, schema)
        # the API server would prune a misspelt field silently: find them here instead
        assert list(unknown_fields(obj, schema)) == []


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> Any:
    """The paths of fields in ``value`` that ``schema`` does not know (as a strict apply
    would report them), except where the schema keeps unknown fields."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict) and "properties" in schema:
        for name, item in value.items():
            if name not in schema["properties"]:
                if path not in ("", "/metadata") or name not in ("apiVersion", "kind"):
                    yield f"{path}/{name}"
                continue
            yield from unknown_fields(item, schema["properties"][name], f"{path}/{name}")
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            yield from unknown_fields(item, schema["items"], f"{path}/{index}")


def agent_manifests(variables: dict[str, str]) -> list[dict[str, Any]]:
    """The template's agent manifests with ``variables`` filled in, as OCM fills them."""
    (template,) = of_kind("AddOnTemplate")
    text = yaml.safe_dump(template["spec"]["agentSpec"]["workload"]["manifests"])
    return yaml.safe_load(VARIABLE.sub(lambda m: variables[m.group(1)], text))


def config_variables(config: dict[str, Any]) -> dict[str, str]:
    values = {v["name"]: v["value"] for v in config["spec"]["customizedVariables"]}
    return {**values, "CLUSTER_NAME": "cluster-7"}


@pytest.mark.parametrize(
    "config", of_kind("AddOnDeploymentConfig"), ids=lambda c: c["metadata"]["name"]
)
def test_the_agent_is_valid_kubernetes_with_each_configs_values(config: dict[str, Any]) -> None:
    for obj in agent_manifests(config_variables(config)):
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def test_every_variable_the_template_uses_is_set_by_every_config() -> None:
    (template,) = of_kind("AddOnTemplate")
    used = set(VARIABLE.findall(yaml.safe_dump(template))) - BUILT_IN
    assert used >= {"HUB_ADDRESS", "JOIN_TOKEN", "NODE_IMAGE"}
    for config in of_kind("AddOnDeploymentConfig"):
        given = {v["name"] for v in config["spec"]["customizedVariables"]}
        assert used - given == set(), config["metadata"]["name"]
        assert given - used == set(), f"{config['metadata']['name']} sets unused variables"


def test_the_add_on_names_its_template_configs_and_placements() -> None:
    (addon,) = of_kind("ClusterManagementAddOn")
    (template,) = of_kind("AddOnTemplate")
    assert template["spec"]["addonName"] == addon["metadata"]["name"]
    configs = {key(c) for c in of_kind("AddOnDeploymentConfig")}
    placements = {key(p) for p in of_kind("Placement")}
    defaults = {c["resource"]: c["defaultConfig"] for c in addon["spec"]["supportedConfigs"]}
    assert defaults["addontemplates"]["name"] == template["metadata"]["name"]
    adc = defaults["addondeploymentconfigs"]
    assert (adc["namespace"], adc["name"]) in configs
    chosen = addon["spec"]["installStrategy"]["placements"]
    assert {(p["namespace"], p["name"]) for p in chosen} == placements
    for placement in chosen:
        for config in placement["configs"]:
            assert (config["namespace"], config["name"]) in configs


def test_placements_choose_from_a_bound_cluster_set_gpu_clusters_and_a_region() -> None:
    bindings = of_kind("ManagedClusterSetBinding")
    bound = {(b["metadata"]["namespace"], b["spec"]["clusterSet"]) for b in bindings}
    placements = {p["metadata"]["name"]: p for p in of_kind("Placement")}
    for placement in placements.values():
        for cluster_set in placement["spec"]["clusterSets"]:
            assert (placement["metadata"]["namespace"], cluster_set) in bound
    gpu = placements["pollinate-gpu"]["spec"]["predicates"][0]["requiredClusterSelector"]
    assert gpu["labelSelector"]["matchLabels"] == {"gpu": "true"}
    eu = placements["pollinate-eu"]["spec"]["predicates"][0]["requiredClusterSelector"]
    assert eu["claimSelector"]["matchExpressions"][0]["key"] == "region.open-cluster-management.io"


def test_the_agent_enrols_with_its_secret_keeps_its_identity_and_runs_unprivileged() -> None:
    configs = {c["metadata"]["name"]: c for c in of_kind("AddOnDeploymentConfig")}
    agent = agent_manifests(config_variables(configs["pollinate-node-gpu"]))
    objects = {(o["kind"], o["metadata"]["name"]): o for o in agent}
    secret = objects[("Secret", "pollinate-join-token")]
    deployment = objects[("Deployment", "pollinate-node")]
    pod = deployment["spec"]["template"]["spec"]
    (node,) = pod["containers"]
    reference = node["env"][0]["valueFrom"]["secretKeyRef"]
    assert reference["name"] == secret["metadata"]["name"]
    assert reference["key"] in secret["stringData"]
    assert not any(a.startswith("--token") for a in node["args"])  # not in the process list
    assert unknown_options(node["args"]) == set(), node["args"]
    assert unknown_environment(node["args"], node["env"]) == set()
    assert "--label=cluster=cluster-7" in node["args"]
    assert "--resources=gpus=1" in node["args"]
    assert node["resources"]["limits"]["nvidia.com/gpu"] == "1"
    volumes = [v["persistentVolumeClaim"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert [v["claimName"] for v in volumes] == ["pollinate-node-data"]
    assert ("PersistentVolumeClaim", "pollinate-node-data") in objects
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # one pod per identity
    assert node["securityContext"]["readOnlyRootFilesystem"] is True
    assert node["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert node["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for obj in objects.values():
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "pollinate"
