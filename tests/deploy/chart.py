"""Render the Helm chart offline with Helm's own engine (helm-python-sdk bundles libhelm) and
look up the API server's schema of each rendered object."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import yaml

from tests.data import OPENAPI_DIR

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "deployments" / "helm" / "vgpu-dra"
RELEASE = "vgpu-dra"
NAMESPACE = "gpu-system"


@dataclass(frozen=True)
class Rendered:
    """The objects of one render, in template order, plus the NOTES text."""

    objects: list[dict[str, Any]]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """Every object of `kind`."""
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name_suffix: str = "") -> dict[str, Any]:
        """The single object of `kind` whose name ends with `name_suffix`."""
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, f"expected one {kind} named *{name_suffix}, got {[o['metadata']['name'] for o in found]}"
        return found[0]

    def names(self, kind: str) -> set[str]:
        """Names of every object of `kind`."""
        return {o["metadata"]["name"] for o in self.of_kind(kind)}


def render(values: dict[str, Any] | None = None, *, chart_dir: Path = CHART_DIR,
           release: str = RELEASE, namespace: str = NAMESPACE) -> Rendered:
    """`helm template` of the chart with `values` (schema-checked like an install)."""
    chart = helm_python.Chart.load(chart_dir)
    manifests = chart.render(values or {}, name=release, namespace=namespace, is_install=True)
    objects: list[dict[str, Any]] = []
    notes = ""
    for path in sorted(manifests, key=lambda p: p.rsplit("/", 1)[-1]):
        if path.endswith("NOTES.txt"):
            notes = manifests[path]
            continue
        objects.extend(doc for doc in yaml.safe_load_all(manifests[path]) if doc)
    return Rendered(objects, notes)


@functools.cache
def _schema_keys() -> dict[tuple[str, str], str]:
    """(apiVersion, kind) → schema key, from each schema's x-kubernetes-group-version-kind."""
    keys: dict[tuple[str, str], str] = {}
    for path in sorted(OPENAPI_DIR.glob("*.json")):
        for key, schema in json.loads(path.read_text())["components"]["schemas"].items():
            for gvk in schema.get("x-kubernetes-group-version-kind", []):
                api_version = f"{gvk['group']}/{gvk['version']}" if gvk["group"] else gvk["version"]
                keys.setdefault((api_version, gvk["kind"]), key)
    return keys


def schema_key(obj: dict[str, Any]) -> str | None:
    """The OpenAPI schema key of `obj`'s apiVersion and kind, None for kinds the server lacks."""
    return _schema_keys().get((obj["apiVersion"], obj["kind"]))
