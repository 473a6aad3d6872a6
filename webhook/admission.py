"""AdmissionReview in, AdmissionReview out: the HAMi translation applied to a pod being created.

The decision is pure; the one side effect (making sure the pod's ResourceClaimTemplates exist in its
namespace) is a callable passed in. Whatever goes wrong refuses the pod, with a message saying why:
a pod that asked for a GPU fraction never runs without its wall.
"""
from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vgpu_dra.driver.hami_translation import Allocator, HamiTranslationError, PodTranslation, translate_pod_template

JsonObject = dict[str, Any]
EnsureTemplates = Callable[[str, Sequence[JsonObject], bool], None]
"""(namespace, templates, dry_run) → None; raises `TemplateError` when they cannot be made to exist."""


class TemplateError(RuntimeError):
    """A ResourceClaimTemplate the pod needs could not be created or has another shape."""


@dataclass(frozen=True)
class Decision:
    """What the webhook answered and why (`result` is also the metric's label)."""

    response: JsonObject
    result: str  # translated | untouched | refused | error
    message: str = ""


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def json_patch(pod: Mapping[str, Any], translation: PodTranslation) -> list[JsonObject]:
    """JSON Patch operations turning `pod` into the translated pod, touching only what changed:
    each container's resources, the pod's claims and scheduler, and its annotations."""
    ops: list[JsonObject] = []
    spec = pod.get("spec") or {}
    new = translation.spec
    for field_name in ("initContainers", "containers"):
        for index, (old_c, new_c) in enumerate(zip(spec.get(field_name) or [], new.get(field_name) or [])):
            if old_c.get("resources") != new_c.get("resources"):
                ops.append({"op": "add", "path": f"/spec/{field_name}/{index}/resources", "value": new_c["resources"]})
    for key in ("resourceClaims", "schedulerName"):
        if new.get(key) != spec.get(key):
            ops.append({"op": "add", "path": f"/spec/{key}", "value": new[key]})
    annotations = translation.metadata.get("annotations") or {}
    if annotations != ((pod.get("metadata") or {}).get("annotations") or {}):
        if "annotations" in (pod.get("metadata") or {}):
            for key, value in annotations.items():
                if pod["metadata"]["annotations"].get(key) != value:
                    ops.append({"op": "add", "path": f"/metadata/annotations/{_escape(key)}", "value": value})
        else:
            ops.append({"op": "add", "path": "/metadata/annotations", "value": annotations})
    return ops


def _response(uid: str, allowed: bool, *, patch: list[JsonObject] | None = None, message: str = "",
              code: int = 403, warnings: Sequence[str] = ()) -> JsonObject:
    response: JsonObject = {"uid": uid, "allowed": allowed}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    if not allowed:
        response["status"] = {"code": code, "message": message}
    if warnings:
        response["warnings"] = list(warnings)
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def admit(review: Mapping[str, Any], ensure_templates: EnsureTemplates, *,
          allocator: Allocator = "controller") -> Decision:
    """Answer one AdmissionReview for a pod CREATE."""
    request = review.get("request") if isinstance(review, Mapping) else None
    if not isinstance(request, Mapping) or not isinstance(request.get("uid"), str):
        raise ValueError("not an AdmissionReview request (no request.uid)")
    uid = request["uid"]
    pod = request.get("object")
    kind = (request.get("kind") or {}).get("kind")
    if kind != "Pod" or request.get("operation") != "CREATE" or not isinstance(pod, Mapping):
        return Decision(_response(uid, True), "untouched")
    namespace = request.get("namespace") or (pod.get("metadata") or {}).get("namespace") or "default"
    metadata = pod.get("metadata") or {}
    name = metadata.get("name") or (metadata.get("generateName") or "") + "…"
    where = f"pod {namespace}/{name}"
    try:
        translation = translate_pod_template(metadata, pod.get("spec") or {}, namespace=namespace,
                                             allocator=allocator, where=where)
    except HamiTranslationError as exc:
        message = f"vgpu-dra cannot translate this pod's HAMi GPU request: {exc}"
        return Decision(_response(uid, False, message=message, code=422), "refused", message)
    if not translation.changed:
        return Decision(_response(uid, True), "untouched")
    try:
        ensure_templates(namespace, translation.templates, bool(request.get("dryRun")))
    except TemplateError as exc:
        message = (f"vgpu-dra refused {where}: {exc}; the pod asks for a GPU fraction and is refused rather than run "
                   "without its memory wall (retry once the cause is fixed)")
        return Decision(_response(uid, False, message=message, code=503), "error", message)
    return Decision(_response(uid, True, patch=json_patch(pod, translation)), "translated", translation.summary)
