"""The chart rendered offline by Helm's own Go library (helm-python-sdk: no helm binary, no
cluster; ``lookup`` returns nothing), as plain objects: what tests/deploy asserts on, and
the command lines tests/deployment/test_image.py runs in containers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "pollinate"


def render(
    values: dict[str, Any], name: str = "pol", namespace: str = "fl"
) -> list[dict[str, Any]]:
    """Every object the chart makes for ``values``, as ``helm install NAME -n NAMESPACE``."""
    chart = helm.Chart.load(CHART)
    try:
        rendered = chart.render(values, name=name, namespace=namespace, is_install=True)
    finally:
        chart.close()
    return [
        document
        for path, text in sorted(rendered.items())
        if path.endswith(".yaml")
        for document in yaml.safe_load_all(text)
        if document
    ]


def kind(objects: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == name]


def pod(objects: list[dict[str, Any]], kind_name: str, index: int = 0) -> dict[str, Any]:
    """The pod spec of the ``index``-th workload of ``kind_name``."""
    spec: dict[str, Any] = kind(objects, kind_name)[index]["spec"]["template"]["spec"]
    return spec


def container(objects: list[dict[str, Any]], kind_name: str, index: int = 0) -> dict[str, Any]:
    """The main container of the ``index``-th workload of ``kind_name``."""
    main: dict[str, Any] = pod(objects, kind_name, index)["containers"][0]
    return main
