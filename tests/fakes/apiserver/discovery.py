"""Discovery documents: /version, /api, /apis, /apis/<group>, resource lists, /openapi/v3."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import not_found
from .resources import RESOURCE_TYPES, ResourceType, group_versions

SERVER_VERSION = {
    "major": "1", "minor": "36", "emulationMajor": "1", "emulationMinor": "36",
    "minCompatibilityMajor": "1", "minCompatibilityMinor": "35", "gitVersion": "v1.36.3",
    "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25.0", "compiler": "gc", "platform": "linux/amd64",
}


def _groups(gvs: dict[str, list[ResourceType]]) -> list[str]:
    return sorted({gv.split("/")[0] for gv in gvs if "/" in gv})


def _api_group(group: str) -> dict[str, Any]:
    versions = sorted({rt.version for rt in RESOURCE_TYPES if rt.group == group})
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": entries, "preferredVersion": entries[0]}


def _resource_list(gv: str, types: list[ResourceType]) -> dict[str, Any]:
    resources: list[dict[str, Any]] = []
    for rt in types:
        resources.append({"name": rt.plural, "singularName": rt.kind.lower(), "namespaced": rt.namespaced,
                          "kind": rt.kind, "verbs": list(rt.verbs), "shortNames": list(rt.short_names)})
        if rt.status_subresource:
            resources.append({"name": f"{rt.plural}/status", "singularName": "", "namespaced": rt.namespaced,
                              "kind": rt.kind, "verbs": ["get", "patch", "update"]})
        if rt.kind == "Pod":
            resources.append({"name": "pods/binding", "singularName": "", "namespaced": True,
                              "kind": "Binding", "verbs": ["create"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}


def _openapi(directory: Path, rest: list[str]) -> bytes:
    if not rest:
        paths = {f.stem.replace("_", "/"): {"serverRelativeURL": "/openapi/v3/" + f.stem.replace("_", "/")}
                 for f in sorted(directory.glob("*.json"))}
        return json.dumps({"paths": paths}).encode()
    path = directory / ("_".join(rest) + ".json")
    if not path.exists():
        raise not_found("openapi", "", "/".join(rest))
    return path.read_bytes()


def discovery_response(segs: list[str], server_address: str, openapi_dir: Path) -> tuple[str, Any] | None:
    """(content type, body) for a discovery path, or None when `segs` is not one. Raises 404
    ApiError for an unknown OpenAPI document."""
    gvs = group_versions()
    if segs == ["version"]:
        return "application/json", SERVER_VERSION
    if segs in (["healthz"], ["readyz"], ["livez"]):
        return "text/plain", b"ok"
    if segs == ["api"]:
        return "application/json", {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}
    if segs == ["apis"]:
        return "application/json", {"kind": "APIGroupList", "apiVersion": "v1",
                                    "groups": [_api_group(g) for g in _groups(gvs)]}
    if len(segs) == 2 and segs[0] == "apis" and segs[1] in _groups(gvs):
        return "application/json", {"kind": "APIGroup", "apiVersion": "v1", **_api_group(segs[1])}
    if segs == ["api", "v1"] or (len(segs) == 3 and segs[0] == "apis" and f"{segs[1]}/{segs[2]}" in gvs):
        gv = "v1" if segs[0] == "api" else f"{segs[1]}/{segs[2]}"
        return "application/json", _resource_list(gv, gvs[gv])
    if segs[:2] == ["openapi", "v3"]:
        return "application/json", _openapi(openapi_dir, segs[2:])
    return None
