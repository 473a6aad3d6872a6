"""Kubernetes YAML files → typed records of the objects `vgpu-dra plan` understands. Pure apart
from reading the files it is given.

Reads files or folders (recursively: ``*.yaml``, ``*.yml``, ``*.json``, in name order), every
document of every file, ``kind: List`` items included. Kinds it uses:

- ``DeviceClass``, ``ResourceClaimTemplate``, ``ResourceClaim`` (``resource.k8s.io/v1``, and the
  beta versions, whose requests are rewritten to the v1 ``exactly`` form);
- ``Pod``, ``Deployment``, ``ReplicaSet``, ``StatefulSet`` (``spec.replicas``, default 1), ``Job``
  (``spec.parallelism``, default 1) and ``CronJob`` (its job template) — each becomes a pod template
  and a number of pods;
- ``NodeInventory`` documents are collected as they are (the inventory loader parses them).

Other kinds (Services, ConfigMaps …) and documents without a ``kind`` are skipped and listed in
`Manifests.skipped`. Anything malformed in a kind that is used raises `ManifestError`, whose
message names the file, the document and the object.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

JsonObject = dict[str, Any]

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
RESOURCE_GROUP = "resource.k8s.io"
_BETA_VERSIONS = ("v1beta1",)  # v1beta2 already has the v1 shape
_WORKLOAD_KINDS = ("Pod", "Deployment", "ReplicaSet", "StatefulSet", "Job", "CronJob")
_EXACTLY_FIELDS = ("deviceClassName", "selectors", "allocationMode", "count", "adminAccess", "tolerations",
                   "capacity")


class ManifestError(ValueError):
    """A file or object that cannot be used; ``str()`` names the file, document and object."""


@dataclass(frozen=True, slots=True)
class Source:
    """Where an object came from, for messages: ``examples/claims/a.yaml (document 2)``."""

    path: str
    document: int

    def __str__(self) -> str:
        return f"{self.path} (document {self.document})"


@dataclass(frozen=True, slots=True)
class DeviceClassRecord:
    """A DeviceClass; ``raw`` is the object in the v1 shape (selectors, config, labels)."""

    name: str
    raw: JsonObject = field(repr=False)
    source: Source


@dataclass(frozen=True, slots=True)
class ClaimTemplateRecord:
    """A ResourceClaimTemplate: the claim spec (v1 shape) and metadata each generated claim gets."""

    namespace: str
    name: str
    claim_spec: JsonObject = field(repr=False)
    claim_labels: Mapping[str, str]
    claim_annotations: Mapping[str, str]
    source: Source

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ClaimRecord:
    """A standalone ResourceClaim (v1 shape); pods that name it share it."""

    namespace: str
    name: str
    raw: JsonObject = field(repr=False)
    source: Source

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class PodClaimRef:
    """One entry of a pod's ``spec.resourceClaims``: a claim by name or a template to stamp."""

    name: str
    claim_name: str | None = None
    template_name: str | None = None


@dataclass(frozen=True, slots=True)
class PodTemplate:
    """What the planner needs from a pod spec."""

    claims: tuple[PodClaimRef, ...]
    node_name: str | None = None
    hostname_selector: str | None = None
    """``nodeSelector["kubernetes.io/hostname"]``, the one node label an inventory knows."""


@dataclass(frozen=True, slots=True)
class WorkloadRecord:
    """A Pod or a controller of pods: ``replicas`` pods from one template."""

    kind: str
    namespace: str
    name: str
    replicas: int
    pod: PodTemplate
    source: Source

    @property
    def label(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Manifests:
    """Everything read from the given paths, in file and document order."""

    device_classes: tuple[DeviceClassRecord, ...] = ()
    claim_templates: tuple[ClaimTemplateRecord, ...] = ()
    claims: tuple[ClaimRecord, ...] = ()
    workloads: tuple[WorkloadRecord, ...] = ()
    inventories: tuple[tuple[JsonObject, Source], ...] = ()
    skipped: tuple[str, ...] = ()
    files: tuple[str, ...] = ()


def manifest_files(paths: Sequence[Path]) -> list[Path]:
    """The files to read: each file as given, each folder's manifest files recursively, sorted."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in MANIFEST_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise ManifestError(f"{path}: no such file or folder")
    return files


def load_manifests(paths: Sequence[Path]) -> Manifests:
    """Read every manifest under ``paths``; raises `ManifestError` on the first bad file or object."""
    classes: list[DeviceClassRecord] = []
    templates: list[ClaimTemplateRecord] = []
    claims: list[ClaimRecord] = []
    workloads: list[WorkloadRecord] = []
    inventories: list[tuple[JsonObject, Source]] = []
    skipped: list[str] = []
    files = manifest_files(paths)
    for path in files:
        for source, document in _documents(path):
            kind = document.get("kind")
            if kind == "DeviceClass":
                classes.append(_device_class(document, source))
            elif kind == "ResourceClaimTemplate":
                templates.append(_claim_template(document, source))
            elif kind == "ResourceClaim":
                claims.append(_claim(document, source))
            elif kind in _WORKLOAD_KINDS:
                workloads.append(_workload(document, source))
            elif kind == "NodeInventory":
                inventories.append((document, source))
            else:
                skipped.append(f"{source}: {kind or 'document without a kind'}")
    _no_duplicates([(c.name, c.source) for c in classes], "DeviceClass")
    _no_duplicates([(t.key, t.source) for t in templates], "ResourceClaimTemplate")
    _no_duplicates([(c.key, c.source) for c in claims], "ResourceClaim")
    _no_duplicates([(f"{w.kind} {w.namespace}/{w.name}", w.source) for w in workloads], "workload")
    return Manifests(tuple(classes), tuple(templates), tuple(claims), tuple(workloads), tuple(inventories),
                     tuple(skipped), tuple(str(f) for f in files))


def _documents(path: Path) -> Iterator[tuple[Source, JsonObject]]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(f"{path}: not valid YAML{where}: {problem}") from None
    for number, document in enumerate(documents, start=1):
        source = Source(str(path), number)
        if document is None:
            continue
        if not isinstance(document, dict):
            raise ManifestError(f"{source}: expected a Kubernetes object (a mapping), got {type(document).__name__}")
        if document.get("kind") == "List":
            for item in _list(document, "items", source, "List"):
                if not isinstance(item, dict):
                    raise ManifestError(f"{source}: List item is not an object")
                yield source, item
        else:
            yield source, document


# --- per kind --------------------------------------------------------------------------------

def _describe(document: Mapping[str, Any]) -> str:
    metadata = document.get("metadata") if isinstance(document.get("metadata"), dict) else {}
    name = metadata.get("name", "<no name>")
    namespace = metadata.get("namespace")
    return f"{document.get('kind')} {namespace + '/' if namespace else ''}{name}"


def _metadata(document: Mapping[str, Any], source: Source, *, namespaced: bool) -> tuple[str, str]:
    metadata = document.get("metadata")
    if not isinstance(metadata, dict):
        raise ManifestError(f"{source}: {document.get('kind')} has no metadata")
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise ManifestError(f"{source}: {document.get('kind')} has no metadata.name")
    namespace = metadata.get("namespace", "default") if namespaced else ""
    if not isinstance(namespace, str) or (namespaced and not namespace):
        raise ManifestError(f"{source}: {_describe(document)}: metadata.namespace must be a string")
    return namespace, name


def _mapping(parent: Mapping[str, Any], key: str, source: Source, what: str, *, required: bool = False) -> JsonObject:
    value = parent.get(key)
    if value is None:
        if required:
            raise ManifestError(f"{source}: {what}: {key} is missing")
        return {}
    if not isinstance(value, dict):
        raise ManifestError(f"{source}: {what}: {key} must be an object, got {type(value).__name__}")
    return value


def _list(parent: Mapping[str, Any], key: str, source: Source, what: str) -> list[Any]:
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ManifestError(f"{source}: {what}: {key} must be a list, got {type(value).__name__}")
    return value


def _string_map(parent: Mapping[str, Any], key: str, source: Source, what: str) -> dict[str, str]:
    value = _mapping(parent, key, source, what)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ManifestError(f"{source}: {what}: {key} must map strings to strings")
    return dict(value)


def _check_resource_api(document: Mapping[str, Any], source: Source) -> str:
    api_version = document.get("apiVersion")
    group, _, version = str(api_version).rpartition("/")
    if group != RESOURCE_GROUP:
        raise ManifestError(f"{source}: {_describe(document)}: apiVersion {api_version!r} is not "
                            f"{RESOURCE_GROUP}/v1 (or a beta of it)")
    return version


def _device_class(document: JsonObject, source: Source) -> DeviceClassRecord:
    _check_resource_api(document, source)
    _, name = _metadata(document, source, namespaced=False)
    what = f"DeviceClass {name}"
    spec = _mapping(document, "spec", source, what)
    for index, selector in enumerate(_list(spec, "selectors", source, what)):
        _cel_selector(selector, source, f"{what} spec.selectors[{index}]")
    for index, entry in enumerate(_list(spec, "config", source, what)):
        _opaque(entry, source, f"{what} spec.config[{index}]")
    raw = copy.deepcopy(document)
    raw.setdefault("metadata", {})["labels"] = _string_map(document["metadata"], "labels", source, what)
    return DeviceClassRecord(name, raw, source)


def _cel_selector(selector: Any, source: Source, what: str) -> None:
    if not isinstance(selector, dict) or not isinstance(selector.get("cel"), dict) \
            or not isinstance(selector["cel"].get("expression"), str):
        raise ManifestError(f"{source}: {what}: a selector must be {{cel: {{expression: <string>}}}}")


def _opaque(entry: Any, source: Source, what: str) -> None:
    if not isinstance(entry, dict):
        raise ManifestError(f"{source}: {what}: must be an object")
    opaque = entry.get("opaque")
    if opaque is None:
        return
    if not isinstance(opaque, dict) or not isinstance(opaque.get("driver"), str):
        raise ManifestError(f"{source}: {what}: opaque needs a driver name and parameters")
    if not isinstance(opaque.get("parameters", {}), dict):
        raise ManifestError(f"{source}: {what}: opaque.parameters must be an object")


def _claim_spec(spec: JsonObject, version: str, source: Source, what: str) -> JsonObject:
    """A ResourceClaimSpec, checked for shape and rewritten to the v1 form."""
    spec = copy.deepcopy(spec)
    devices = _mapping(spec, "devices", source, what)
    requests = _list(devices, "requests", source, what)
    if not requests:
        raise ManifestError(f"{source}: {what}: spec.devices.requests is empty")
    names = []
    for index, request in enumerate(requests):
        where = f"{what} request[{index}]"
        if not isinstance(request, dict) or not isinstance(request.get("name"), str) or not request["name"]:
            raise ManifestError(f"{source}: {where}: every request needs a name")
        names.append(request["name"])
        if version in _BETA_VERSIONS and "exactly" not in request and "firstAvailable" not in request:
            request["exactly"] = {key: request.pop(key) for key in _EXACTLY_FIELDS if key in request}
        exactly = request.get("exactly")
        if exactly is None and not request.get("firstAvailable"):
            raise ManifestError(f"{source}: {where} {request['name']!r}: needs `exactly` "
                                "(deviceClassName, count, capacity …)")
        if exactly is not None:
            if not isinstance(exactly, dict) or not isinstance(exactly.get("deviceClassName"), str):
                raise ManifestError(f"{source}: {where} {request['name']!r}: exactly.deviceClassName is missing")
            count = exactly.get("count", 1)
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise ManifestError(f"{source}: {where} {request['name']!r}: exactly.count must be a positive "
                                    f"integer, got {count!r}")
            for s_index, selector in enumerate(_list(exactly, "selectors", source, where)):
                _cel_selector(selector, source, f"{where} selectors[{s_index}]")
            capacity = _mapping(exactly, "capacity", source, where)
            _mapping(capacity, "requests", source, f"{where} capacity")
    if len(set(names)) != len(names):
        raise ManifestError(f"{source}: {what}: request names are not unique: {names}")
    for index, entry in enumerate(_list(devices, "config", source, what)):
        _opaque(entry, source, f"{what} spec.devices.config[{index}]")
        unknown = [name for name in entry.get("requests") or [] if name not in names]
        if unknown:
            raise ManifestError(f"{source}: {what} spec.devices.config[{index}]: names unknown request(s) {unknown}")
    for index, entry in enumerate(_list(devices, "constraints", source, what)):
        if not isinstance(entry, dict):
            raise ManifestError(f"{source}: {what} spec.devices.constraints[{index}]: must be an object")
        unknown = [name for name in entry.get("requests") or [] if name not in names]
        if unknown:
            raise ManifestError(f"{source}: {what} spec.devices.constraints[{index}]: names unknown request(s) "
                                f"{unknown}")
    return spec


def _claim_template(document: JsonObject, source: Source) -> ClaimTemplateRecord:
    version = _check_resource_api(document, source)
    namespace, name = _metadata(document, source, namespaced=True)
    what = f"ResourceClaimTemplate {namespace}/{name}"
    outer = _mapping(document, "spec", source, what, required=True)
    claim_metadata = _mapping(outer, "metadata", source, what)
    claim_spec = _claim_spec(_mapping(outer, "spec", source, what, required=True), version, source, what)
    return ClaimTemplateRecord(namespace, name, claim_spec,
                               _string_map(claim_metadata, "labels", source, what),
                               _string_map(claim_metadata, "annotations", source, what), source)


def _claim(document: JsonObject, source: Source) -> ClaimRecord:
    version = _check_resource_api(document, source)
    namespace, name = _metadata(document, source, namespaced=True)
    what = f"ResourceClaim {namespace}/{name}"
    raw = copy.deepcopy(document)
    raw["spec"] = _claim_spec(_mapping(document, "spec", source, what, required=True), version, source, what)
    raw["metadata"]["namespace"] = namespace
    return ClaimRecord(namespace, name, raw, source)


def _workload(document: JsonObject, source: Source) -> WorkloadRecord:
    kind = document["kind"]
    namespace, name = _metadata(document, source, namespaced=True)
    what = f"{kind} {namespace}/{name}"
    spec = _mapping(document, "spec", source, what, required=True)
    replicas = 1
    if kind == "Pod":
        pod_spec = spec
    else:
        if kind == "CronJob":
            spec = _mapping(_mapping(spec, "jobTemplate", source, what, required=True), "spec", source, what,
                            required=True)
        count_field = "parallelism" if kind in ("Job", "CronJob") else "replicas"
        replicas = spec.get(count_field, 1)
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise ManifestError(f"{source}: {what}: spec.{count_field} must be a non-negative integer, got {replicas!r}")
        template = _mapping(spec, "template", source, what, required=True)
        pod_spec = _mapping(template, "spec", source, f"{what} template", required=True)
    return WorkloadRecord(kind, namespace, name, replicas, _pod_template(pod_spec, source, what), source)


def _pod_template(pod_spec: JsonObject, source: Source, what: str) -> PodTemplate:
    refs = []
    for index, entry in enumerate(_list(pod_spec, "resourceClaims", source, what)):
        where = f"{what} spec.resourceClaims[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ManifestError(f"{source}: {where}: needs a name")
        claim_name = entry.get("resourceClaimName")
        template_name = entry.get("resourceClaimTemplateName")
        if (claim_name is None) == (template_name is None):
            raise ManifestError(f"{source}: {where} {entry['name']!r}: set exactly one of resourceClaimName "
                                "and resourceClaimTemplateName")
        refs.append(PodClaimRef(entry["name"], claim_name, template_name))
    known = {ref.name for ref in refs}
    for group in ("initContainers", "containers"):
        for container in _list(pod_spec, group, source, what):
            if not isinstance(container, dict):
                raise ManifestError(f"{source}: {what}: {group} entries must be objects")
            resources = _mapping(container, "resources", source, f"{what} container {container.get('name')}")
            for claim in _list(resources, "claims", source, f"{what} container {container.get('name')}"):
                claim_name = claim.get("name") if isinstance(claim, dict) else None
                if claim_name not in known:
                    raise ManifestError(
                        f"{source}: {what}: container {container.get('name')!r} uses claim {claim_name!r}, "
                        f"which spec.resourceClaims does not declare (declared: {sorted(known) or 'none'})")
    node_selector = _string_map(pod_spec, "nodeSelector", source, what)
    node_name = pod_spec.get("nodeName")
    if node_name is not None and not isinstance(node_name, str):
        raise ManifestError(f"{source}: {what}: spec.nodeName must be a string")
    return PodTemplate(tuple(refs), node_name, node_selector.get("kubernetes.io/hostname"))


def _no_duplicates(entries: list[tuple[str, Source]], kind: str) -> None:
    seen: dict[str, Source] = {}
    for key, source in entries:
        if key in seen:
            raise ManifestError(f"{source}: {kind} {key} is also defined in {seen[key]}")
        seen[key] = source
