"""What a bench round's writes were, request by request: kube-apiserver's audit log, summed up.

`bench/real_cluster.py --audit` starts the control plane with an audit policy that records every
write to pods and claims (tests/cluster/control_plane.py, `audit_writes`). Each round then prints
who wrote its claims, how often, and how many of those writes were refused (409 conflicts, 404s):
the pods' whole life, their teardown included, since a round ends once its namespace is gone.
`write_path_lines` lays out the writes on a pod's way from its create to its binding, each with
kube-apiserver's own timestamps (request received → response complete).
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bench.latency_stats import percentile

REFUSED = (404, 409)


@dataclass(frozen=True)
class Write:
    """One audited request: by whom (the identity's last part), what, and the answer's code."""

    user: str
    verb: str
    resource: str   # plural, with "/subresource" where there is one
    code: int
    name: str = ""  # the object's (empty for a create the server names)
    received: float = 0.0   # kube-apiserver's request-received time, s since the epoch
    completed: float = 0.0  # … and its response-complete time


def _seconds(stamp: str | None) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else 0.0


def writes_in(lines: Iterable[str], namespace: str) -> list[Write]:
    """The audited writes to objects in `namespace`, in the order the log holds them."""
    found = []
    for line in lines:
        if not line.strip():
            continue
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if ref.get("namespace") != namespace:
            continue
        resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        found.append(Write(user=event["user"]["username"].rsplit(":", 1)[-1], verb=event["verb"], resource=resource,
                           code=int((event.get("responseStatus") or {}).get("code") or 0), name=ref.get("name", ""),
                           received=_seconds(event.get("requestReceivedTimestamp")),
                           completed=_seconds(event.get("stageTimestamp"))))
    return found


def read(log: Path, namespace: str) -> list[Write]:
    """`writes_in` of the audit log file `log` (empty when it does not exist yet)."""
    if not log.exists():
        return []
    with log.open() as lines:
        return writes_in(lines, namespace)


def claim_writes_line(writes: list[Write]) -> str:
    """One line: claim requests by writer, how many were refused, the total."""
    claims = [w for w in writes if w.resource.startswith("resourceclaims")]
    by_user = Counter(w.user for w in claims)
    refused = Counter(w.user for w in claims if w.code in REFUSED)
    parts = [f"{user} {count}" + (f" ({refused[user]} refused)" if refused[user] else "")
             for user, count in by_user.most_common()]
    return f"{len(claims)} claim requests, {sum(refused.values())} refused (404/409): " + ", ".join(parts)


def _step(write: Write) -> str:
    return f"{write.user}: {write.verb} {write.resource}"


def write_paths(writes: list[Write]) -> dict[str, list[Write]]:
    """Per pod (by name), the writes to it and to its claims from its create to its binding, in
    the order the server received them. A claim is the pod's when its name starts with the pod's
    and a dash (kube-controller-manager names a template's claims so); pods never bound are left out."""
    pods = {w.name: w.received for w in writes if w.resource == "pods" and w.verb == "create" and w.code < 300}
    by_length = sorted(pods, key=len, reverse=True)
    paths: dict[str, list[Write]] = defaultdict(list)
    for write in writes:
        owner = write.name if write.resource.startswith("pods") else next(
            (pod for pod in by_length if write.name.startswith(pod + "-")), None)
        if owner in pods and write.received >= pods[owner]:
            paths[owner].append(write)
    bound = {}
    for pod, path in paths.items():
        path.sort(key=lambda w: w.received)
        ends = [i for i, w in enumerate(path) if w.resource == "pods/binding" and w.code < 300]
        if ends:
            bound[pod] = path[:ends[0] + 1]
    return bound


def write_path_lines(writes: list[Write]) -> list[str]:
    """Each step on the pods' way to their binding (who wrote what, first time only), in order of
    its median start: how many pods took it, and the medians of its start and end in ms from the
    pod's create request."""
    starts: dict[str, list[float]] = defaultdict(list)
    ends: dict[str, list[float]] = defaultdict(list)
    paths = write_paths(writes)
    for path in paths.values():
        created, seen = path[0].received, set()
        for write in path:
            if _step(write) in seen:
                continue
            seen.add(_step(write))
            starts[_step(write)].append((write.received - created) * 1000)
            ends[_step(write)].append((write.completed - created) * 1000)
    order = sorted(starts, key=lambda step: percentile(starts[step], 0.5))
    return [f"{step}: {len(starts[step])} of {len(paths)} pods, p50 {percentile(starts[step], 0.5):.1f} → "
            f"{percentile(ends[step], 0.5):.1f} ms" for step in order]
