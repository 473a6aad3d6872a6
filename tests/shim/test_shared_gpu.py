"""One GPU in two claims of the same process: both walls add up, each claim's region stays exact.

The claims are charged in claim-uid order, one whole allocation in one claim (docs/shim.md,
"One GPU in several claims"). Here claim-a has the bigger wall (1 GiB) and claim-b 512 MiB.
"""

import signal

from tests.shim.busy_trace import collect, window
from tests.shim.harness import GPU0, GPU_A, MiB, Node, neighbour_holding, read_until, stop
from tests.shim.test_nvml import OTHER_PID, probe_nvml
from vgpu_dra.driver.region import read_region

GiB = 1 << 30


def two_claims(node: Node, **caps: int) -> None:
    node.add_claim("claim-a", {GPU0: GiB}, cores=caps.get("a", 0), policy="hard")
    node.add_claim("claim-b", {GPU0: 512 * MiB}, cores=caps.get("b", 0), policy="hard")


def used(node: Node, uid: str) -> int:
    return node.region(uid).gpu(GPU0).used_bytes


def slot_bytes(node: Node, uid: str, pid: int) -> int:
    (slot,) = [s for s in node.region(uid).processes if s.alive and s.pid == pid]
    return slot.used_bytes[GPU0]


def test_a_process_gets_the_sum_of_both_walls_charged_claim_by_claim(node: Node) -> None:
    two_claims(node)
    holder = node.start(
        "init", "ctx", "0",
        "alloc", str(768 * MiB),  # claim-a (first by uid)
        "alloc", str(512 * MiB),  # 256 MiB left in claim-a: whole into claim-b
        "alloc", str(256 * MiB),  # claim-a again
        "alloc", "1",             # 1.5 GiB in all: nothing fits anywhere
        "info", "info1", "total", "0", "hold",
    )
    try:
        lines = read_until(holder, "hold")
        assert [int(line["rc"]) for line in lines] == [0, 0, 0, 0, 0, 2, 0, 0, 0, 0]
        assert (int(lines[6]["free"]), int(lines[6]["total"])) == (0, 1536 * MiB)  # cuMemGetInfo_v2
        assert (int(lines[7]["free"]), int(lines[7]["total"])) == (0, 1536 * MiB)  # cuMemGetInfo
        assert int(lines[8]["total"]) == 1536 * MiB  # cuDeviceTotalMem
        a, b = node.region("claim-a").gpu(GPU0), node.region("claim-b").gpu(GPU0)
        assert (a.used_bytes, a.limit_bytes, b.used_bytes, b.limit_bytes) == (GiB, GiB, 512 * MiB, 512 * MiB)
        assert (slot_bytes(node, "claim-a", holder.pid), slot_bytes(node, "claim-b", holder.pid)) == (GiB, 512 * MiB)
        # One refused allocation is one rejection, counted once (on the first claim).
        assert (a.rejected_allocations, b.rejected_allocations) == (1, 0)
    finally:
        stop(holder)  # kill -9: no exit handler runs in the holder


def test_kill_9_refunds_both_claims(node: Node) -> None:
    two_claims(node)
    holder = node.start("init", "ctx", "0", "alloc", str(GiB), "alloc", str(512 * MiB), "hold")
    try:
        assert [line["rc"] for line in read_until(holder, "hold")] == ["0"] * 5
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (used(node, "claim-a"), used(node, "claim-b")) == (GiB, 512 * MiB)  # nobody refunded yet
    # The next process finds the dead slots in both regions when it runs into each wall.
    after = node.start("init", "ctx", "0", "alloc", str(GiB), "alloc", str(512 * MiB), "info", "hold")
    try:
        lines = read_until(after, "hold")
        assert [int(line["rc"]) for line in lines] == [0] * 6
        assert int(lines[4]["free"]) == 0
        assert (slot_bytes(node, "claim-a", after.pid), slot_bytes(node, "claim-b", after.pid)) == (GiB, 512 * MiB)
        assert (used(node, "claim-a"), used(node, "claim-b")) == (GiB, 512 * MiB)
    finally:
        stop(after)


def test_a_free_refunds_the_claim_that_was_charged(node: Node) -> None:
    two_claims(node)
    holder = node.start(
        "init", "ctx", "0",
        "alloc", str(768 * MiB),   # id 0: claim-a
        "alloc", str(512 * MiB),   # id 1: claim-b
        "free", "0",               # back to claim-a only
        "vmm", "0", str(384 * MiB),  # id 2: claim-a again (claim-b is full)
        "free", "1",               # back to claim-b only
        "info", "hold",
    )
    try:
        lines = read_until(holder, "hold")
        assert [int(line["rc"]) for line in lines] == [0] * 9
        assert (used(node, "claim-a"), used(node, "claim-b")) == (384 * MiB, 0)
        assert (slot_bytes(node, "claim-a", holder.pid), slot_bytes(node, "claim-b", holder.pid)) == (384 * MiB, 0)
        assert int(lines[7]["free"]) == 1152 * MiB
    finally:
        stop(holder)


def test_one_allocation_is_never_split_across_the_claims(node: Node) -> None:
    two_claims(node)
    # 1.25 GiB is less than the 1.5 GiB in all but more than either wall: refused, as documented.
    result = node.run(
        "init", "ctx", "0", "alloc", str(1280 * MiB), "info",
        "pool", str(1280 * MiB), "async", str(GiB), "alloc", str(512 * MiB),
    )
    assert result.rcs() == [0, 0, 2, 0, 2, 0, 0]
    assert (int(result.lines[3]["free"]), int(result.lines[3]["total"])) == (1536 * MiB, 1536 * MiB)
    assert node.region("claim-a").gpu(GPU0).peak_bytes == GiB
    assert node.region("claim-b").gpu(GPU0).peak_bytes == 512 * MiB
    assert (used(node, "claim-a"), used(node, "claim-b")) == (0, 0)  # all returned at exit


def test_another_container_of_one_claim_takes_from_that_claim_only(node: Node) -> None:
    two_claims(node)
    # A second container that references only claim-a: the same claim directory, mounted alone.
    neighbour = Node(root=node.root / "neighbour", devices=node.devices, shared_state=node.state_file)
    neighbour.claims_root.mkdir(parents=True)
    (neighbour.claims_root / "claim-a").symlink_to(node.claims_root / "claim-a")
    holder = neighbour.start("init", "ctx", "0", "alloc", str(768 * MiB), "hold")
    try:
        read_until(holder, "hold")
        result = node.run("init", "ctx", "0", "info", "alloc", str(512 * MiB), "alloc", str(256 * MiB), "alloc", "1")
        assert result.rcs() == [0, 0, 0, 0, 0, 2]
        assert (int(result.lines[2]["free"]), int(result.lines[2]["total"])) == (768 * MiB, 1536 * MiB)
    finally:
        stop(holder)


def test_nvml_shows_the_combined_view_and_the_processes_of_both_claims(node: Node) -> None:
    node.devices = {GPU_A: 8 * GiB}
    node.add_claim("claim-a", {GPU_A: 2 * GiB})
    node.add_claim("claim-b", {GPU_A: GiB})
    # A process of another container that holds only claim-b (not the first claim of the GPU).
    neighbour = Node(root=node.root / "neighbour", devices=node.devices, shared_state=node.state_file)
    neighbour.claims_root.mkdir(parents=True)
    (neighbour.claims_root / "claim-b").symlink_to(node.claims_root / "claim-b")
    holder = neighbour.start("init", "ctx", "0", "alloc", str(512 * MiB), "hold")
    try:
        read_until(holder, "hold")
        seen = probe_nvml(node, holder.pid, GPU_A)
    finally:
        stop(holder)
    claimed = seen[GPU_A]
    assert claimed["v1"] == [3 * GiB, 512 * MiB, 2560 * MiB]
    assert claimed["v2"] == [3 * GiB, 0, 512 * MiB, 2560 * MiB]
    ours = sorted([holder.pid, seen["me"]])
    assert OTHER_PID not in claimed["procs"]["v3"]
    assert claimed["procs"] == {"v1": ours, "v2": ours, "v3": ours, "need": [7, 2]}


def test_the_caps_of_both_claims_add_up_and_each_claim_stays_within_its_own(node: Node) -> None:
    two_claims(node, a=20, b=50)
    result = node.run("init", "ctx", "0", "busy", "2000", "1000", timeout=30)
    assert result.rc(2) == 0, result
    assert abs(float(result.lines[2]["share"]) - 70) <= 5.0, result.lines  # 20 + 50
    a, b = node.region("claim-a").gpu(GPU0), node.region("claim-b").gpu(GPU0)
    # Both claims' budgets were used, and both held launches back at their own cap.
    assert a.launches_delayed > 0 and a.throttled_ns > 0
    assert b.launches_delayed > 0 and b.throttled_ns > 0


def test_a_claim_shared_with_another_container_keeps_its_cap_for_both(node: Node) -> None:
    two_claims(node, a=20, b=50)
    # Another container holds claim-a only and keeps it busy: claim-a's 20 % is shared by both
    # processes, claim-b's 50 % belongs to the process with both claims.
    neighbour = Node(root=node.root / "neighbour", devices=node.devices, shared_state=node.state_file)
    neighbour.claims_root.mkdir(parents=True)
    (neighbour.claims_root / "claim-a").symlink_to(node.claims_root / "claim-a")
    both = node.start_loop("--seconds", "4")
    only_a = neighbour.start_loop("--seconds", "4")
    tb, ta = collect(both, timeout=30), collect(only_a, timeout=30)
    for second in (2, 3):
        assert window([ta], second, second + 1) <= 20 + 5.0  # claim-a as a whole: at most 20 %
        assert abs(window([ta, tb], second, second + 1) - 70) <= 5.0  # the two claims: 70 % in all
        assert window([tb], second, second + 1) >= 50 - 5.0  # claim-b's share is the first process's


def test_an_uncapped_claim_on_the_gpu_lifts_the_cap(node: Node) -> None:
    two_claims(node, a=30, b=0)
    loop = node.start_loop("--seconds", "1.5")
    trace = collect(loop, timeout=20)
    assert window([trace], 0.5, 1.5) >= 95.0
    assert node.region("claim-a").gpu(GPU0).launches_delayed == 0


def test_the_order_is_the_claim_uid_not_the_directory_name(node: Node) -> None:
    node.add_claim("claim-z", {GPU0: GiB})
    (node.claims_root / "claim-z").rename(node.claims_root / "0-first-directory")
    node.add_claim("claim-a", {GPU0: GiB})
    holder = node.start("init", "ctx", "0", "alloc", str(256 * MiB), "hold")
    try:
        read_until(holder, "hold")
        assert used(node, "claim-a") == 256 * MiB
        assert read_region(node.claims_root / "0-first-directory" / "region").gpu(GPU0).used_bytes == 0
    finally:
        stop(holder)


def test_the_context_footprint_goes_to_the_first_claim_it_fits_in(node: Node) -> None:
    node.ctx_bytes = 3 * MiB
    two_claims(node)
    # The primary context is current when the second one is created: its footprint is measured.
    result = node.run("init", "ctx", "0", "ctxcreate", "0", "info")
    assert result.rcs() == [0, 0, 0, 0]
    assert int(result.lines[3]["free"]) == 1536 * MiB - 3 * MiB
    assert (node.region("claim-a").gpu(GPU0).context_bytes, node.region("claim-b").gpu(GPU0).context_bytes) == (
        3 * MiB,
        0,
    )
    # A footprint too large for claim-a goes whole to claim-b. (No NVML: the primary context is
    # charged an upper bound, the GPU's used memory, a neighbour's 600 MiB included.)
    other = Node(root=node.root / "full", ctx_bytes=3 * MiB, nvml=False)
    other.add_claim("claim-a", {GPU0: 512 * MiB}, policy="hard")
    other.add_claim("claim-b", {GPU0: GiB}, policy="hard")
    with neighbour_holding(other, 600 * MiB):
        result = other.run("init", "ctx", "0", "info")
        assert result.rcs() == [0, 0, 0]
        peaks = [other.region(uid).gpu(GPU0).peak_bytes for uid in ("claim-a", "claim-b")]
        assert peaks == [0, 603 * MiB]


def test_a_fork_child_gets_its_own_slots_in_both_claims(node: Node) -> None:
    two_claims(node)
    parent = node.start(
        "init", "ctx", "0", "alloc", str(768 * MiB), "fork",
        "alloc", str(512 * MiB), "alloc", str(256 * MiB), "alloc", "1", "hold",
    )
    try:
        lines = read_until(parent, "hold")
        child = [line["rc"] for line in lines if line["cmd"] == "alloc"][1:]
        assert child == ["0", "0", "2"]  # the parent's 768 MiB count: 1.5 GiB in all
        a, b = node.region("claim-a"), node.region("claim-b")
        assert sorted(s.used_bytes[GPU0] for s in a.processes if s.alive) == [256 * MiB, 768 * MiB]
        assert sorted(s.used_bytes[GPU0] for s in b.processes if s.alive) == [0, 512 * MiB]
    finally:
        stop(parent)


def test_a_size_correction_that_does_not_fit_moves_the_allocation_whole(node: Node) -> None:
    # A 1000 x 1000 float array is estimated at 4,000,000 bytes; the driver needs 4,096,000
    # (rows padded to 4096). claim-a has room for the estimate, not for the array.
    node.add_claim("claim-a", {GPU0: 4_050_000})
    node.add_claim("claim-b", {GPU0: 8 * MiB})
    holder = node.start("init", "ctx", "0", "array", "1000", "1000", "info", "hold")
    try:
        lines = read_until(holder, "hold")
        assert [int(line["rc"]) for line in lines] == [0, 0, 0, 0, 0]
        assert (used(node, "claim-a"), used(node, "claim-b")) == (0, 4_096_000)
        assert node.region("claim-a").gpu(GPU0).peak_bytes == 4_000_000  # the estimate, given back
    finally:
        stop(holder)
    result = node.run("init", "ctx", "0", "array", "1000", "1000", "free", "0", "info")
    assert result.rcs() == [0, 0, 0, 0, 0]
    assert int(result.lines[4]["free"]) == 4_050_000 + 8 * MiB  # the free went to claim-b
