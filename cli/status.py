"""`vgpu-dra status` (also `kubectl vgpu`): the cluster's vGPUs — per node and GPU, the memory and
cores allocated and the claims holding them; claims still waiting, with their last refusal; pending
pods still written for HAMi, which nothing may serve (the `hami-pods` check of `vgpu-dra doctor`).

    vgpu-dra status
    kubectl vgpu --kubeconfig ~/.kube/prod -o json

Reads the API server only (ResourceSlices, ResourceClaims, DeviceClasses, Events, ResourceQuotas
for the namespace GPU quotas, see docs/quotas.md; pending Pods and MutatingWebhookConfigurations
for the HAMi check, which says so when it cannot list them); works in both
allocator modes, since what a claim takes is read from its allocation as kube-scheduler or the
controller wrote it. Exit status 0, or 1 when the API cannot be read.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from vgpu_dra.api.names import ALLOCATOR_LABEL, DRIVER_NAME
from vgpu_dra.api.quantity import humanize_bytes
from vgpu_dra.cli.hami_check import hami_verdict
from vgpu_dra.cli.status_quotas import QuotasStatus, list_quotas, namespace_quotas, quotas_json, render_quotas
from vgpu_dra.cli.table_format import format_table
from vgpu_dra.controller.kubeapi import (DEVICE_CLASSES, EVENTS, RESOURCE_CLAIMS, RESOURCE_SLICES, ApiError,
                                         KubeApi, Resource)
from vgpu_dra.driver.claim_model import (EXCLUSIVE_MEMORY_BYTES, allocated_node, allocation, booked_consumptions,
                                         meta, request_class_names, reserved_for)
from vgpu_dra.driver.doctor_checks import Status, Verdict
from vgpu_dra.driver.published_gpus import gpus_by_node

EXIT_OK, EXIT_ERROR = 0, 1
JsonObject = Mapping[str, Any]


class StatusError(Exception):
    """The API server could not be read; the message says which object and why."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``status`` subcommand."""
    parser = subparsers.add_parser("status", help="cluster-wide vGPU allocation per node and GPU (reads the API)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `status`, shared with the `kubectl-vgpu` entry point."""
    parser.add_argument("--kubeconfig", default=None,
                        help="kubeconfig file (default: in-cluster, else $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.set_defaults(handler=run)


# --- the model (pure) -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClaimShare:
    """What one claim takes from one GPU."""

    namespace: str
    name: str
    memory_bytes: int
    cores: int
    pods: tuple[str, ...]
    exclusive: bool


@dataclass
class GpuStatus:
    """One published GPU (or a device claims name that no slice lists any more)."""

    node: str
    device: str
    uuid: str
    product: str
    memory_bytes: int | None  # None: no slice publishes this device now
    memory_allocated_bytes: int = 0
    cores_allocated: int = 0
    claims: list[ClaimShare] = field(default_factory=list)


@dataclass(frozen=True)
class PendingClaim:
    """A claim of ours with no allocation yet, and the newest warning about it."""

    namespace: str
    name: str
    reason: str | None
    message: str | None


@dataclass(frozen=True)
class ClusterStatus:
    """Everything `status` shows."""

    gpus: tuple[GpuStatus, ...]
    pending: tuple[PendingClaim, ...]
    quotas: QuotasStatus = QuotasStatus()
    hami: Verdict | None = None  # the hami-pods check; None when it was not read


def _our_class_names(classes: Iterable[JsonObject]) -> set[str]:
    """DeviceClasses of this driver: labelled with its allocator, or selecting its devices."""
    names = set()
    for device_class in classes:
        labels = meta(device_class).get("labels") or {}
        selectors = json.dumps((device_class.get("spec") or {}).get("selectors") or [])
        if ALLOCATOR_LABEL in labels or DRIVER_NAME in selectors:
            names.add(meta(device_class).get("name", ""))
    return names


def _newest_warning(events: Iterable[JsonObject], claim: JsonObject) -> JsonObject | None:
    uid, name, namespace = meta(claim).get("uid"), meta(claim).get("name"), meta(claim).get("namespace")
    mine = [event for event in events
            if event.get("type") == "Warning"
            and (event.get("involvedObject") or {}).get("kind") == "ResourceClaim"
            and ((event.get("involvedObject") or {}).get("uid") == uid
                 or ((event.get("involvedObject") or {}).get("name"), event.get("metadata", {}).get("namespace"))
                 == (name, namespace))]
    if not mine:
        return None
    return max(mine, key=lambda event: (event.get("lastTimestamp") or event.get("eventTime")
                                        or meta(event).get("creationTimestamp") or ""))


def cluster_status(slices: Sequence[JsonObject], claims: Sequence[JsonObject], classes: Sequence[JsonObject],
                   events: Sequence[JsonObject], quotas: Sequence[JsonObject] = (),
                   quotas_unreadable: str | None = None) -> ClusterStatus:
    """Join what nodes publish with what claims take (`booked_consumptions`, as the controller books)."""
    gpus: dict[tuple[str, str], GpuStatus] = {}
    capacity: dict[tuple[str, str], tuple[int, int]] = {}
    for node in sorted(gpus_by_node(slices).values(), key=lambda n: n.node):
        for gpu in node.gpus:
            gpus[(node.pool, gpu.name)] = GpuStatus(node=node.node, device=gpu.name, uuid=gpu.uuid,
                                                    product=gpu.product_name, memory_bytes=gpu.memory_bytes)
            capacity[(node.pool, gpu.name)] = (gpu.memory_bytes, gpu.cores)
    ours = _our_class_names(classes)
    pending = []
    for claim in sorted(claims, key=lambda c: (meta(c).get("namespace", ""), meta(c).get("name", ""))):
        if allocation(claim) is None:
            if ours.intersection(request_class_names(claim)) and not meta(claim).get("deletionTimestamp"):
                warning = _newest_warning(events, claim)
                pending.append(PendingClaim(meta(claim).get("namespace", ""), meta(claim).get("name", ""),
                                            warning.get("reason") if warning else None,
                                            warning.get("message") if warning else None))
            continue
        pods = tuple(sorted(ref.get("name", "") for ref in reserved_for(claim) if ref.get("resource") == "pods"))
        whole = _whole_gpu_results(claim)
        for taken in booked_consumptions(claim, capacity):
            key = (taken.node, taken.device)
            gpu_status = gpus.get(key)
            if gpu_status is None:  # allocated on a device no slice publishes (node gone, plugin down)
                gpu_status = gpus[key] = GpuStatus(node=allocated_node(claim) or taken.node, device=taken.device,
                                                   uuid="", product="", memory_bytes=None)
            exclusive = key in whole and taken.memory_bytes >= (gpu_status.memory_bytes or EXCLUSIVE_MEMORY_BYTES)
            memory = (gpu_status.memory_bytes or 0) if exclusive else taken.memory_bytes
            gpu_status.memory_allocated_bytes += memory
            gpu_status.cores_allocated += taken.cores
            gpu_status.claims.append(ClaimShare(meta(claim).get("namespace", ""), meta(claim).get("name", ""),
                                                memory, taken.cores, pods, exclusive))
    ordered = sorted(gpus.values(), key=lambda g: (g.node, _device_number(g.device), g.device))
    return ClusterStatus(gpus=tuple(ordered), pending=tuple(pending),
                         quotas=namespace_quotas(quotas, claims, capacity, classes, quotas_unreadable))


def _whole_gpu_results(claim: JsonObject) -> set[tuple[str, str]]:
    """(pool, device) of results that hold a device without a share (no shareID)."""
    results = ((allocation(claim) or {}).get("devices") or {}).get("results") or []
    return {(r.get("pool", ""), r.get("device", "")) for r in results
            if r.get("driver") == DRIVER_NAME and not r.get("shareID") and not r.get("adminAccess")}


def _device_number(name: str) -> int:
    suffix = name.rpartition("-")[2]
    return int(suffix) if suffix.isdigit() else 1 << 30


# --- output -----------------------------------------------------------------------------------------

def status_json(status: ClusterStatus) -> dict[str, Any]:
    """The JSON document of ``-o json``."""
    return {
        "gpus": [{
            "node": gpu.node, "device": gpu.device, "uuid": gpu.uuid, "product": gpu.product,
            "memoryBytes": gpu.memory_bytes, "memoryAllocatedBytes": gpu.memory_allocated_bytes,
            "coresAllocated": gpu.cores_allocated,
            "claims": [{"namespace": share.namespace, "name": share.name, "memoryBytes": share.memory_bytes,
                        "cores": share.cores, "pods": list(share.pods), "exclusive": share.exclusive}
                       for share in gpu.claims],
        } for gpu in status.gpus],
        "pending": [{"namespace": p.namespace, "name": p.name, "reason": p.reason, "message": p.message}
                    for p in status.pending],
        "quotas": quotas_json(status.quotas),
        "hamiPods": None if status.hami is None else {
            "status": status.hami.status.value, "message": status.hami.message, "fix": status.hami.fix},
    }


def render_status(status: ClusterStatus) -> str:
    """The tables shown on a terminal."""
    no_gpus = (f"No GPUs published by {DRIVER_NAME}: is the kubelet plugin running on the GPU nodes? "
               "(vgpu-dra doctor checks a node)\n")
    rows = []
    for gpu in status.gpus:
        if gpu.memory_bytes is None:
            memory = f"{humanize_bytes(gpu.memory_allocated_bytes)} of ? (not published)"
        else:
            percent = 100 * gpu.memory_allocated_bytes // gpu.memory_bytes if gpu.memory_bytes else 0
            memory = f"{humanize_bytes(gpu.memory_allocated_bytes)} of {humanize_bytes(gpu.memory_bytes)} ({percent} %)"
        claims = ", ".join(f"{share.namespace}/{share.name}" + (" (whole GPU)" if share.exclusive else "")
                           for share in gpu.claims)
        rows.append([gpu.node, gpu.device, gpu.product or "-", memory, f"{gpu.cores_allocated} %", claims or "-"])
    text = format_table(["NODE", "GPU", "PRODUCT", "MEMORY ALLOCATED", "CORES", "CLAIMS"], rows) if rows else no_gpus
    shares = [[f"{share.namespace}/{share.name}", ", ".join(share.pods) or "-", gpu.node, gpu.device,
               humanize_bytes(share.memory_bytes), f"{share.cores} %" if share.cores else "no cap"]
              for gpu in status.gpus for share in gpu.claims]
    if shares:
        text += "\nClaims\n" + format_table(["CLAIM", "PODS", "NODE", "GPU", "MEMORY", "CORES"], shares)
    if status.pending:
        text += "\nPending claims\n" + format_table(
            ["CLAIM", "LAST REFUSAL"],
            [[f"{p.namespace}/{p.name}", f"{p.reason}: {p.message}" if p.reason else "(no event yet)"]
             for p in status.pending])
    return text + render_hami(status.hami) + render_quotas(status.quotas)


def render_hami(verdict: Verdict | None) -> str:
    """The section on pods written for HAMi: shown only when some wait (or they cannot be read)."""
    if verdict is None or verdict.status is Status.OK:
        return ""
    return f"\nPods written for HAMi\n  {verdict.message}\n" + (f"  fix: {verdict.fix}\n" if verdict.fix else "")


# --- I/O --------------------------------------------------------------------------------------------

def _list(api: KubeApi, resource: Resource, what: str, field_selector: str | None = None) -> list[dict[str, Any]]:
    """Every item of a cluster-wide list, page by page."""
    try:
        return [item for page in api.pages(resource, field_selector=field_selector) for item in page.get("items") or []]
    except ApiError as exc:
        if exc.status == 404:
            raise StatusError(f"the API server does not serve {what} ({resource.path()}): DRA "
                              "(resource.k8s.io/v1) needs Kubernetes ≥ 1.34") from None
        if exc.status in (401, 403):
            raise StatusError(f"not allowed to list {what} (HTTP {exc.status}): check your kubeconfig's "
                              "user") from None
        if exc.status == 0:
            raise StatusError(f"cannot list {what}: no answer from the API server at "
                              f"{api.api_client.configuration.host} ({root_cause(exc.message)})") from None
        raise StatusError(f"cannot list {what}: {exc}") from None


def root_cause(message: str) -> str:
    """The last "[Errno …] …" clause of a urllib3 error chain (what a user can act on), else the message."""
    marker = message.rfind("[Errno")
    return message[marker:].rstrip("\"')) ") if marker >= 0 else message


def read_cluster(api_client: Any) -> ClusterStatus:
    """List what `status` needs and build the view."""
    api = KubeApi(api_client)
    slices = _list(api, RESOURCE_SLICES, "ResourceSlices")
    claims = _list(api, RESOURCE_CLAIMS, "ResourceClaims")
    classes = _list(api, DEVICE_CLASSES, "DeviceClasses")
    pending_any = any(allocation(claim) is None for claim in claims)
    # Only the warnings about claims: a cluster's events are many.
    events = (_list(api, EVENTS, "Events", field_selector="involvedObject.kind=ResourceClaim,type=Warning")
              if pending_any else [])
    quotas, unreadable = list_quotas(api)
    return replace(cluster_status(slices, claims, classes, events, quotas, unreadable), hami=hami_verdict(api))


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print the cluster's status; returns the exit status."""
    from vgpu_dra.cli.kube_client import ClusterConfigError, api_client

    out = out or sys.stdout
    err = err or sys.stderr
    try:
        try:
            client = api_client(args.kubeconfig, component="vgpu-dra-status")
        except ClusterConfigError as exc:
            raise StatusError(str(exc)) from None
        with client:
            status = read_cluster(client)
    except StatusError as exc:
        print(f"vgpu-dra status: error: {exc}", file=err)
        return EXIT_ERROR
    if args.output == "json":
        out.write(json.dumps(status_json(status), indent=2) + "\n")
    else:
        out.write(render_status(status))
    return EXIT_OK


def kubectl_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `kubectl-vgpu` (kubectl's plugin mechanism runs it as `kubectl vgpu`)."""
    parser = argparse.ArgumentParser(prog="kubectl vgpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return int(args.handler(args))
