"""The usage watchdog's pure judgement (driver/usage_audit.py): each finding and its absence."""
from __future__ import annotations

from vgpu_dra.driver.usage_audit import (ClaimView, GpuProcess, PodRef, ProcessOwner, RegionView, SlotView, Tolerance,
                                         audit)

MiB = 1 << 20
GiB = 1 << 30
GPU = "GPU-11111111-2222-3333-4444-555555555555"
OTHER_GPU = "GPU-99999999-2222-3333-4444-555555555555"
POD_A = "aaaaaaaa-0000-0000-0000-000000000001"
POD_B = "bbbbbbbb-0000-0000-0000-000000000002"
TOL = Tolerance(bytes_per_process=64 * MiB, percent_of_wall=0)


def claim(uid: str, pod: str, wall: int = 2 * GiB, used: int = 0, slots: tuple[SlotView, ...] = (),
          limit: int | None = None, region: bool = True, gpu: str = GPU) -> ClaimView:
    view = RegionView(claim_uid=uid, used={gpu: used}, limit={gpu: wall if limit is None else limit}, slots=slots)
    return ClaimView(uid=uid, namespace="team", name=f"claim-{uid}", pods=(PodRef(f"pod-{pod[:4]}", pod),),
                     walls={gpu: wall}, region=view if region else None)


def slot(host_pid: int, used: int, pid: int = 7, alive: bool = True, gpu: str = GPU) -> SlotView:
    return SlotView(pid=pid, host_pid=host_pid, alive=alive, used={gpu: used})


def owner(pid: int, pod: str | None, ns_pid: int = 0) -> ProcessOwner:
    return ProcessOwner(pid=pid, pod_uid=pod, container_id="c" * 64 if pod else "", ns_pid=ns_pid)


def kinds(result) -> list[str]:  # noqa: ANN001
    return sorted(f.kind for f in result.findings)


def test_an_honest_claim_is_fine_and_its_untracked_bytes_are_zero() -> None:
    c = claim("c1", POD_A, used=GiB, slots=(slot(100, GiB),))
    result = audit([GpuProcess(GPU, 100, GiB + 10 * MiB)], {100: owner(100, POD_A)}, [c], TOL)
    assert result.findings == ()
    assert result.untracked_bytes == {("c1", GPU): 10 * MiB}


def test_a_process_of_no_claim_on_a_shared_gpu_is_untracked_and_killable() -> None:
    c = claim("c1", POD_A)
    result = audit([GpuProcess(GPU, 300, GiB)], {300: owner(300, POD_B)}, [c], TOL)
    (finding,) = result.findings
    assert finding.kind == "untracked" and finding.pids == (300,) and finding.kill_pids == (300,)
    assert finding.pod_uid == POD_B and POD_B in finding.message
    assert result.unclaimed_bytes == {GPU: GiB}


def test_a_host_process_is_reported_but_never_killed() -> None:
    result = audit([GpuProcess(GPU, 300, GiB)], {300: owner(300, None)}, [claim("c1", POD_A)], TOL)
    (finding,) = result.findings
    assert finding.kind == "untracked" and finding.kill_pids == ()
    assert "host" in finding.message


def test_gpus_without_claims_and_exited_processes_are_not_judged() -> None:
    c = claim("c1", POD_A)
    result = audit([GpuProcess(OTHER_GPU, 300, GiB), GpuProcess(GPU, 301, GiB)], {300: owner(300, POD_B)}, [c], TOL)
    assert result.findings == ()


def test_a_claims_process_without_a_live_slot_is_unshimmed() -> None:
    dead = slot(200, 0, alive=False)
    c = claim("c1", POD_A, used=GiB, slots=(slot(100, GiB), dead))
    processes = [GpuProcess(GPU, 100, GiB), GpuProcess(GPU, 200, 200 * MiB)]
    result = audit(processes, {100: owner(100, POD_A), 200: owner(200, POD_A)}, [c], TOL)
    assert kinds(result) == ["region_mismatch", "unshimmed"]
    unshimmed = next(f for f in result.findings if f.kind == "unshimmed")
    assert unshimmed.pids == (200,) and unshimmed.kill_pids == (200,) and unshimmed.claims == ("c1",)


def test_a_shim_that_has_not_learned_its_host_pid_is_known_by_its_namespace_pid() -> None:
    c = claim("c1", POD_A, used=GiB, slots=(slot(0, GiB, pid=7),))
    result = audit([GpuProcess(GPU, 100, GiB)], {100: owner(100, POD_A, ns_pid=7)}, [c], TOL)
    assert result.findings == ()
    result = audit([GpuProcess(GPU, 100, GiB)], {100: owner(100, POD_A, ns_pid=8)}, [c], TOL)
    assert kinds(result) == ["unshimmed"]


def test_usage_above_wall_plus_tolerance_is_over_wall_and_kills_the_claims_processes() -> None:
    c = claim("c1", POD_A, wall=2 * GiB, used=2 * GiB, slots=(slot(100, GiB), slot(101, GiB)))
    owners = {100: owner(100, POD_A), 101: owner(101, POD_A)}
    at_limit = [GpuProcess(GPU, 100, GiB + 64 * MiB), GpuProcess(GPU, 101, GiB + 64 * MiB)]
    assert audit(at_limit, owners, [c], TOL).findings == ()  # 2 processes x 64 MiB allowed
    over = [GpuProcess(GPU, 100, GiB + 64 * MiB), GpuProcess(GPU, 101, GiB + 65 * MiB)]
    result = audit(over, owners, [c], TOL)
    assert "over_wall" in kinds(result)
    finding = next(f for f in result.findings if f.kind == "over_wall")
    assert finding.kill_pids == (100, 101) and finding.wall_bytes == 2 * GiB


def test_the_region_edit_attack_reads_as_mismatch_over_wall_and_tampering() -> None:
    # Process 100 holds the whole wall, the tenant wrote used = 0, process 101 allocated it again.
    c = claim("c1", POD_A, wall=2 * GiB, used=2 * GiB, slots=(slot(100, 2 * GiB), slot(101, 2 * GiB)))
    owners = {100: owner(100, POD_A), 101: owner(101, POD_A)}
    result = audit([GpuProcess(GPU, 100, 2 * GiB), GpuProcess(GPU, 101, 2 * GiB)], owners, [c], TOL)
    assert kinds(result) == ["over_wall", "region_mismatch", "region_tampered"]
    mismatch = next(f for f in result.findings if f.kind == "region_mismatch")
    assert mismatch.measured_bytes == 4 * GiB and mismatch.accounted_bytes == 2 * GiB
    assert result.untracked_bytes[("c1", GPU)] == 2 * GiB


def test_a_region_rewritten_to_zero_with_slots_zeroed_too_is_still_a_mismatch() -> None:
    c = claim("c1", POD_A, wall=2 * GiB, used=0, slots=(slot(100, 0),))
    result = audit([GpuProcess(GPU, 100, GiB)], {100: owner(100, POD_A)}, [c], TOL)
    assert kinds(result) == ["region_mismatch"]


def test_a_changed_limit_copy_or_foreign_claim_uid_is_tampering_without_a_kill() -> None:
    c = claim("c1", POD_A, limit=8 * GiB)
    (finding,) = audit([], {}, [c], TOL).findings
    assert finding.kind == "region_tampered" and finding.kill_pids == () and "8192 MiB" in finding.message
    other = ClaimView(uid="c1", namespace="t", name="n", pods=(), walls={GPU: GiB},
                      region=RegionView(claim_uid="c2", used={GPU: 0}, limit={GPU: GiB}))
    assert [f.kind for f in audit([], {}, [other], TOL).findings] == ["region_tampered"]


def test_an_unreadable_region_accounts_for_nothing() -> None:
    c = claim("c1", POD_A, region=False)
    result = audit([GpuProcess(GPU, 100, GiB)], {100: owner(100, POD_A)}, [c], TOL)
    assert kinds(result) == ["region_mismatch", "unshimmed"]


def test_unknown_process_memory_is_not_judged_as_usage() -> None:
    c = claim("c1", POD_A, used=0, slots=(slot(100, 0),))
    assert audit([GpuProcess(GPU, 100, None)], {100: owner(100, POD_A)}, [c], TOL).findings == ()


def test_two_claims_of_one_pod_on_one_gpu_are_judged_together() -> None:
    # The shim may place a process's allocations in either claim: only their sum is comparable.
    c1 = claim("c1", POD_A, wall=GiB, used=GiB, slots=(slot(100, GiB),))
    c2 = claim("c2", POD_A, wall=GiB, used=0, slots=(slot(100, 0),))
    result = audit([GpuProcess(GPU, 100, 2 * GiB - 10 * MiB)], {100: owner(100, POD_A)}, [c1, c2],
                   Tolerance(bytes_per_process=0, percent_of_wall=0))
    assert [f.kind for f in result.findings] == ["region_mismatch"]
    assert result.findings[0].claims == ("c1", "c2") and result.findings[0].wall_bytes == 2 * GiB


def test_percent_tolerance_scales_with_the_wall() -> None:
    tol = Tolerance(bytes_per_process=0, percent_of_wall=10)
    c = claim("c1", POD_A, wall=10 * GiB, used=10 * GiB, slots=(slot(100, 10 * GiB),))
    owners = {100: owner(100, POD_A)}
    assert audit([GpuProcess(GPU, 100, 11 * GiB)], owners, [c], tol).findings == ()
    assert kinds(audit([GpuProcess(GPU, 100, 11 * GiB + MiB)], owners, [c], tol)) == ["over_wall", "region_mismatch"]


def test_finding_keys_identify_a_persisting_finding_across_samples() -> None:
    c = claim("c1", POD_A, wall=GiB, used=GiB, slots=(slot(100, GiB), slot(101, GiB)))
    owners = {100: owner(100, POD_A), 101: owner(101, POD_A)}
    one = audit([GpuProcess(GPU, 100, GiB), GpuProcess(GPU, 101, GiB)], owners, [c], TOL)
    two = audit([GpuProcess(GPU, 100, GiB), GpuProcess(GPU, 101, 2 * GiB)], owners, [c], TOL)
    assert {f.key for f in one.findings if f.kind == "over_wall"} == {f.key for f in two.findings
                                                                        if f.kind == "over_wall"}
