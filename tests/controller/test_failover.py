"""Failover between `vgpu-dra controller` processes: a killed leader, a stopped leader, a leader
that cannot renew. The bounds come from the Lease settings each test sets; they say whether a
standby waited for expiry, did not wait for it, or waited for nothing at all, not how fast."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vgpu_dra.controller.service import LeaderSettings

from tests.fakes.apiserver import FakeApiServer
from tests.fakes.kubeconfig import write_kubeconfig

from .cluster import add_device_class, add_node, claim, gpu, pod, start_controller, vgpu_config
from .waiting import wait_for

LEASE = "vgpu-dra-controller"


@dataclass(frozen=True)
class LeaseWrite:
    at: float  # monotonic, right after the server committed it
    user: str
    holder: str
    duration_s: int
    transitions: int


@dataclass
class LeaseLog:
    """Every committed write of the Lease, in order."""

    writes: list[LeaseWrite] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, record) -> None:
        if record.resource.kind == "Lease" and record.obj["metadata"]["name"] == LEASE:
            spec = record.obj.get("spec") or {}
            with self.lock:
                self.writes.append(LeaseWrite(time.monotonic(), record.user, spec.get("holderIdentity") or "",
                                              int(spec.get("leaseDurationSeconds") or 0),
                                              int(spec.get("leaseTransitions") or 0)))

    def by(self, user: str) -> list[LeaseWrite]:
        with self.lock:
            return [w for w in self.writes if w.user == user]

    def first_held_by(self, identity: str) -> LeaseWrite | None:
        with self.lock:
            return next((w for w in self.writes if w.holder == identity), None)


def replica(server: FakeApiServer, tmp_path: Path, identity: str, *flags: str) -> subprocess.Popen:
    """`vgpu-dra controller --leader-elect` as a Deployment's pod would run it; its requests show
    in the server's audit log as `identity`."""
    kubeconfig = write_kubeconfig(server, tmp_path / f"{identity}.kubeconfig", user=identity)
    log = open(tmp_path / f"{identity}.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "vgpu_dra.cli.main", "controller", "--kubeconfig", str(kubeconfig),
                             "--leader-elect", "--lease-namespace", "default", "--lease-name", LEASE,
                             "--identity", identity, "--metrics-port", "0", "--log-format", "json", *flags],
                            stdout=log, stderr=subprocess.STDOUT)


def allocated_by(server: FakeApiServer, name: str) -> str | None:
    """Who wrote the claim's allocation (None while unallocated)."""
    obj = next((c for c in server.objects("ResourceClaim") if c["metadata"]["name"] == name), None)
    if not obj or not (obj.get("status") or {}).get("allocation"):
        return None
    writers = [r.user for r in server.audit() if r.resource == "resourceclaims" and r.name == name
               and r.verb in ("update", "patch") and r.subresource == "status" and r.code < 300]
    return writers[-1] if writers else "?"


def new_pod(server: FakeApiServer, name: str) -> None:
    server.create(claim(name, config=vgpu_config(memory="512Mi")))
    server.create(pod(f"p-{name}", [name]))


def two_replicas(server: FakeApiServer, tmp_path: Path, flags: tuple[str, ...], lease_log: LeaseLog
                 ) -> tuple[subprocess.Popen, subprocess.Popen]:
    """replica-a leading with synced books, replica-b campaigning."""
    add_node(server, "node", [gpu(i) for i in range(4)])
    add_device_class(server)
    server.add_observer(lease_log)
    a = replica(server, tmp_path, "replica-a", *flags)
    b = None
    try:
        new_pod(server, "warm-up")
        wait_for(lambda: allocated_by(server, "warm-up") == "replica-a", timeout_s=60, what="replica-a leading")
        b = replica(server, tmp_path, "replica-b", *flags)
        wait_for(lambda: any(r.user == "replica-b" and r.resource == "leases" and r.verb == "get"
                             for r in server.audit()), timeout_s=60, what="replica-b campaigning")
    except BaseException:
        for process in (a, b):
            if process is not None:
                process.kill()
                process.wait()
        raise
    return a, b


def stop_all(tmp_path: Path, *processes: subprocess.Popen) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError("a replica did not stop on SIGTERM:\n" + "\n".join(
                p.read_text()[-2000:] for p in tmp_path.glob("*.log")))


def test_killed_leader_standby_takes_over_after_expiry_and_allocates(fake_apiserver, tmp_path):
    server = fake_apiserver
    lease_s, retry_s = 3.0, 0.5
    lease_log = LeaseLog()
    a, b = two_replicas(server, tmp_path, ("--lease-duration", str(lease_s), "--renew-deadline", "2",
                                           "--retry-period", str(retry_s)), lease_log)
    try:
        time.sleep(2 * retry_s)  # a few renewals, seen by the standby
        transitions = lease_log.by("replica-a")[-1].transitions
        a.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        a.wait(timeout=10)
        new_pod(server, "after-kill")
        # The Lease is taken over once it expires: a lease duration after the last renewal, plus
        # one retry period at most if a renewal was missed; twice that is the bound.
        taken = wait_for(lambda: lease_log.first_held_by("replica-b"), timeout_s=2 * (lease_s + retry_s) + 2,
                         what="replica-b holding the Lease")
        wait_for(lambda: allocated_by(server, "after-kill") == "replica-b", timeout_s=30,
                 what="the new leader allocating a pod created after the kill")
    finally:
        stop_all(tmp_path, a, b)
    last_renewal = lease_log.by("replica-a")[-1]
    assert last_renewal.holder == "replica-a", "a killed leader cannot have released the Lease"
    # Never while the dead leader's Lease was still valid (two leaders at once otherwise).
    assert taken.at - last_renewal.at >= lease_s - 0.3, (taken.at - last_renewal.at, lease_s)
    assert taken.at - killed_at <= 2 * (lease_s + retry_s)
    assert taken.transitions == transitions + 1


def test_stopped_leader_releases_the_lease_and_the_standby_takes_over_at_once(fake_apiserver, tmp_path):
    server = fake_apiserver
    # Waiting for expiry would take a minute, and the standby's next poll is 20 s after its first
    # one (made as it started, just before the stop): only the release, seen through the standby's
    # watch of the Lease, can hand over within half of that.
    lease_s, retry_s = 60.0, 20.0
    lease_log = LeaseLog()
    a, b = two_replicas(server, tmp_path, ("--lease-duration", str(lease_s), "--renew-deadline", "30",
                                           "--retry-period", str(retry_s)), lease_log)
    try:
        transitions = lease_log.by("replica-a")[-1].transitions
        for i in range(40):  # work in flight when the stop comes
            new_pod(server, f"busy-{i}")
        a.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        assert a.wait(timeout=30) == 0, (tmp_path / "replica-a.log").read_text()[-2000:]
        new_pod(server, "after-stop")
        taken = wait_for(lambda: lease_log.first_held_by("replica-b"), timeout_s=retry_s / 2,
                         what="replica-b holding the Lease before its next poll")
        wait_for(lambda: allocated_by(server, "after-stop") == "replica-b", timeout_s=retry_s / 2,
                 what="the new leader allocating a pod created after the stop")
        wait_for(lambda: all(allocated_by(server, f"busy-{i}") for i in range(40)), timeout_s=60,
                 what="every pod in flight at the stop allocated by one replica or the other")
    finally:
        stop_all(tmp_path, a, b)
    # The release comes after the old term's last write: never two writers at once.
    audit = [r for r in server.audit() if r.user == "replica-a" and r.code < 300 and r.verb in ("update", "patch")]
    released_at = max(i for i, r in enumerate(audit) if r.resource == "leases")
    assert not [r for r in audit[released_at:] if r.resource in ("resourceclaims", "pods")]
    release = lease_log.by("replica-a")[-1]
    assert (release.holder, release.duration_s) == ("", 1), release
    assert release.at <= taken.at and taken.at - stopped_at < retry_s / 2
    assert taken.transitions == transitions + 1
    assert "released the lease" in (tmp_path / "replica-a.log").read_text()


def test_leader_that_cannot_renew_stops_before_its_lease_expires(fake_apiserver):
    server = fake_apiserver
    add_node(server, "node", [gpu(0)])
    add_device_class(server)
    settings = LeaderSettings(identity="replica-a", namespace="default", lease_duration_s=6.0, renew_deadline_s=2.0,
                              retry_period_s=0.25)
    a = start_controller(server, user="replica-a", leader=settings)
    try:
        wait_for(lambda: a.service.is_ready(), what="replica-a leading")
        fault = server.faults.add(503, resource="leases", verbs=("update",), count=10**6)
        failing_since = time.monotonic()
        # A standby may lead a lease duration after the last renewal that got through; the
        # leader's term must be over before that.
        wait_for(lambda: a.service.current_term is None, timeout_s=settings.lease_duration_s - 1,
                 what="the leader stepping down")
        assert time.monotonic() - failing_since >= settings.renew_deadline_s - settings.retry_period_s
        assert fault.hits >= 2  # it retried before giving up
        server.faults.clear()
        wait_for(lambda: a.service.is_ready(), timeout_s=20, what="the leader back once renewals get through")
    finally:
        a.halt()
    assert a.service.terms == 2
