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
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vgpu_dra.driver.manifest_shapes import (OBJECT_FIELDS, OBJECT_META_FIELDS, TEMPLATE_SPEC_FIELDS, JsonObject,
                                             ManifestError, Source, claim_spec, device_class_spec, known_fields,
                                             listing, mapping, string_map)

__all__ = ["MANIFEST_SUFFIXES", "ClaimRecord", "ClaimTemplateRecord", "DeviceClassRecord", "ManifestError",
           "Manifests", "PodClaimRef", "PodTemplate", "Source", "WorkloadRecord", "load_manifests",
           "manifest_files", "path_problem", "read_text"]

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
RESOURCE_GROUP = "resource.k8s.io"
_WORKLOAD_KINDS = ("Pod", "Deployment", "ReplicaSet", "StatefulSet", "Job", "CronJob")


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


def path_problem(path: Path) -> str | None:
    """Why ``path`` is neither a regular file nor a folder (None when it is one), for messages."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "a symbolic link to nothing" if path.is_symlink() else "no such file or folder"
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = ("a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
            else "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    return f"is {kind}, not a file or folder"


def manifest_files(paths: Sequence[Path]) -> list[Path]:
    """The files to read: each file as given, each folder's manifest files recursively, sorted.
    A folder without any is an error, as is anything that is neither file nor folder."""
    files: list[Path] = []
    for path in paths:
        problem = path_problem(path)
        if problem == "no such file or folder":
            raise ManifestError(f"{path}: {problem}")
        if problem is not None:
            raise ManifestError(f"{path}: {problem} (plan reads YAML files, and folders of them)")
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in MANIFEST_SUFFIXES)
            if not found:
                raise ManifestError(f"{path}: no manifest files ({', '.join('*' + s for s in MANIFEST_SUFFIXES)}) "
                                    "in the folder")
            files.extend(found)
        else:
            files.append(path)
    return files


def read_text(path: Path, what: str) -> str:
    """A text file's content; unreadable or non-UTF-8 content is one clear `ManifestError`-style line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ManifestError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); {what} is "
                            "a YAML file") from None


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
    text = read_text(path, "a manifest")
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(f"{path}: not valid YAML{where}: {problem}") from None
    if all(document is None for document in documents):
        raise ManifestError(f"{path}: no Kubernetes objects in the file (it is empty or only comments)")
    for number, document in enumerate(documents, start=1):
        source = Source(str(path), number)
        if document is None:
            continue
        if not isinstance(document, dict):
            raise ManifestError(f"{source}: expected a Kubernetes object (a mapping), got {type(document).__name__}")
        if document.get("kind") == "List":
            for item in listing(document, "items", source, "List"):
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
    _object_fields(document, source, what)
    device_class_spec(mapping(document, "spec", source, what), source, what)
    raw = copy.deepcopy(document)
    raw.setdefault("metadata", {})["labels"] = string_map(document["metadata"], "labels", source, what)
    return DeviceClassRecord(name, raw, source)


def _object_fields(document: JsonObject, source: Source, what: str) -> None:
    known_fields(document, OBJECT_FIELDS, source, what, "(top level)")
    known_fields(document.get("metadata") or {}, OBJECT_META_FIELDS, source, what, "metadata")


def _claim_template(document: JsonObject, source: Source) -> ClaimTemplateRecord:
    version = _check_resource_api(document, source)
    namespace, name = _metadata(document, source, namespaced=True)
    what = f"ResourceClaimTemplate {namespace}/{name}"
    _object_fields(document, source, what)
    outer = mapping(document, "spec", source, what, required=True)
    known_fields(outer, TEMPLATE_SPEC_FIELDS, source, what, "spec")
    claim_metadata = mapping(outer, "metadata", source, what)
    known_fields(claim_metadata, OBJECT_META_FIELDS, source, what, "spec.metadata")
    spec = claim_spec(mapping(outer, "spec", source, what, required=True), version, source, what, "spec.spec")
    return ClaimTemplateRecord(namespace, name, spec,
                               string_map(claim_metadata, "labels", source, what),
                               string_map(claim_metadata, "annotations", source, what), source)


def _claim(document: JsonObject, source: Source) -> ClaimRecord:
    version = _check_resource_api(document, source)
    namespace, name = _metadata(document, source, namespaced=True)
    what = f"ResourceClaim {namespace}/{name}"
    _object_fields(document, source, what)
    raw = copy.deepcopy(document)
    raw["spec"] = claim_spec(mapping(document, "spec", source, what, required=True), version, source, what)
    raw["metadata"]["namespace"] = namespace
    return ClaimRecord(namespace, name, raw, source)


def _workload(document: JsonObject, source: Source) -> WorkloadRecord:
    kind = document["kind"]
    namespace, name = _metadata(document, source, namespaced=True)
    what = f"{kind} {namespace}/{name}"
    spec = mapping(document, "spec", source, what, required=True)
    replicas = 1
    if kind == "Pod":
        pod_spec = spec
    else:
        if kind == "CronJob":
            spec = mapping(mapping(spec, "jobTemplate", source, what, required=True), "spec", source, what,
                            required=True)
        count_field = "parallelism" if kind in ("Job", "CronJob") else "replicas"
        replicas = spec.get(count_field, 1)
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise ManifestError(f"{source}: {what}: spec.{count_field} must be a non-negative integer, got {replicas!r}")
        template = mapping(spec, "template", source, what, required=True)
        pod_spec = mapping(template, "spec", source, f"{what} template", required=True)
    return WorkloadRecord(kind, namespace, name, replicas, _pod_template(pod_spec, source, what), source)


def _pod_template(pod_spec: JsonObject, source: Source, what: str) -> PodTemplate:
    refs = []
    for index, entry in enumerate(listing(pod_spec, "resourceClaims", source, what)):
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
        for container in listing(pod_spec, group, source, what):
            if not isinstance(container, dict):
                raise ManifestError(f"{source}: {what}: {group} entries must be objects")
            resources = mapping(container, "resources", source, f"{what} container {container.get('name')}")
            for claim in listing(resources, "claims", source, f"{what} container {container.get('name')}"):
                claim_name = claim.get("name") if isinstance(claim, dict) else None
                if claim_name not in known:
                    raise ManifestError(
                        f"{source}: {what}: container {container.get('name')!r} uses claim {claim_name!r}, "
                        f"which spec.resourceClaims does not declare (declared: {sorted(known) or 'none'})")
    node_selector = string_map(pod_spec, "nodeSelector", source, what)
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
