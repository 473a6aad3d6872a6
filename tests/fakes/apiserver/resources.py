"""The resource types the fake API server serves, and how each one behaves.

One `ResourceType` per REST resource: where it lives (group/version/plural), which OpenAPI schema
its objects must satisfy, whether it has a `status` subresource, and which field selectors the
real API server accepts for it (an unsupported field selector is a 400 there, so it is here too).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ResourceType:
    """A REST resource as the real API server exposes it."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    schema_key: str  # components.schemas key in the group-version's OpenAPI v3 document
    status_subresource: bool = False
    # Fields after metadata.name/metadata.namespace that ?fieldSelector= accepts.
    field_selectors: frozenset[str] = field(default_factory=frozenset)
    # Spec immutable after create (a change is 422), like ResourceClaim.spec.
    spec_immutable: bool = False
    # Status kept from the request on create (Node: the kubelet registers with status) rather
    # than reset like claims and pods.
    keep_status_on_create: bool = False
    short_names: tuple[str, ...] = ()
    # Kind (of another resource type) whose storage this one is a view of: events.k8s.io Events
    # are core Events in another shape.
    stored_as: str | None = None
    verbs: tuple[str, ...] = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")

    @property
    def api_version(self) -> str:
        """`apiVersion` of objects of this type ("v1" or "group/version")."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        """The key used for discovery documents and the OpenAPI file name."""
        return self.api_version

    @property
    def list_kind(self) -> str:
        """`kind` of a list response."""
        return self.kind + "List"


def _fs(*names: str) -> frozenset[str]:
    return frozenset(names)


_CORE_EVENT_FIELDS = _fs(
    "involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
    "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
    "reason", "reportingComponent", "source", "type",
)

RESOURCE_TYPES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "pods", "Pod", True, "io.k8s.api.core.v1.Pod", status_subresource=True,
                 field_selectors=_fs("spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
                                     "spec.serviceAccountName", "spec.hostNetwork", "status.phase",
                                     "status.podIP", "status.nominatedNodeName"),
                 short_names=("po",)),
    ResourceType("", "v1", "nodes", "Node", False, "io.k8s.api.core.v1.Node", status_subresource=True,
                 field_selectors=_fs("spec.unschedulable"), keep_status_on_create=True, short_names=("no",)),
    ResourceType("", "v1", "namespaces", "Namespace", False, "io.k8s.api.core.v1.Namespace",
                 status_subresource=True, field_selectors=_fs("status.phase"), keep_status_on_create=True,
                 short_names=("ns",)),
    ResourceType("", "v1", "events", "Event", True, "io.k8s.api.core.v1.Event",
                 field_selectors=_CORE_EVENT_FIELDS, short_names=("ev",)),
    ResourceType("", "v1", "configmaps", "ConfigMap", True, "io.k8s.api.core.v1.ConfigMap", short_names=("cm",)),
    ResourceType("", "v1", "resourcequotas", "ResourceQuota", True, "io.k8s.api.core.v1.ResourceQuota",
                 status_subresource=True, short_names=("quota",)),
    ResourceType("events.k8s.io", "v1", "events", "Event", True, "io.k8s.api.events.v1.Event",
                 field_selectors=_CORE_EVENT_FIELDS, short_names=("ev",), stored_as="Event"),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease", True, "io.k8s.api.coordination.v1.Lease"),
    ResourceType("resource.k8s.io", "v1", "resourceclaims", "ResourceClaim", True,
                 "io.k8s.api.resource.v1.ResourceClaim", status_subresource=True, spec_immutable=True),
    ResourceType("resource.k8s.io", "v1", "resourceclaimtemplates", "ResourceClaimTemplate", True,
                 "io.k8s.api.resource.v1.ResourceClaimTemplate"),
    ResourceType("resource.k8s.io", "v1", "resourceslices", "ResourceSlice", False,
                 "io.k8s.api.resource.v1.ResourceSlice", field_selectors=_fs("spec.nodeName", "spec.driver")),
    ResourceType("resource.k8s.io", "v1", "deviceclasses", "DeviceClass", False,
                 "io.k8s.api.resource.v1.DeviceClass"),
    ResourceType("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations",
                 "MutatingWebhookConfiguration", False,
                 "io.k8s.api.admissionregistration.v1.MutatingWebhookConfiguration"),
)

_BY_PATH: dict[tuple[str, str, str], ResourceType] = {
    (rt.group, rt.version, rt.plural): rt for rt in RESOURCE_TYPES
}
_BY_KIND: dict[str, ResourceType] = {}
for _rt in RESOURCE_TYPES:
    # The first registration wins for a bare kind ("Event" → core/v1); "Kind.group" is unique.
    _BY_KIND.setdefault(_rt.kind, _rt)
    _BY_KIND[f"{_rt.kind}.{_rt.group}" if _rt.group else _rt.kind] = _rt
    _BY_KIND.setdefault(_rt.plural, _rt)
    _BY_KIND[f"{_rt.plural}.{_rt.group}" if _rt.group else _rt.plural] = _rt


def resource_for_path(group: str, version: str, plural: str) -> ResourceType | None:
    """The resource served at /api[s]/<group>/<version>/<plural>, or None."""
    return _BY_PATH.get((group, version, plural))


def resource_named(name: str) -> ResourceType:
    """Look a resource type up by kind ("ResourceClaim"), plural ("pods") or "Kind.group"."""
    try:
        return _BY_KIND[name]
    except KeyError:
        known = sorted({rt.kind for rt in RESOURCE_TYPES})
        raise KeyError(f"the fake API server does not serve {name!r}; known kinds: {known}") from None


def group_versions() -> dict[str, list[ResourceType]]:
    """Served resources grouped by group/version, for discovery."""
    out: dict[str, list[ResourceType]] = {}
    for rt in RESOURCE_TYPES:
        out.setdefault(rt.group_version, []).append(rt)
    return out
