"""kube-scheduler's side of a shared device (DRAConsumableCapacity), as its structured allocator
writes it: the `consumedCapacity` of a result and the allocation a claim gets. Pure; for tests
that need what kube-scheduler would have written without running one.

Per capacity of the device (the DRA reference's consumable-capacity rules, §5.4): a capacity the request
does not name consumes `requestPolicy.default`, or the whole value when there is no policy; a
named one is rounded up to `min + n*step` within `validRange` (or to the next of `validValues`),
and a device it does not fit is not eligible. kube-scheduler never reads opaque configs: it
copies the class's, then the claim's, into the allocation for the driver.
"""
from __future__ import annotations

import uuid
from collections.abc import Mapping
from decimal import ROUND_CEILING, Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity


class NotEligible(ValueError):
    """The request does not fit the device's requestPolicy."""


def _round_up(amount: Decimal, policy: Mapping[str, Any], name: str) -> Decimal:
    if "validValues" in policy:
        for value in sorted(parse_quantity(v) for v in policy["validValues"]):
            if value >= amount:
                return value
        raise NotEligible(f"{name}: {amount} is above every valid value")
    valid = policy.get("validRange") or {}
    low = parse_quantity(valid.get("min", "0"))
    step = parse_quantity(valid["step"]) if valid.get("step") else None
    if amount < low:
        amount = low
    elif step:
        amount = low + ((amount - low) / step).to_integral_value(rounding=ROUND_CEILING) * step
    if valid.get("max") is not None and amount > parse_quantity(valid["max"]):
        raise NotEligible(f"{name}: {amount} is above the maximum {valid['max']}")
    return amount


def consumed_capacity(device: Mapping[str, Any], requests: Mapping[str, str] | None, driver: str) -> dict[str, str]:
    """What one share of `device` (an `io.k8s.api.resource.v1.Device`) consumes for a request
    with capacity `requests` (keys plain or prefixed with the driver's domain)."""
    asked = {k.removeprefix(f"{driver}/"): v for k, v in (requests or {}).items()}
    out: dict[str, str] = {}
    for name, capacity in device["capacity"].items():
        policy = capacity.get("requestPolicy")
        if name in asked:
            amount = parse_quantity(asked[name])
            amount = _round_up(amount, policy, name) if policy else amount
            if amount > parse_quantity(capacity["value"]):
                raise NotEligible(f"{name}: {amount} is more than the device has")
        elif policy and policy.get("default") is not None:
            amount = parse_quantity(policy["default"])
        else:
            amount = parse_quantity(capacity["value"])
        out[name] = str(int(amount))
    return out


def allocate_share(claim: Mapping[str, Any], device_class: Mapping[str, Any], device: Mapping[str, Any], *,
                   node: str, driver: str, request: str = "gpu") -> dict[str, Any]:
    """`claim` with the `status.allocation` kube-scheduler writes when it gives `request` a share
    of `device` on `node`."""
    spec = (claim.get("spec") or {}).get("devices") or {}
    raw = next(r for r in spec.get("requests") or () if r["name"] == request)
    requests = ((raw.get("exactly") or {}).get("capacity") or {}).get("requests")
    config = [{"source": "FromClass", "requests": [request], "opaque": e["opaque"]}
              for e in (device_class.get("spec") or {}).get("config") or () if e.get("opaque")]
    config += [{"source": "FromClaim", **({"requests": e["requests"]} if e.get("requests") else {}),
                "opaque": e["opaque"]} for e in spec.get("config") or () if e.get("opaque")]
    allocation = {
        "devices": {
            "results": [{"request": request, "driver": driver, "pool": node, "device": device["name"],
                         "shareID": str(uuid.uuid4()),
                         "consumedCapacity": consumed_capacity(device, requests, driver)}],
            "config": config,
        },
        "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": [node]}]}]},
    }
    return {**claim, "status": {"allocation": allocation}}
