"""HAMi manifests → DRA manifests, document by document (what `vgpu-dra migrate` prints). Pure.

Every kind that carries a pod template is rewritten through `hami_translation`; other documents
pass through unchanged, so the output replaces the input file for file. The ResourceClaimTemplates
the rewritten workloads need come first, once each.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vgpu_dra.driver.hami_translation import Allocator, HamiTranslationError, PodTranslation, translate_pod_template

JsonObject = dict[str, Any]

# kind → path of its pod template (the Pod itself for "Pod").
POD_TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "PodTemplate": ("template",),
    "Deployment": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


@dataclass(frozen=True)
class MigratedDocument:
    """One input document after translation, with what it needed."""

    document: JsonObject
    translation: PodTranslation | None
    label: str

    @property
    def changed(self) -> bool:
        """Whether anything HAMi was found and rewritten."""
        return self.translation is not None and self.translation.changed


@dataclass(frozen=True)
class Migration:
    """The translated documents in input order and the templates they need (deduplicated)."""

    documents: tuple[MigratedDocument, ...]
    templates: tuple[JsonObject, ...]
    translated: tuple[str, ...] = ()
    """Each rewritten workload, as `Kind namespace/name`."""

    def output(self) -> list[JsonObject]:
        """What to apply instead of the input: templates first, then every document."""
        return [*self.templates, *(d.document for d in self.documents)]


def _label(document: Mapping[str, Any]) -> str:
    metadata = document.get("metadata") if isinstance(document.get("metadata"), Mapping) else {}
    name = metadata.get("name") or metadata.get("generateName") or "<no name>"
    namespace = metadata.get("namespace")
    return f"{document.get('kind')} {namespace + '/' if namespace else ''}{name}"


def migrate_document(document: Mapping[str, Any], *, allocator: Allocator = "controller",
                     source: str = "") -> MigratedDocument:
    """Translate one object; one without a pod template comes back as it was."""
    label = _label(document)
    kind = document.get("kind")
    path = POD_TEMPLATE_PATHS.get(kind) if isinstance(kind, str) else None
    if path is None:
        return MigratedDocument(dict(document), None, label)
    where = f"{source + ': ' if source else ''}{label}"
    out: JsonObject = copy.deepcopy(dict(document))
    holder: Any = out
    for key in path:
        holder = holder.get(key) if isinstance(holder, Mapping) else None
        if not isinstance(holder, dict):
            raise HamiTranslationError(f"{where}: {'.'.join(path[:path.index(key) + 1])} must be a mapping")
    spec = holder.get("spec")
    if not isinstance(spec, dict):
        raise HamiTranslationError(f"{where}: {'.'.join((*path, 'spec'))} is missing or not a mapping")
    metadata = holder.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise HamiTranslationError(f"{where}: {'.'.join((*path, 'metadata'))} must be a mapping")
    top_metadata = out.get("metadata") if isinstance(out.get("metadata"), Mapping) else {}
    namespace = top_metadata.get("namespace")
    translation = translate_pod_template(metadata, spec, namespace=namespace if isinstance(namespace, str) else None,
                                         allocator=allocator, where=where)
    if translation.changed:
        holder["spec"] = translation.spec
        holder["metadata"] = translation.metadata
    return MigratedDocument(out, translation, label)


def migrate_documents(documents: Iterable[tuple[str, Mapping[str, Any]]], *,
                      allocator: Allocator = "controller") -> Migration:
    """Translate (source, document) pairs; `List` documents are translated item by item."""
    migrated: list[MigratedDocument] = []
    templates: dict[tuple[str, str], JsonObject] = {}
    translated: list[str] = []
    for source, document in documents:
        if document.get("kind") == "List" and isinstance(document.get("items"), list):
            items = [migrate_document(item, allocator=allocator, source=source) for item in document["items"]]
            listing = {**document, "items": [item.document for item in items]}
            migrated.append(MigratedDocument(listing, None, "List"))
            found: Sequence[MigratedDocument] = items
        else:
            found = [migrate_document(document, allocator=allocator, source=source)]
            migrated.extend(found)
        for item in found:
            if item.translation is None or not item.translation.changed:
                continue
            translated.append(item.label)
            for template in item.translation.templates:
                key = (template["metadata"].get("namespace", ""), template["metadata"]["name"])
                templates.setdefault(key, template)
    return Migration(tuple(migrated), tuple(templates.values()), tuple(translated))
