"""One budget per claim across processes: concurrency, kill -9, fork and exec."""

import signal

from tests.shim.harness import GPU0, MiB, Node, read_until, stop

LIMIT = 64 * MiB
BLOCK = MiB


def test_32_processes_filling_at_once_never_pass_the_limit(node: Node) -> None:
    node.add_claim("claim-a", {GPU0: LIMIT})
    procs = [node.start("init", "ctx", "0", "fill", str(BLOCK), "hold") for _ in range(32)]
    try:
        counts = [int(read_until(p, "fill")[-1]["count"]) for p in procs]
    finally:
        for p in procs:
            stop(p)
    # Every byte of the budget went to exactly one process, none beyond it.
    assert sum(counts) == LIMIT // BLOCK
    assert node.fake_device_peak() <= LIMIT
    gpu = node.region("claim-a").gpu(GPU0)
    assert gpu.peak_bytes == LIMIT
    assert gpu.rejected_allocations >= 32


def test_kill_9_of_a_process_holding_memory_is_refunded(node: Node) -> None:
    node.add_claim("claim-a", {GPU0: LIMIT})
    holder = node.start("init", "ctx", "0", "alloc", str(48 * MiB), "hold")
    try:
        assert read_until(holder, "hold")[-2]["rc"] == "0"
        blocked = node.run("init", "ctx", "0", "alloc", str(32 * MiB))
        assert blocked.rcs() == [0, 0, 2]
        (slot,) = [s for s in node.region("claim-a").processes if s.alive]
        assert slot.pid == holder.pid and slot.used_bytes == {GPU0: 48 * MiB}
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # No cleanup code ran in the killed process; the next process finds its lock released.
    after = node.run("init", "ctx", "0", "alloc", str(32 * MiB), "alloc", str(32 * MiB), "info")
    assert after.rcs() == [0, 0, 0, 0, 0]
    assert int(after.lines[4]["free"]) == 0


def test_normal_exit_gives_the_bytes_back_immediately(node: Node) -> None:
    node.add_claim("claim-a", {GPU0: LIMIT})
    assert node.run("init", "ctx", "0", "alloc", str(40 * MiB)).rcs() == [0, 0, 0]
    snap = node.region("claim-a")
    assert snap.gpu(GPU0).used_bytes == 0
    assert snap.processes == ()


def test_a_fork_child_shares_the_claim_budget_with_its_own_slot(node: Node) -> None:
    node.add_claim("claim-a", {GPU0: LIMIT})
    parent = node.start(
        "init", "ctx", "0", "alloc", str(24 * MiB), "fork", "alloc", str(24 * MiB), "alloc", str(24 * MiB), "hold"
    )
    try:
        lines = read_until(parent, "hold")
        child = [line for line in lines if line["cmd"] == "alloc"][1:]
        assert [c["rc"] for c in child] == ["0", "2"]  # 24 + 24 fit in 64, a third 24 does not
        slots = [s for s in node.region("claim-a").processes if s.alive]
        assert sorted(s.used_bytes[GPU0] for s in slots) == [24 * MiB, 24 * MiB]
        assert len({s.pid for s in slots}) == 2
    finally:
        stop(parent)


def test_an_execd_image_is_accounted_and_the_old_image_refunded(node: Node) -> None:
    node.add_claim("claim-a", {GPU0: LIMIT})
    result = node.run(
        "init", "ctx", "0", "alloc", str(40 * MiB), "exec", "init", "ctx", "0", "alloc", str(40 * MiB), "alloc",
        str(40 * MiB),
    )
    # Before exec 40 MiB; the new image (same PID) gets 40 MiB again — the old image's memory died
    # with it — and its second 40 MiB hits the wall.
    assert [line["rc"] for line in result.lines] == ["0", "0", "0", "0", "0", "0", "2"]


def test_another_claim_on_the_same_gpu_has_its_own_budget(node: Node) -> None:
    # Two containers with one claim each on the same physical GPU (one fake device state).
    node.add_claim("claim-a", {GPU0: LIMIT})
    other_node = Node(root=node.root / "other", devices=node.devices, shared_state=node.state_file)
    other_node.add_claim("claim-b", {GPU0: LIMIT})
    holder = other_node.start("init", "ctx", "0", "alloc", str(60 * MiB), "hold")
    try:
        read_until(holder, "hold")
        mine = node.run("init", "ctx", "0", "alloc", str(60 * MiB), "info", "alloc", str(8 * MiB))
        assert mine.rcs() == [0, 0, 0, 0, 2]
        assert int(mine.lines[3]["free"]) == 4 * MiB
        assert node.fake_device_peak() == 120 * MiB  # both claims' bytes were on the card at once
        assert other_node.region("claim-b").gpu(GPU0).used_bytes == 60 * MiB
    finally:
        stop(holder)
