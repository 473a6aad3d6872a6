"""Refresh tests/data/openapi/ from a running Kubernetes API server.

    .venv/bin/python tests/data/refresh_openapi.py --kubeconfig ~/.kube/config

For each group-version in `KEPT` it GETs `/openapi/v3/<group-version>` with the kubeconfig's
credentials, keeps only the schemas reachable through `$ref` from the kinds listed there, and
writes the document with sorted keys and fixed indentation, so refreshing against the same server
version changes nothing. The tests read only `components.schemas`; `paths` (most of each document,
and unread) is written empty.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kubernetes import config
from kubernetes.client.exceptions import ApiException

OPENAPI_DIR = Path(__file__).resolve().parent / "openapi"
SCHEMA_REF = "#/components/schemas/"

# group-version → the kinds the project builds, stores, validates or renders: the fake API server's
# resource types (tests/fakes/apiserver/resources.py), the chart's objects and the examples' kinds.
KEPT: dict[str, tuple[str, ...]] = {
    "v1": ("ConfigMap", "Event", "Namespace", "Node", "Pod", "ResourceQuota", "Secret", "Service", "ServiceAccount"),
    "admissionregistration.k8s.io/v1": ("MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding",
                                        "MutatingWebhookConfiguration", "ValidatingAdmissionPolicy",
                                        "ValidatingAdmissionPolicyBinding"),
    "apps/v1": ("DaemonSet", "Deployment", "StatefulSet"),
    "batch/v1": ("CronJob", "Job"),
    "coordination.k8s.io/v1": ("Lease",),
    "events.k8s.io/v1": ("Event",),
    "policy/v1": ("PodDisruptionBudget",),
    "rbac.authorization.k8s.io/v1": ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"),
    "resource.k8s.io/v1": ("DeviceClass", "ResourceClaim", "ResourceClaimTemplate", "ResourceSlice"),
}


def file_name(group_version: str) -> str:
    """The carried file of a group-version: its /openapi/v3 path with `/` turned into `_`."""
    return "api_v1.json" if group_version == "v1" else "apis_" + group_version.replace("/", "_") + ".json"


def url_path(group_version: str) -> str:
    """Where the API server publishes the group-version's OpenAPI v3 document."""
    return "/openapi/v3/api/v1" if group_version == "v1" else f"/openapi/v3/apis/{group_version}"


def kind_keys(schemas: Mapping[str, Any], group_version: str, kinds: Iterable[str]) -> dict[str, str]:
    """kind → the schema key carrying that kind of `group_version` in x-kubernetes-group-version-kind.
    Raises ValueError naming every kind the document lacks."""
    group, _, version = group_version.rpartition("/")
    wanted = set(kinds)
    found: dict[str, str] = {}
    for key, schema in schemas.items():
        for gvk in schema.get("x-kubernetes-group-version-kind", ()):
            if (gvk.get("group"), gvk.get("version")) == (group, version) and gvk.get("kind") in wanted:
                found.setdefault(gvk["kind"], key)
    missing = sorted(wanted - found.keys())
    if missing:
        raise ValueError(f"the {group_version} document has no schema for {', '.join(missing)}")
    return found


def _refs(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(SCHEMA_REF):
            yield ref[len(SCHEMA_REF):]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def closure(schemas: Mapping[str, Any], roots: Iterable[str]) -> set[str]:
    """`roots` and every schema key reachable from them through `$ref`. Raises KeyError for a
    reference the document does not define."""
    seen: set[str] = set()
    pending = list(roots)
    while pending:
        key = pending.pop()
        if key in seen:
            continue
        if key not in schemas:
            raise KeyError(f"schema {key!r} is referenced but not defined")
        seen.add(key)
        pending.extend(_refs(schemas[key]))
    return seen


def prune(document: Mapping[str, Any], group_version: str, kinds: Iterable[str]) -> dict[str, Any]:
    """`document` with only the schemas reachable from `kinds` of `group_version`, and no paths;
    everything else (openapi, info, securitySchemes) as it was."""
    schemas = document["components"]["schemas"]
    keep = closure(schemas, kind_keys(schemas, group_version, kinds).values())
    components = {**document["components"], "schemas": {key: schemas[key] for key in sorted(keep)}}
    return {**document, "paths": {}, "components": components}


def dump(document: Mapping[str, Any]) -> str:
    """The file text: sorted keys, one-space indentation, a final newline."""
    return json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def fetch(api_client: Any, group_version: str) -> dict[str, Any]:
    """GET the group-version's OpenAPI v3 document through a `kubernetes.client.ApiClient`."""
    method, url, headers, body, post = api_client.param_serialize(
        method="GET", resource_path=url_path(group_version), header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"])
    try:
        response = api_client.call_api(method, url, header_params=headers, body=body, post_params=post,
                                       _request_timeout=60)
        data = response.read()
    except ApiException as exc:
        raise RuntimeError(f"GET {url_path(group_version)} answered {exc.status} {exc.reason}") from None
    if response.status != 200:
        raise RuntimeError(f"GET {url_path(group_version)} answered {response.status} {response.reason}")
    return json.loads(data)


def refresh(api_client: Any, out: Path, kept: Mapping[str, Iterable[str]] = KEPT) -> list[Path]:
    """Fetch and prune every kept group-version, then write them into `out` and delete the
    documents of group-versions no longer kept; returns the files written. Nothing is written
    unless every document was fetched and had every kept kind."""
    texts = {file_name(gv): dump(prune(fetch(api_client, gv), gv, kinds)) for gv, kinds in sorted(kept.items())}
    out.mkdir(parents=True, exist_ok=True)
    for stale in sorted({*out.glob("api_*.json"), *out.glob("apis_*.json")}):
        if stale.name not in texts:
            stale.unlink()
    written = []
    for name, text in texts.items():
        (out / name).write_text(text)
        written.append(out / name)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command line: refresh the carried documents from the cluster a kubeconfig names."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                        help="kubeconfig of the API server to read (default: $KUBECONFIG)")
    parser.add_argument("--out", type=Path, default=OPENAPI_DIR, help="where to write (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.kubeconfig or not Path(args.kubeconfig).is_file():
        print(f"no kubeconfig at {args.kubeconfig!r}: pass --kubeconfig or set KUBECONFIG", file=sys.stderr)
        return 2
    try:
        written = refresh(config.new_client_from_config(config_file=args.kubeconfig), args.out)
    except Exception as exc:  # one line for the operator: what failed and on which document
        print(f"refresh failed: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
