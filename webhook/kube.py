"""The webhook's writes to the API server: the pods' ResourceClaimTemplates, its TLS Secret and the
caBundle of its MutatingWebhookConfiguration (a JSON patch of that one field, never the whole object)."""
from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

import structlog

from vgpu_dra.controller.kubeapi import MUTATING_WEBHOOK_CONFIGURATIONS, ApiError, KubeApi, Resource
from vgpu_dra.webhook.admission import TemplateError
from vgpu_dra.webhook.certs import TlsMaterial

JsonObject = dict[str, Any]
RESOURCE_CLAIM_TEMPLATES = Resource("resource.k8s.io", "v1", "resourceclaimtemplates", True)
SECRETS = Resource("", "v1", "secrets", True)
log = structlog.get_logger("vgpu_dra.webhook")


class TemplateEnsurer:
    """Makes sure each template exists in the pod's namespace with the given spec (create; on
    AlreadyExists compare). Idempotent: the name is the spec's digest, so replicas racing on the
    same shape create it once and the others find it."""

    def __init__(self, api: KubeApi):
        self.api = api

    def __call__(self, namespace: str, templates: Sequence[JsonObject], dry_run: bool) -> None:
        for template in templates:
            name = template["metadata"]["name"]
            if dry_run:
                continue  # a dry run creates nothing, so the template need not exist
            body = {**template, "metadata": {**template["metadata"], "namespace": namespace}}
            try:
                self.api.create(RESOURCE_CLAIM_TEMPLATES, body, namespace, timeout_s=5)
                log.info("created ResourceClaimTemplate", namespace=namespace, name=name)
                continue
            except ApiError as exc:
                if not exc.conflict:
                    raise TemplateError(f"could not create ResourceClaimTemplate {namespace}/{name}: {exc}") from None
            try:
                found = self.api.get(RESOURCE_CLAIM_TEMPLATES, name, namespace, timeout_s=5)
            except ApiError as exc:
                raise TemplateError(f"could not read ResourceClaimTemplate {namespace}/{name}: {exc}") from None
            if not _same_shape(template["spec"], found.get("spec")):
                raise TemplateError(
                    f"ResourceClaimTemplate {namespace}/{name} exists with another spec (it was edited); delete it "
                    "and the webhook recreates it")


def _defaulted(spec: JsonObject) -> JsonObject:
    """`spec` with the defaults the API server stores for a request that names no count."""
    out = json.loads(json.dumps(spec))
    for request in ((out.get("spec") or {}).get("devices") or {}).get("requests") or []:
        exactly = request.get("exactly")
        if isinstance(exactly, dict):
            exactly.setdefault("allocationMode", "ExactCount")
            if exactly["allocationMode"] == "ExactCount":
                exactly.setdefault("count", 1)
    return out


def _covers(expected: Any, found: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(found, dict) and all(k in found and _covers(v, found[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(found, list) and len(found) == len(expected) and all(
            _covers(e, f) for e, f in zip(expected, found))
    return bool(expected == found)


def _same_shape(expected: JsonObject, found: Any) -> bool:
    """Whether a stored template gives what `expected` asks: every field we set, as we set it
    (defaults included), while fields a newer server adds on its own do not count as an edit."""
    return _covers(_defaulted(expected), found)


def decode_secret(secret: JsonObject) -> dict[str, str]:
    """A Secret's data, base64-decoded."""
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


class TlsStore:
    """The Secret holding the CA and serving certificate, and the webhook configuration to trust it."""

    def __init__(self, api: KubeApi, namespace: str, secret: str, webhook_config: str | None):
        self.api = api
        self.namespace = namespace
        self.secret = secret
        self.webhook_config = webhook_config

    def read(self) -> tuple[TlsMaterial | None, str | None]:
        """(material, resourceVersion); (None, None) when the Secret does not exist."""
        try:
            secret = self.api.get(SECRETS, self.secret, self.namespace)
        except ApiError as exc:
            if exc.not_found:
                return None, None
            raise
        return TlsMaterial.from_data(decode_secret(secret)), secret["metadata"]["resourceVersion"]

    def write(self, material: TlsMaterial, resource_version: str | None) -> None:
        """Create the Secret, or replace its data at `resource_version` (a conflict raises: the
        caller reads again, another replica renewed first)."""
        data = {k: base64.b64encode(v.encode()).decode() for k, v in material.as_data().items()}
        if resource_version is None:
            body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": self.secret, "namespace": self.namespace,
                                 "labels": {"app.kubernetes.io/managed-by": "vgpu-dra-webhook"}},
                    "data": data}
            self.api.create(SECRETS, body, self.namespace)
        else:
            patch = [{"op": "test", "path": "/metadata/resourceVersion", "value": resource_version},
                     {"op": "replace", "path": "/data", "value": data}]
            self.api.patch(SECRETS, self.secret, patch, self.namespace, patch_type="application/json-patch+json")

    def publish_bundle(self, bundle: str) -> bool:
        """Patch the caBundle of every webhook of the configuration that lacks it; True when
        something was patched. A configuration not (yet) installed is not an error."""
        if not self.webhook_config:
            return False
        try:
            config = self.api.get(MUTATING_WEBHOOK_CONFIGURATIONS, self.webhook_config)
        except ApiError as exc:
            if exc.not_found:
                log.warning("webhook configuration not found; caBundle not published yet", name=self.webhook_config)
                return False
            raise
        encoded = base64.b64encode(bundle.encode()).decode()
        ops: list[JsonObject] = []
        for index, webhook in enumerate(config.get("webhooks") or []):
            if (webhook.get("clientConfig") or {}).get("caBundle") != encoded:
                ops.append({"op": "test", "path": f"/webhooks/{index}/name", "value": webhook["name"]})
                ops.append({"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": encoded})
        if not ops:
            return False
        self.api.patch(MUTATING_WEBHOOK_CONFIGURATIONS, self.webhook_config, ops,
                       patch_type="application/json-patch+json")
        log.info("published caBundle", webhook_config=self.webhook_config, webhooks=len(ops) // 2)
        return True
