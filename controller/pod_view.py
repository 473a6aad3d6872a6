"""What the controller reads of a pod: its phase as it matters for allocation, and a small cached copy.

Pure functions over raw pod JSON.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vgpu_dra.driver.claim_model import meta

from .kubeapi import JsonObject


def pod_pending(pod: Mapping[str, Any] | None) -> bool:
    """Not bound to a node yet, not finished and not being deleted."""
    if not pod:
        return False
    if meta(pod).get("deletionTimestamp"):
        return False
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return False
    return not (pod.get("spec") or {}).get("nodeName")


def pod_essentials(pod: JsonObject) -> JsonObject:
    """The part of a pod the controller reads (placement constraints, claims, phase, nominated
    node), so the pod cache stays small however large the cluster's pod specs are."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    trimmed_spec = {k: spec[k] for k in ("nodeName", "nodeSelector", "tolerations", "resourceClaims", "schedulingGates")
                    if k in spec}
    if (spec.get("affinity") or {}).get("nodeAffinity"):
        trimmed_spec["affinity"] = {"nodeAffinity": spec["affinity"]["nodeAffinity"]}
    return {
        "apiVersion": pod.get("apiVersion", "v1"), "kind": pod.get("kind", "Pod"),
        "metadata": {k: metadata[k] for k in ("name", "namespace", "uid", "resourceVersion", "deletionTimestamp")
                     if k in metadata},
        "spec": trimmed_spec,
        "status": {k: status[k] for k in ("phase", "resourceClaimStatuses", "nominatedNodeName")
                   if k in status},
    }


def pod_awaits_claims(pod: Mapping[str, Any] | None) -> bool:
    """Pending, or already bound by whoever created it (``spec.nodeName`` set, scheduler bypassed)
    but not finished or being deleted: its unallocated claims are still to be allocated."""
    if not pod or meta(pod).get("deletionTimestamp"):
        return False
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def pod_alive(pod: Mapping[str, Any] | None) -> bool:
    """Exists and has not finished."""
    return bool(pod) and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
