"""Writes the limits in force into prepared claims' ``status.devices`` (driver/claim_status.py).

A worker thread does the writes, so Prepare and Unprepare answer the kubelet without waiting
for the API server. Each write is a JSON merge patch of ``/status`` carrying the claim's
``resourceVersion``: only ``status.devices`` changes, and a concurrent writer (another driver,
the scheduler) makes it a conflict that is retried on a fresh read instead of a lost update.

The claim as Prepare read it (``RememberingClaimSource``) serves as the first read, so the
usual write is one PATCH and no GET; a claim already written by this process is not written
again when the kubelet repeats Prepare (which the checkpoint answers without the API server).

A write that fails is counted and logged (one line per claim); it never fails the Prepare: the
limit is in the claim's files and the shim enforces it whatever the status says.
"""
from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import structlog
from kubernetes import client

from vgpu_dra.driver.checkpoint import PreparedClaim
from vgpu_dra.driver.claim_status import device_statuses, with_ours, without_ours
from vgpu_dra.kubeletplugin.prepared import ClaimRef

log = structlog.get_logger(__name__)

_PATH = "/apis/resource.k8s.io/v1/namespaces/{namespace}/resourceclaims/{name}"
_CONFLICT_RETRIES = 5


class StatusWriteError(RuntimeError):
    """The API server refused or could not take the write; the message says which and why."""


@dataclass(frozen=True, slots=True)
class _Job:
    ref: ClaimRef
    claim: PreparedClaim | None  # None: remove our entries (Unprepare)


class RememberingClaimSource:
    """The preparer's claim reader, keeping the last claim read per UID for the status write."""

    def __init__(self, reader: Any):
        self._reader = reader
        self._recent: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        """Read the claim (as the wrapped reader does) and remember it."""
        claim = self._reader.get(namespace, name)
        uid = (claim.get("metadata") or {}).get("uid")
        if uid:
            with self._lock:
                self._recent[uid] = claim
        return claim

    def take(self, uid: str) -> dict[str, Any] | None:
        """The claim last read for ``uid``, once."""
        with self._lock:
            return self._recent.pop(uid, None)


class ClaimStatusWriter:
    """Queues status writes and performs them in order on one thread."""

    def __init__(self, api_client: client.ApiClient, driver: str, pool: str, *,
                 on_failure: Callable[[str], None], timeout: float = 10.0,
                 recent: RememberingClaimSource | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self._api = api_client
        self._driver = driver
        self._pool = pool
        self._on_failure = on_failure
        self._timeout = timeout
        self._clock = clock
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="claim-status", daemon=True)
        self._idle = threading.Condition()
        self._pending = 0
        self._recent = recent
        self._written: set[str] = set()  # claim UIDs whose status this process wrote

    def start(self) -> None:
        """Start the worker."""
        self._thread.start()

    def stop(self) -> None:
        """Finish the queued writes (bounded by the request timeout) and stop."""
        self._queue.put(None)
        self._thread.join(timeout=self._timeout * 2)

    def prepared(self, claim: PreparedClaim) -> None:
        """Write ``claim``'s limits into its status (queued; nothing when already written)."""
        self._enqueue(_Job(ClaimRef(claim.namespace, claim.uid, claim.name), claim))

    def unprepared(self, ref: ClaimRef) -> None:
        """Remove this node's entries from the claim's status (queued)."""
        self._enqueue(_Job(ref, None))

    def wait_idle(self, timeout: float) -> bool:
        """Block until every queued write is done (tests, shutdown); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def _enqueue(self, job: _Job) -> None:
        with self._idle:
            self._pending += 1
        self._queue.put(job)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            operation = "prepare" if job.claim is not None else "unprepare"
            try:
                self._write(job)
            except Exception as exc:  # noqa: BLE001 - a status write must never take the plugin down
                self._on_failure(operation)
                log.warning("cannot write the claim's status.devices; its limits apply all the same",
                            claim=str(job.ref), operation=operation, error=str(exc))
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _write(self, job: _Job) -> None:
        with self._idle:
            if job.claim is None:
                self._written.discard(job.ref.uid)
            elif job.ref.uid in self._written:
                return  # a repeated Prepare: what we wrote stands
        remembered = self._recent.take(job.ref.uid) if self._recent is not None else None
        for attempt in range(_CONFLICT_RETRIES):
            current = remembered if attempt == 0 and remembered is not None else self._get(job.ref)
            if current is None or (current.get("metadata") or {}).get("uid") != job.ref.uid:
                return  # deleted, or a new claim of the same name: nothing of ours to show
            existing = (current.get("status") or {}).get("devices") or []
            if job.claim is not None:
                now = self._clock().strftime("%Y-%m-%dT%H:%M:%SZ")
                devices = with_ours(existing, device_statuses(job.claim, self._driver, now))
            else:
                devices = without_ours(existing, self._driver, self._pool)
            if devices is None:
                self._mark_written(job)
                return
            patch = {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                     "status": {"devices": devices or None}}
            status, body = self._call("PATCH", job.ref, "/status", patch)
            if status == 409:
                continue
            if not 200 <= status < 300:
                raise StatusWriteError(f"HTTP {status}: {_message(body)}")
            log.info("claim status written", claim=str(job.ref), devices=len(devices),
                     operation="prepare" if job.claim is not None else "unprepare")
            self._mark_written(job)
            return
        raise StatusWriteError(f"still conflicting after {_CONFLICT_RETRIES} attempts")

    def _mark_written(self, job: _Job) -> None:
        if job.claim is not None:
            with self._idle:
                self._written.add(job.ref.uid)

    def _get(self, ref: ClaimRef) -> dict[str, Any] | None:
        status, body = self._call("GET", ref, "", None)
        if status == 404:
            return None
        if not 200 <= status < 300:
            raise StatusWriteError(f"cannot read the claim: HTTP {status}: {_message(body)}")
        return json.loads(body)

    def _call(self, method: str, ref: ClaimRef, suffix: str, body: Any) -> tuple[int, bytes]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/merge-patch+json"
        method, url, headers, payload, post = self._api.param_serialize(
            method=method, resource_path=_PATH + suffix, path_params={"namespace": ref.namespace, "name": ref.name},
            body=body, header_params=headers, auth_settings=["BearerToken"])
        response = self._api.call_api(method, url, headers, payload, post, _request_timeout=self._timeout)
        return response.status, response.read()


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body).get("message", ""))
    except (TypeError, ValueError):
        return body[:200].decode(errors="replace")


class StatusReportingPreparer:
    """The node's preparer with status writes after each Prepare and Unprepare (dra_service's
    ClaimPreparer)."""

    def __init__(self, preparer: Any, writer: ClaimStatusWriter):
        self._preparer = preparer
        self._writer = writer

    def prepare(self, claims: list[ClaimRef]) -> Any:
        """Prepare, then queue a status write for every claim that is prepared."""
        outcomes = self._preparer.prepare(claims)
        prepared = self._preparer.prepared_claims()
        for uid, outcome in outcomes.items():
            if not outcome.error and uid in prepared:
                self._writer.prepared(prepared[uid])
        return outcomes

    def unprepare(self, claims: list[ClaimRef]) -> Any:
        """Unprepare, then queue the removal of our status entries of every claim this node had
        prepared and now has not."""
        known = self._preparer.prepared_claims()
        errors = self._preparer.unprepare(claims)
        for ref in claims:
            if errors.get(ref.uid) == "" and ref.uid in known:
                self._writer.unprepared(ref)
        return errors
