"""Leader election over a coordination.k8s.io/v1 Lease, like client-go's leaderelection.

The holder renews ``renewTime`` every `retry_period_s`. A candidate takes the Lease over when it
has not been renewed for ``leaseDurationSeconds`` (judged by this process's own clock from the
moment it saw the renew time change, so clock skew between replicas does not matter), or at once
when the holder released it (empty ``holderIdentity``). Every write is a PUT/POST with the last
resourceVersion seen, so two candidates can never both win the same term.

A leader steps down when no renewal has succeeded for `renew_deadline_s`, counted from when the
last successful renewal was *sent*: a standby starts its own count no earlier than that write's
commit, so the old leader's term has `lease_duration_s - renew_deadline_s` to stop before anyone
else may lead. Every Lease request is bounded by that deadline, so a hung API server cannot keep
a leader past it.

Unlike client-go, candidates also watch the Lease and act on the newest copy they have seen: a
released Lease is taken with one PUT the moment its release arrives, instead of at the next poll,
and an expiry is acted on when it falls due. A candidate re-reads the Lease (GET) only when it
heard nothing for two retry periods (a broken watch, or a dead leader), before taking over an expired Lease (the watch
may have missed a renewal), and after a write conflicted.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum

import structlog

from .informer import Informer
from .kubeapi import LEASES, ApiError, JsonObject, KubeApi

log = structlog.get_logger(__name__)

_MIN_REQUEST_TIMEOUT_S = 0.05


class _Write(Enum):
    WON = "won"
    CONFLICT = "conflict"  # someone wrote the Lease since the copy written from
    ERROR = "error"        # no answer, or a refusal


def _now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _rv(obj: JsonObject) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


@dataclass
class LeaderElector:
    """Runs `on_started(term_stop)` while this process leads; `term_stop` is set when it stops."""

    api: KubeApi
    namespace: str
    name: str
    identity: str
    on_started: Callable[[threading.Event], None]
    lease_duration_s: float = 4.0
    renew_deadline_s: float = 3.0
    retry_period_s: float = 0.5
    watch_lease: bool = True
    is_leader: threading.Event = field(default_factory=threading.Event)
    terms: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _wake: threading.Event = field(default_factory=threading.Event)
    _seen: JsonObject | None = None  # the newest copy of the Lease seen (None: there is none)
    _observed_record: tuple[str, str] | None = None  # its (holder, renewTime)
    _observed_at: float = 0.0  # when this process first saw that record
    _observed_rv: int = 0

    def run(self, stop: threading.Event) -> None:
        """Campaign, lead, and campaign again after losing the Lease, until `stop`; then release it."""
        threading.Thread(target=lambda: (stop.wait(), self._wake.set()), name="leader-stop", daemon=True).start()
        watch_stop = threading.Event()
        watcher = self._start_watch(watch_stop) if self.watch_lease else None
        try:
            while not stop.is_set():
                won_at = self._acquire(stop)
                if won_at is None:
                    break
                self.terms += 1
                term_stop = threading.Event()
                self.is_leader.set()
                log.info("became leader", lease=f"{self.namespace}/{self.name}", identity=self.identity,
                         term=self.terms)
                worker = threading.Thread(target=self.on_started, args=(term_stop,), name="leader-term", daemon=True)
                worker.start()
                self._renew_loop(stop, won_at)
                self.is_leader.clear()
                term_stop.set()
                worker.join()
                log.info("stopped leading", identity=self.identity)
            # Only now: the term's workers have stopped, so no write of this term can follow the release.
            self._release()
        finally:
            watch_stop.set()
            if watcher is not None:
                watcher[0].close()
                watcher[1].join(timeout=5)

    # ------------------------------------------------------------------ what is known of the Lease

    def _start_watch(self, stop: threading.Event) -> tuple[Informer, threading.Thread]:
        informer = Informer(self.api, LEASES, self._on_lease_event, name="lease", namespace=self.namespace,
                            field_selector=f"metadata.name={self.name}")
        thread = threading.Thread(target=informer.run, args=(stop,), name="lease-watch", daemon=True)
        thread.start()
        return informer, thread

    def _on_lease_event(self, key: str, old: JsonObject | None, new: JsonObject | None) -> None:
        if new is None:
            self._forget()
        else:
            self._observe(new)
        self._wake.set()

    def _forget(self) -> None:
        with self._lock:
            self._seen, self._observed_record, self._observed_rv = None, None, 0

    def _observe(self, lease: JsonObject) -> None:
        """Keep `lease` if it is the newest copy seen; note when its (holder, renewTime) changed."""
        spec = lease.get("spec") or {}
        record = (spec.get("holderIdentity") or "", spec.get("renewTime") or "")
        with self._lock:
            rv = _rv(lease)
            if rv and rv < self._observed_rv:
                return  # a stale copy (a watch event overtaken by a write's answer)
            self._seen, self._observed_rv = lease, rv
            if record != self._observed_record:
                self._observed_record = record
                self._observed_at = time.monotonic()

    def _newest(self) -> JsonObject | None:
        with self._lock:
            return self._seen

    def _holds(self) -> bool:
        seen = self._newest()
        return seen is not None and (seen.get("spec") or {}).get("holderIdentity") == self.identity

    def _until_free(self, now: float) -> float:
        """Seconds until the Lease may be taken, as far as this process knows (0: now)."""
        with self._lock:
            if self._observed_record is None:
                return 0.0
            holder = self._observed_record[0]
            if not holder or holder == self.identity:
                return 0.0
            duration = float(((self._seen or {}).get("spec") or {}).get("leaseDurationSeconds")
                             or self.lease_duration_s)
            return self._observed_at + duration - now

    # ------------------------------------------------------------------ campaigning and renewing

    def _acquire(self, stop: threading.Event) -> float | None:
        """Block until this process holds the Lease; the monotonic time its winning write was sent."""
        stale, not_before = True, 0.0
        while True:
            self._wake.clear()
            if stop.is_set():
                return None
            now = time.monotonic()
            if stale or (now >= not_before and self._until_free(now) <= 0 and not self._released()):
                # Re-read before acting on an expiry: the watch may have missed the renewal.
                if not self._read(now + self.renew_deadline_s):
                    not_before = max(not_before, time.monotonic() + self.retry_period_s)
                stale = False
            now = time.monotonic()
            delay = max(self._until_free(now), not_before - now)
            if delay <= 0:
                result = self._write(now + self.renew_deadline_s)
                if result is _Write.WON:
                    return now
                stale = True
                if result is _Write.ERROR:
                    not_before = time.monotonic() + self.retry_period_s
                continue
            # Woken early by a Lease event (released, renewed, deleted) or by `stop`. A live leader
            # renews every retry period, so two without a word mean the watch may be broken (or
            # the leader dead): re-read.
            stale = not self._wake.wait(min(delay, 2 * self.retry_period_s))

    def _released(self) -> bool:
        """The newest copy seen has no holder: nothing to re-check, it may be taken at once."""
        seen = self._newest()
        return seen is not None and not (seen.get("spec") or {}).get("holderIdentity")

    def _renew_loop(self, stop: threading.Event, last_sent: float) -> None:
        next_at = last_sent + self.retry_period_s
        while not stop.wait(max(0.0, next_at - time.monotonic())):
            started = time.monotonic()
            deadline = last_sent + self.renew_deadline_s
            if started >= deadline:
                log.warning("lost the lease: not renewed within the renew deadline", identity=self.identity,
                            renew_deadline_s=self.renew_deadline_s)
                return
            if self._renew(deadline):
                last_sent = started
                next_at = started + self.retry_period_s
            elif not self._holds():
                log.warning("lost the lease", identity=self.identity,
                            holder=((self._newest() or {}).get("spec") or {}).get("holderIdentity"))
                return
            else:
                next_at = min(time.monotonic() + self.retry_period_s, deadline)

    def _renew(self, deadline: float) -> bool:
        """One PUT from this process's own last write; on a conflict, re-read and renew if still ours."""
        if self._holds():
            result = self._write(deadline)
            if result is not _Write.CONFLICT:
                return result is _Write.WON
        if not self._read(deadline) or not self._holds():
            return False
        return self._write(deadline) is _Write.WON

    def _spec(self, previous: JsonObject | None) -> JsonObject:
        now = _now_micro()
        old = (previous or {}).get("spec") or {}
        taking_over = old.get("holderIdentity") != self.identity
        return {
            "holderIdentity": self.identity,
            # Rounded up: a standby must never wait less than this leader's own margin.
            "leaseDurationSeconds": math.ceil(self.lease_duration_s),
            "acquireTime": now if taking_over or not old.get("acquireTime") else old["acquireTime"],
            "renewTime": now,
            "leaseTransitions": int(old.get("leaseTransitions") or 0) + (1 if taking_over and old else 0),
        }

    @staticmethod
    def _timeout(deadline: float) -> float:
        return max(_MIN_REQUEST_TIMEOUT_S, deadline - time.monotonic())

    def _read(self, deadline: float) -> bool:
        """GET the Lease into what is known of it; False when the API server did not say."""
        try:
            self._observe(self.api.get(LEASES, self.name, self.namespace, timeout_s=self._timeout(deadline)))
        except ApiError as exc:
            if not exc.not_found:
                log.warning("reading the lease failed", identity=self.identity, error=str(exc))
                return False
            self._forget()
        return True

    def _write(self, deadline: float) -> _Write:
        """Take or renew the Lease from the newest copy seen (create it when there is none).
        Callers check first that it is this process's to take."""
        base = self._newest()
        try:
            if base is None:
                lease = self.api.create(LEASES, {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(None)}, self.namespace, timeout_s=self._timeout(deadline))
            else:
                lease = self.api.update(LEASES, {**base, "spec": self._spec(base)}, timeout_s=self._timeout(deadline))
        except ApiError as exc:
            if exc.conflict:
                log.info("lease write lost a race", identity=self.identity, error=str(exc))
                return _Write.CONFLICT
            log.warning("writing the lease failed", identity=self.identity, error=str(exc))
            return _Write.ERROR
        self._observe(lease)
        return _Write.WON

    def _release(self) -> None:
        """Give the Lease up on a clean shutdown so that a standby takes over at once."""
        if not self._holds():
            return
        lease = self._newest() or {}
        released = {**lease, "spec": {**(lease.get("spec") or {}), "holderIdentity": "",
                                      "leaseDurationSeconds": 1, "renewTime": _now_micro()}}
        try:
            self.api.update(LEASES, released, timeout_s=self.renew_deadline_s)
            log.info("released the lease", lease=f"{self.namespace}/{self.name}", identity=self.identity)
        except ApiError as exc:
            log.warning("releasing the lease failed; a standby takes over when it expires", error=str(exc))
