"""A ResourceClaim's allocation → the limits of each device this driver must enforce on this node.

Pure: takes the claim as the raw JSON the API server returned (so fields newer than the Python
client's models survive) and returns data. The size of a device comes from, in order:

1. the result's ``consumedCapacity`` (kube-scheduler or the controller shared the device);
2. else the merged ``VgpuConfig`` entries of ``allocation.devices.config`` that apply to the
   result's request (class entries, then claim entries, then the controller's resolved entry:
   later wins), skipping entries of other drivers;
3. else the whole GPU with no core cap.

``consumedCapacity`` wins over configs for memory and cores; the core policy, which capacity cannot
express, still comes from the configs. One exception keeps a claim's limits the same whichever
allocator placed it: kube-scheduler does not read VgpuConfig, so for a capacity the request did
not name it books the slice's default (the whole memory, 0 cores); there the VgpuConfig, when it
states that capacity, decides — as the controller does, whose own results (its finalizer is on
the claim) already carry the resolved values. Every refusal is a ``ClaimRejected`` whose message
is meant for the kubelet's event on the pod.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from vgpu_dra.api.config import InvalidConfigError, VgpuConfig, merge_configs, parse_config
from vgpu_dra.api.names import CAPACITY_CORES, CAPACITY_MEMORY, DRIVER_NAME, FINALIZER
from vgpu_dra.driver.limits import LimitError, ResolvedShare, ShareRequest

LimitSource = Literal["consumedCapacity", "config", "wholeGpu"]


class ClaimRejected(ValueError):
    """The claim cannot be prepared on this node; the message says why in user terms."""


class ClaimUidMismatch(ClaimRejected):
    """The API server has a different claim under that name (deleted and re-created)."""


class ClaimNotAllocated(ClaimRejected):
    """The claim has no allocation yet (or it was cleared)."""


class ClaimOnOtherNode(ClaimRejected):
    """The allocation's node selector or pool is not this node."""


class InvalidClaimConfig(ClaimRejected):
    """An opaque config of this driver, or a capacity, cannot be turned into limits."""


@dataclass(frozen=True, slots=True)
class DeviceLimit:
    """One allocated device of this driver with the share to enforce on it."""

    request: str
    """The result's request as written (``req`` or ``req/subrequest``)."""
    pool: str
    device: str
    share_id: str | None
    share: ResolvedShare
    source: LimitSource

    @property
    def request_name(self) -> str:
        """The request name the kubelet expects (without ``/subrequest``)."""
        return self.request.split("/", 1)[0]


@dataclass(frozen=True, slots=True)
class ClaimAllocation:
    """What a claim got on this node from this driver."""

    uid: str
    namespace: str
    name: str
    devices: tuple[DeviceLimit, ...]
    reserved_for_pods: tuple[str, ...]
    # (name, uid) of each reserving pod: the usage watchdog knows a pod's processes by its UID.
    reserved_for_pod_refs: tuple[tuple[str, str], ...] = ()


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _label_requirement_holds(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op, values = expr.get("key"), expr.get("operator"), list(expr.get("values") or ())
    present = key in labels
    value = labels.get(key, "")
    if op == "In":
        return present and value in values
    if op == "NotIn":
        return not present or value not in values
    if op == "Exists":
        return present
    if op == "DoesNotExist":
        return not present
    if op in ("Gt", "Lt") and present and len(values) == 1:
        try:
            have, want = int(value), int(values[0])
        except ValueError:
            return False
        return have > want if op == "Gt" else have < want
    return False


def _field_requirement_holds(expr: Mapping[str, Any], node_name: str) -> bool:
    if expr.get("key") != "metadata.name":
        return False  # the only node field a selector may name
    values = list(expr.get("values") or ())
    if expr.get("operator") == "In":
        return node_name in values
    if expr.get("operator") == "NotIn":
        return node_name not in values
    return False


def node_selector_matches(selector: Mapping[str, Any] | None, node_name: str,
                          node_labels: Mapping[str, str]) -> bool:
    """Whether a core/v1 NodeSelector selects the node (terms are ORed, requirements ANDed)."""
    if not selector:
        return True
    for term in selector.get("nodeSelectorTerms") or ():
        exprs = list(term.get("matchExpressions") or ())
        fields = list(term.get("matchFields") or ())
        if not exprs and not fields:
            continue  # an empty term selects nothing
        if all(_label_requirement_holds(e, node_labels) for e in exprs) and \
                all(_field_requirement_holds(f, node_name) for f in fields):
            return True
    return False


def _applies(entry: Mapping[str, Any], request: str) -> bool:
    requests = entry.get("requests") or ()
    return not requests or request in requests or request.split("/", 1)[0] in requests


def _configs_for(entries: Sequence[Mapping[str, Any]], request: str, driver: str) -> list[VgpuConfig]:
    configs: list[VgpuConfig] = []
    for position, entry in enumerate(entries):
        opaque = entry.get("opaque") or {}
        if opaque.get("driver") != driver or not _applies(entry, request):
            continue
        try:
            configs.append(parse_config(opaque.get("parameters") or {}))
        except InvalidConfigError as exc:
            source = entry.get("source", "config")
            raise InvalidClaimConfig(f"allocation config #{position} ({source}) for request {request!r}: {exc}") \
                from None
    return configs


def _capacity_name(name: str, driver: str) -> str:
    return name.removeprefix(f"{driver}/")


def requested_capacities(claim: Mapping[str, Any], request: str, driver: str = DRIVER_NAME) -> frozenset[str] | None:
    """The capacities (``memory``, ``cores``) a claim's request — ``req`` or ``req/subrequest`` —
    names in ``capacity.requests``; None when the claim's spec has no such request."""
    name, _, sub = request.partition("/")
    for raw in _get(claim, "spec", "devices", "requests") or ():
        if raw.get("name") != name:
            continue
        if sub:
            found = next((s for s in raw.get("firstAvailable") or () if s.get("name") == sub), None)
        else:
            found = raw.get("exactly")
        if found is None:
            return None
        return frozenset(_capacity_name(k, driver) for k in _get(found, "capacity", "requests") or {})
    return None


def _config_states(config: VgpuConfig | None, capacity: str) -> bool:
    if config is None:
        return False
    if capacity == CAPACITY_MEMORY:
        return config.memory is not None or config.memory_percent is not None
    return capacity == CAPACITY_CORES and config.cores is not None


def _scheduler_defaults_dropped(consumed: Mapping[str, Any], requested: frozenset[str], config: VgpuConfig | None,
                                driver: str) -> dict[str, Any]:
    """`consumed` without the slice defaults kube-scheduler booked for capacities the request did
    not name but its VgpuConfig states (those come from the config)."""
    return {k: v for k, v in consumed.items()
            if _capacity_name(k, driver) in requested or not _config_states(config, _capacity_name(k, driver))}


def _share_for(result: Mapping[str, Any], configs: list[VgpuConfig], usable_memory_bytes: int, *,
               requested: frozenset[str] | None, by_controller: bool,
               driver: str = DRIVER_NAME) -> tuple[ResolvedShare, LimitSource]:
    merged = merge_configs(configs)
    consumed = result.get("consumedCapacity") or None
    if consumed and requested is not None and not by_controller:
        consumed = _scheduler_defaults_dropped(consumed, requested, merged, driver) or None
    if result.get("adminAccess"):
        # Admin access is for monitoring tools: the whole device, never throttled.
        return ShareRequest().resolve(usable_memory_bytes), "wholeGpu"
    source: LimitSource = "consumedCapacity" if consumed else ("config" if merged else "wholeGpu")
    try:
        request = ShareRequest.from_sources(merged, consumed)
        return request.resolve(usable_memory_bytes), source
    except LimitError as exc:
        where = "consumedCapacity" if consumed else "VgpuConfig"
        raise InvalidClaimConfig(f"device {result.get('device')} ({where}): {exc}") from None


def claim_allocation(claim: Mapping[str, Any], *, expected_uid: str, node_name: str,
                     usable_memory: Mapping[str, int], node_labels: Mapping[str, str] | None = None,
                     driver: str = DRIVER_NAME) -> ClaimAllocation:
    """Check that `claim` may be prepared here and resolve its per-device limits.

    `usable_memory` maps this node's device names (``gpu-<index>``) to usable bytes; the node's
    pool is named after the node. Raises a ClaimRejected subclass naming the problem.
    """
    meta = claim.get("metadata") or {}
    namespace, name, uid = meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", "")
    label = f"claim {namespace}/{name}"
    if uid != expected_uid:
        raise ClaimUidMismatch(f"{label} has UID {uid or '(none)'}, the kubelet asked for {expected_uid}: "
                               "the claim was deleted and re-created")
    allocation = _get(claim, "status", "allocation")
    if not allocation:
        raise ClaimNotAllocated(f"{label} is not allocated")
    if not node_selector_matches(allocation.get("nodeSelector"), node_name, node_labels or {}):
        raise ClaimOnOtherNode(f"{label} is allocated to another node (nodeSelector does not select {node_name})")
    results = [r for r in _get(allocation, "devices", "results") or () if r.get("driver") == driver]
    if not results:
        raise ClaimNotAllocated(f"{label} has no devices of driver {driver} in its allocation")
    entries = list(_get(allocation, "devices", "config") or ())
    devices: list[DeviceLimit] = []
    for result in results:
        pool, device, request = result.get("pool", ""), result.get("device", ""), result.get("request", "")
        if pool != node_name:
            raise ClaimOnOtherNode(f"{label}: device {device} is in pool {pool!r}, this node's pool is {node_name!r}")
        if device not in usable_memory:
            raise ClaimOnOtherNode(f"{label}: device {device} does not exist on node {node_name} "
                                   f"(devices here: {', '.join(sorted(usable_memory)) or 'none'})")
        share, source = _share_for(result, _configs_for(entries, request, driver), usable_memory[device],
                                   requested=requested_capacities(claim, request, driver),
                                   by_controller=FINALIZER in (meta.get("finalizers") or ()), driver=driver)
        devices.append(DeviceLimit(request=request, pool=pool, device=device,
                                   share_id=result.get("shareID") or None, share=share, source=source))
    pods = tuple(sorted(r.get("name", "") for r in _get(claim, "status", "reservedFor") or ()
                        if r.get("resource") == "pods" and r.get("name")))
    return ClaimAllocation(uid=uid, namespace=namespace, name=name, devices=tuple(devices), reserved_for_pods=pods,
                           reserved_for_pod_refs=pod_refs(claim))


def pod_refs(claim: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """(name, uid) of the pods in a claim's ``status.reservedFor``, sorted by name."""
    return tuple(sorted((str(r.get("name", "")), str(r.get("uid", "")))
                        for r in _get(claim, "status", "reservedFor") or ()
                        if isinstance(r, Mapping) and r.get("resource") == "pods" and r.get("name")))
