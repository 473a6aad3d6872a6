"""The usage watchdog's judgement: NVML's per-process GPU memory against the claims' walls and their
regions' accounting. Pure: it takes what the kubelet plugin read and returns findings.

Inputs are one sample: every process NVML lists on the node's GPUs (host PIDs, bytes used), the
owner of each such PID as its cgroup names it (pod UID, container), and every prepared claim with
its walls (from the plugin's checkpoint, never from the region) and its region's counters and
process slots. A GPU is audited when at least one prepared claim has a wall on it (a shared GPU).

Findings (``Finding.kind``):

* ``untracked``: a process on a shared GPU whose pod reserves no claim with a wall there (or
  that is in no pod at all: a host process).
* ``unshimmed``: a process of a claim's pod that holds no live slot in any of the pod's claims'
  regions on that GPU: libvgpu.so is not loaded in it (static or musl binary, a rewritten
  ``ld.so.preload``), so nothing holds it to the wall.
* ``over_wall``: the claim's processes use more than its wall plus the tolerance, as NVML
  measures it.
* ``region_mismatch``: NVML measures more for the claim than its region accounts for, beyond the
  tolerance: the region was rewritten (``used = 0``) or memory bypasses the shim.
* ``region_tampered``: the region contradicts what only the plugin or the shim writes there: a
  limit other than the wall, another claim's UID, or process slots holding more than the claim's
  counter (the shim always charges the counter first and refunds it last).

Claims whose processes overlap (one pod holding two claims on one GPU, whose allocations the shim
may place in either) are judged together, as one group with the sum of their walls and counters.
The tolerance allows for what NVML counts and the region cannot: the driver's page rounding and
the part of a CUDA context the shim cannot measure (docs/kubelet-plugin.md, "Usage watchdog").
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

FindingKind = Literal["untracked", "unshimmed", "over_wall", "region_mismatch", "region_tampered"]
KINDS: tuple[FindingKind, ...] = ("untracked", "unshimmed", "over_wall", "region_mismatch", "region_tampered")
MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class GpuProcess:
    """One entry of NVML's compute or graphics process list of a GPU."""

    gpu_uuid: str
    pid: int  # as NVML reports it: the host's PID
    used_bytes: int | None  # None when NVML cannot say (then the claim's usage is not judged)


@dataclass(frozen=True, slots=True)
class ProcessOwner:
    """Who a host PID belongs to, from its cgroup (and its PID inside its own namespace)."""

    pid: int
    pod_uid: str | None  # None: not in a Kubernetes pod's cgroup (a process of the host)
    container_id: str = ""
    ns_pid: int = 0  # the PID the process has in its own PID namespace; 0 when unknown


class SlotView(NamedTuple):
    """A process slot of a region (state live; ``alive`` false once its owner died). A tuple:
    a poll reads hundreds of them."""

    pid: int  # PID in the process's own namespace
    host_pid: int  # the host PID the shim learned, 0 until learned
    alive: bool
    used: Mapping[str, int]  # bytes per GPU UUID


@dataclass(frozen=True, slots=True)
class RegionView:
    """What a claim's region says: counters, the limit copies, slots."""

    claim_uid: str
    used: Mapping[str, int]  # per GPU UUID: the claim's admitted bytes
    limit: Mapping[str, int]  # per GPU UUID: the copy of the wall the shim writes
    slots: tuple[SlotView, ...] = ()


@dataclass(frozen=True, slots=True)
class PodRef:
    """A pod that reserves a claim."""

    name: str
    uid: str


@dataclass(frozen=True, slots=True)
class ClaimView:
    """A prepared claim: its walls (the plugin's own record) and its region (None: unreadable)."""

    uid: str
    namespace: str
    name: str
    pods: tuple[PodRef, ...]
    walls: Mapping[str, int]  # GPU UUID -> bytes
    region: RegionView | None

    @property
    def label(self) -> str:
        """``namespace/name`` as users name claims."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Tolerance:
    """How much more than the wall (or the region) NVML may measure before it is a finding."""

    bytes_per_process: int = 64 * MiB
    percent_of_wall: float = 5.0

    def allowance(self, wall_bytes: int, processes: int) -> int:
        """Bytes allowed above the wall or the region for a claim with that many processes."""
        return self.bytes_per_process * max(1, processes) + int(wall_bytes * self.percent_of_wall / 100)


@dataclass(frozen=True, slots=True)
class Finding:
    """One violation, with the processes enforcement would kill (empty: reported only)."""

    kind: FindingKind
    gpu_uuid: str
    claims: tuple[str, ...]  # claim UIDs concerned (empty for an untracked process)
    pids: tuple[int, ...]  # host PIDs concerned
    measured_bytes: int
    accounted_bytes: int
    wall_bytes: int
    message: str
    kill_pids: tuple[int, ...] = ()
    pod_uid: str | None = None

    @property
    def key(self) -> tuple[str, str, tuple[str, ...], tuple[int, ...]]:
        """Identity across polls: a finding that persists is one finding, not one per poll."""
        per_process = self.kind in ("untracked", "unshimmed")
        return (self.kind, self.gpu_uuid, self.claims, self.pids if per_process else ())


@dataclass(frozen=True)
class AuditResult:
    """Findings and the per-claim numbers the metrics show."""

    findings: tuple[Finding, ...]
    # (claim UID, GPU UUID) -> bytes NVML measures for the claim that its region does not account for
    untracked_bytes: Mapping[tuple[str, str], int] = field(default_factory=dict)
    # GPU UUID -> bytes of processes on a shared GPU that belong to no claim
    unclaimed_bytes: Mapping[str, int] = field(default_factory=dict)


def mib(value: int) -> str:
    """Bytes as MiB for messages."""
    return f"{value / MiB:.0f} MiB"


def _shim_pids(claim: ClaimView) -> tuple[frozenset[int], frozenset[int]]:
    """Host PIDs of the claim's live shimmed processes, and namespace PIDs of those that have not
    learned their host PID yet (known by their PID inside their own namespace)."""
    slots = [s for s in claim.region.slots if s.alive] if claim.region else []
    return (frozenset(s.host_pid for s in slots if s.host_pid),
            frozenset(s.pid for s in slots if not s.host_pid))


def _is_shimmed(owner: ProcessOwner, shims: Iterable[tuple[frozenset[int], frozenset[int]]]) -> bool:
    for hosts, unlearned in shims:
        if owner.pid in hosts or (owner.ns_pid and owner.ns_pid in unlearned):
            return True
    return False


class _Groups:
    """Union-find of claim UIDs that share a process on one GPU."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, uid: str) -> str:
        self.parent.setdefault(uid, uid)
        while self.parent[uid] != uid:
            self.parent[uid] = self.parent[self.parent[uid]]
            uid = self.parent[uid]
        return uid

    def union(self, uids: Iterable[str]) -> None:
        roots = [self.find(u) for u in uids]
        for other in roots[1:]:
            self.parent[self.find(other)] = self.find(roots[0])


def audit(processes: Iterable[GpuProcess], owners: Mapping[int, ProcessOwner], claims: Iterable[ClaimView],
          tolerance: Tolerance = Tolerance()) -> AuditResult:
    """Judge one sample. A process without an entry in ``owners`` has exited and is skipped."""
    by_uid = {c.uid: c for c in claims}
    by_pod: dict[str, list[ClaimView]] = {}
    for claim in by_uid.values():
        for pod in claim.pods:
            by_pod.setdefault(pod.uid, []).append(claim)
    shared = {gpu for c in by_uid.values() for gpu in c.walls}
    findings: list[Finding] = []
    unclaimed: dict[str, int] = {}
    groups: dict[str, _Groups] = {gpu: _Groups() for gpu in shared}
    members: dict[tuple[str, str], list[GpuProcess]] = {}  # (gpu, first candidate uid) -> processes

    shims = {uid: _shim_pids(c) for uid, c in by_uid.items()}
    candidates_of: dict[tuple[str, str], list[ClaimView]] = {}
    for proc in processes:
        owner = owners.get(proc.pid)
        if proc.gpu_uuid not in shared or owner is None:
            continue
        used = proc.used_bytes or 0
        key = (owner.pod_uid or "", proc.gpu_uuid)
        candidates = candidates_of.get(key)
        if candidates is None:
            candidates = sorted((c for c in by_pod.get(key[0], ()) if proc.gpu_uuid in c.walls), key=lambda c: c.uid)
            candidates_of[key] = candidates
        if not candidates:
            unclaimed[proc.gpu_uuid] = unclaimed.get(proc.gpu_uuid, 0) + used
            findings.append(_untracked(proc, owner))
            continue
        if not _is_shimmed(owner, [shims[c.uid] for c in candidates]):
            findings.append(_unshimmed(proc, owner, candidates))
        if len(candidates) > 1:
            groups[proc.gpu_uuid].union(c.uid for c in candidates)
        members.setdefault((proc.gpu_uuid, candidates[0].uid), []).append(proc)

    untracked: dict[tuple[str, str], int] = {}
    on_gpu: dict[str, list[str]] = {}
    for uid in sorted(by_uid):
        for gpu in by_uid[uid].walls:
            on_gpu.setdefault(gpu, []).append(uid)
    for gpu, uids_here in sorted(on_gpu.items()):
        union = groups[gpu]
        if union.parent:  # some process belongs to several claims: judge those claims together
            grouped: dict[str, list[str]] = {}
            for uid in uids_here:
                grouped.setdefault(union.find(uid), []).append(uid)
            sets: Iterable[list[str]] = grouped.values()
        else:
            sets = ([uid] for uid in uids_here)
        for uids in sets:
            procs = [p for uid in uids for p in members.get((gpu, uid), ())]
            findings += _judge_group(gpu, [by_uid[u] for u in uids], procs, tolerance, untracked)
    for claim in by_uid.values():
        findings += _tampering(claim)
    return AuditResult(findings=tuple(findings), untracked_bytes=untracked, unclaimed_bytes=unclaimed)


def _untracked(proc: GpuProcess, owner: ProcessOwner) -> Finding:
    where = (f"pod UID {owner.pod_uid}" + (f", container {owner.container_id[:12]}" if owner.container_id else "")
             if owner.pod_uid else "not in any pod (a process of the host)")
    return Finding(
        kind="untracked", gpu_uuid=proc.gpu_uuid, claims=(), pids=(proc.pid,),
        measured_bytes=proc.used_bytes or 0, accounted_bytes=0, wall_bytes=0, pod_uid=owner.pod_uid,
        # A process of the host (a display server, a monitoring agent) is reported, never killed.
        kill_pids=(proc.pid,) if owner.pod_uid else (),
        message=(f"process {proc.pid} ({where}) uses {mib(proc.used_bytes or 0)} of GPU {proc.gpu_uuid}, "
                 "which vgpu-dra shares, but belongs to no claim prepared on this node"))


def _unshimmed(proc: GpuProcess, owner: ProcessOwner, claims: list[ClaimView]) -> Finding:
    names = ", ".join(c.label for c in claims)
    container = f" (container {owner.container_id[:12]})" if owner.container_id else ""
    return Finding(
        kind="unshimmed", gpu_uuid=proc.gpu_uuid, claims=tuple(c.uid for c in claims), pids=(proc.pid,),
        measured_bytes=proc.used_bytes or 0, accounted_bytes=0,
        wall_bytes=sum(c.walls[proc.gpu_uuid] for c in claims), pod_uid=owner.pod_uid, kill_pids=(proc.pid,),
        message=(f"process {proc.pid}{container} of claim {names} uses {mib(proc.used_bytes or 0)} of GPU "
                 f"{proc.gpu_uuid} without libvgpu.so loaded (a static or musl binary, or a changed "
                 "/etc/ld.so.preload): no wall holds it"))


def _judge_group(gpu: str, claims: list[ClaimView], procs: list[GpuProcess], tolerance: Tolerance,
                 untracked: dict[tuple[str, str], int]) -> list[Finding]:
    uids = tuple(c.uid for c in claims)
    wall = accounted = measured = 0
    for c in claims:
        wall += c.walls[gpu]
        if c.region is not None:
            accounted += max(0, c.region.used.get(gpu, 0))
    unknown = False
    for proc in procs:
        if proc.used_bytes is None:
            unknown = True
        else:
            measured += proc.used_bytes
    untracked[(uids[0], gpu)] = max(0, measured - accounted)
    for uid in uids[1:]:
        untracked[(uid, gpu)] = 0
    if not procs or unknown:
        return []  # nothing running, or NVML cannot say how much some process uses
    allowance = tolerance.allowance(wall, len(procs))
    if measured <= wall + allowance and measured <= accounted + allowance:
        return []
    pids = tuple(sorted(p.pid for p in procs))
    names = ", ".join(c.label for c in claims)
    found = []
    if measured > wall + allowance:
        found.append(Finding(
            kind="over_wall", gpu_uuid=gpu, claims=uids, pids=pids, measured_bytes=measured,
            accounted_bytes=accounted, wall_bytes=wall, kill_pids=pids,
            message=(f"claim {names} uses {mib(measured)} of GPU {gpu} as NVML measures it, more than its "
                     f"wall of {mib(wall)} plus the tolerance of {mib(allowance)}")))
    if measured > accounted + allowance:
        found.append(Finding(
            kind="region_mismatch", gpu_uuid=gpu, claims=uids, pids=pids, measured_bytes=measured,
            accounted_bytes=accounted, wall_bytes=wall, kill_pids=pids,
            message=(f"claim {names}: NVML measures {mib(measured)} on GPU {gpu}, its region accounts for "
                     f"{mib(accounted)} (tolerance {mib(allowance)}): the region was rewritten or memory "
                     "bypasses libvgpu.so")))
    return found


def _tampering(claim: ClaimView) -> list[Finding]:
    region = claim.region
    if region is None:
        return []
    found = []
    for gpu, wall in sorted(claim.walls.items()):
        problems = []
        if region.claim_uid != claim.uid:
            problems.append(f"claim UID reads {region.claim_uid!r}")
        limit = region.limit.get(gpu)
        if limit is not None and limit != wall:
            problems.append(f"its limit reads {mib(limit)}, the wall is {mib(wall)}")
        used = max(0, region.used.get(gpu, 0))
        in_slots = 0
        for slot in region.slots:
            held = slot.used.get(gpu, 0)
            if held > 0:
                in_slots += held
        if in_slots > used:
            problems.append(f"its processes hold {mib(in_slots)} but its counter says {mib(used)}")
        if problems:
            found.append(Finding(
                kind="region_tampered", gpu_uuid=gpu, claims=(claim.uid,),
                pids=tuple(sorted(s.host_pid for s in region.slots if s.alive and s.host_pid)),
                measured_bytes=in_slots, accounted_bytes=used, wall_bytes=wall,
                message=(f"claim {claim.label}: its region on GPU {gpu} was changed from inside the pod ("
                         + "; ".join(problems) + ")")))
    return found
