"""What a bench round's writes were, request by request: kube-apiserver's audit log, summed up.

`bench/real_cluster.py --audit` starts the control plane with an audit policy that records every
write to pods and claims (tests/cluster/control_plane.py, `audit_writes`). Each round then prints
who wrote its claims, how often, and how many of those writes were refused (409 conflicts, 404s):
the pods' whole life, their teardown included, since a round ends once its namespace is gone.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

REFUSED = (404, 409)


@dataclass(frozen=True)
class Write:
    """One audited request: by whom (the identity's last part), what, and the answer's code."""

    user: str
    verb: str
    resource: str   # plural, with "/subresource" where there is one
    code: int


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
                           code=int((event.get("responseStatus") or {}).get("code") or 0)))
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
