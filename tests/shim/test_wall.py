"""The memory wall on every allocation path: refusal past the limit, exact refunds, rollback."""

from typing import Any

import pytest

from tests.shim.harness import GPU0, MiB, Node, read_until, stop

LIMIT = 64 * MiB

# (commands that allocate well under the limit, the bytes the fake driver really takes for them)
PATHS = {
    "alloc": (["alloc", str(8 * MiB)], 8 * MiB),
    "alloc-v1": (["alloc1", str(8 * MiB)], 8 * MiB),
    "managed": (["managed", str(8 * MiB)], 8 * MiB),
    "pitch": (["pitch", "1000", "4096"], 1024 * 4096),  # rows padded to 1024 bytes
    "array": (["array", "1000", "1000"], 4096 * 1000),  # float rows of 4000 B padded to 4096
    "array3d": (["array3d", "100", "100", "100"], 512 * 100 * 100),
    "mipmap": (["mipmap", "1024", "1024", "3"], 4096 * 1024 + 2048 * 512 + 1024 * 256),
    "vmm": (["vmm", "0", str(8 * MiB)], 8 * MiB),
    "async": (["async", str(8 * MiB)], 8 * MiB),
    "pool": (["pool", str(8 * MiB)], 8 * MiB),
}

# The same path asked for more than the whole limit.
TOO_BIG = {
    "alloc": ["alloc", str(LIMIT + 1)],
    "alloc-v1": ["alloc1", str(LIMIT + 1)],
    "managed": ["managed", str(LIMIT + 1)],
    "pitch": ["pitch", "4096", str(LIMIT // 4096 + 1)],
    "array": ["array", "4096", str(LIMIT // 16384 + 1)],
    "array3d": ["array3d", "128", "128", str(LIMIT // 65536 + 1)],
    "mipmap": ["mipmap", "4096", "4096", "2"],
    "vmm": ["vmm", "0", str(LIMIT + 2 * MiB)],
    "async": ["async", str(LIMIT + 1)],
    "pool": ["pool", str(LIMIT + 1)],
}


@pytest.fixture
def claimed(node: Node) -> Node:
    node.add_claim("claim-a", {GPU0: LIMIT})
    return node


@pytest.mark.parametrize("path", sorted(PATHS))
def test_each_path_is_charged_exactly_and_refunded_by_its_free(claimed: Node, path: str) -> None:
    commands, real_bytes = PATHS[path]
    result = claimed.run("init", "ctx", "0", *commands, "info", "free", "0", "info")
    assert result.rcs() == [0] * 6, result
    # While held: the claim's view shows exactly the bytes the driver took.
    assert int(result.lines[3]["free"]) == LIMIT - real_bytes
    assert int(result.lines[5]["free"]) == LIMIT
    region = claimed.region("claim-a").gpu(GPU0)
    assert region.used_bytes == 0
    assert region.peak_bytes == real_bytes


@pytest.mark.parametrize("path", sorted(TOO_BIG))
def test_each_path_is_refused_past_the_limit(claimed: Node, path: str) -> None:
    result = claimed.run("init", "ctx", "0", *TOO_BIG[path], "alloc", str(LIMIT))
    assert result.rcs()[:2] == [0, 0]
    assert result.rc(2) == 2, f"{path} crossed the wall: {result.lines}"  # CUDA_ERROR_OUT_OF_MEMORY
    assert result.rc(3) == 0, "a refused call must not keep any charge"
    gpu = claimed.region("claim-a").gpu(GPU0)
    assert gpu.rejected_allocations == 1
    assert gpu.peak_bytes == LIMIT
    assert claimed.fake_device_peak() == LIMIT  # the driver never saw more than the wall


def test_the_wall_counts_the_sum_of_allocations(claimed: Node) -> None:
    result = claimed.run("init", "ctx", "0", "fill", str(5 * MiB), "info")
    assert result.lines[2]["count"] == str(LIMIT // (5 * MiB))
    assert int(result.lines[3]["free"]) == LIMIT % (5 * MiB)


def test_a_failing_driver_call_refunds_its_reservation(claimed: Node) -> None:
    claimed.fail = ("cuMemAlloc_v2", "cuMemCreate", "cuArrayCreate_v2")
    result = claimed.run("init", "ctx", "0", "alloc", str(MiB), "vmm", "0", str(2 * MiB), "array", "64", "64", "info")
    assert result.rcs()[2:5] == [999, 999, 999]  # the driver's own error comes back unchanged
    assert int(result.lines[5]["free"]) == LIMIT
    gpu = claimed.region("claim-a").gpu(GPU0)
    assert (gpu.used_bytes, gpu.rejected_allocations) == (0, 0)


def test_a_failing_free_keeps_the_charge(claimed: Node) -> None:
    claimed.fail = ("cuMemFree_v2",)
    result = claimed.run("init", "ctx", "0", "alloc", str(4 * MiB), "free", "0", "info")
    assert result.rc(3) == 999
    assert int(result.lines[4]["free"]) == LIMIT - 4 * MiB


def test_host_memory_through_vmm_is_not_charged(claimed: Node) -> None:
    result = claimed.run("init", "ctx", "0", "vmmhost", str(LIMIT * 2), "info")
    assert result.rc(2) == 0
    assert int(result.lines[3]["free"]) == LIMIT


def test_pitch_is_charged_by_the_pitch_the_driver_returned(claimed: Node) -> None:
    result = claimed.run("init", "ctx", "0", "pitch", "1000", "100", "info")
    assert result.lines[2]["pitch"] == "1024"
    assert int(result.lines[3]["free"]) == LIMIT - 1024 * 100


def test_allocation_without_a_context_is_refused_like_the_driver_does(claimed: Node) -> None:
    result = claimed.run("init", "alloc", str(MiB))
    assert result.rc(1) == 201  # CUDA_ERROR_INVALID_CONTEXT
    assert claimed.region("claim-a").gpu(GPU0).used_bytes == 0


def test_threads_allocating_at_once_share_the_wall_and_free_exactly(claimed: Node) -> None:
    result = claimed.run("init", "ctx", "0", "mtfill", "8", str(64 * 1024), "info")
    assert result.rcs() == [0, 0, 0, 0]
    assert int(result.lines[2]["count"]) == LIMIT // (64 * 1024)
    assert int(result.lines[3]["free"]) == LIMIT
    assert claimed.fake_device_peak() <= LIMIT


def test_tens_of_thousands_of_live_allocations_are_all_refunded(claimed: Node) -> None:
    result = claimed.run("init", "ctx", "0", "fill", "1024", "freeall", "info")
    assert result.lines[2]["count"] == str(LIMIT // 1024)  # 65,536 pointers in the map at once
    assert result.rc(3) == 0
    assert int(result.lines[4]["free"]) == LIMIT


def test_a_tampered_region_cannot_raise_the_limit_or_free_room(claimed: Node) -> None:
    import mmap

    from vgpu_dra.driver import region as layout

    path = claimed.claims_root / "claim-a" / "region"
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), layout.REGION_SIZE) as mem:
        with layout.ffi.from_buffer("struct vgpu_region *", mem) as view:
            view.gpus[0].limit_bytes = 1 << 40  # the region is writable by the tenant...
            view.gpus[0].used_bytes = -(1 << 40)
    result = claimed.run("init", "ctx", "0", "alloc", str(LIMIT), "alloc", "1")
    assert result.rcs() == [0, 0, 0, 2]  # ...but the wall comes from the read-only config
    assert claimed.region("claim-a").gpu(GPU0).limit_bytes == LIMIT  # and is rewritten from it


# A driver without the memory-requirements calls (before CUDA 11.6, or a minimal one), or where
# they fail: the shim cannot ask what an array really takes, so what it charges must be an upper
# bound. Small mipmapped arrays are the hard case: the fake driver starts every level on a 64 KiB
# boundary, so a 256 x 256 RGBA8 mipmap with 9 levels takes 768 KiB for 341 KiB of texels.
FALLBACKS: dict[str, dict[str, Any]] = {
    "old-driver": {"driver": "old-driver"},
    "failing-calls": {"fail": ("cuArrayGetMemoryRequirements", "cuMipmappedArrayGetMemoryRequirements")},
    # Levels on 256 KiB boundaries: coarser than the shim's structural bound assumes, so only what
    # device-wide free memory says the creation took keeps the charge an upper bound.
    "coarse-layout": {"driver": "old-driver", "env": {"FAKE_CUDA_LEVEL_ALIGN": str(256 * 1024)}},
}


@pytest.mark.parametrize("fill", [["fillmip", "256", "256", "9"], ["fillmip", "1024", "1024", "11"],
                                  ["fillarray", "100", "100"], ["fillarray", "1000", "3"]],
                         ids=["small-mipmaps", "large-mipmaps", "small-arrays", "thin-arrays"])
@pytest.mark.parametrize("how", sorted(FALLBACKS))
def test_arrays_stay_under_the_wall_when_the_driver_cannot_tell_their_size(
        node: Node, how: str, fill: list[str]) -> None:
    settings = dict(FALLBACKS[how])
    env = settings.pop("env", {})
    for key, value in settings.items():
        setattr(node, key, value)
    # 500 KiB more than LIMIT: the last small mipmap's texels fit in what is left, its 768 KiB do not.
    wall = LIMIT + 500 * 1024
    node.add_claim("claim-a", {GPU0: wall})
    holder = node.start("init", "ctx", "0", *fill, "info", "hold", **env)
    try:
        lines = read_until(holder, "hold")
        assert lines[2]["rc"] == "2" and int(lines[2]["count"]) > 0, lines  # filled up to the wall
        assert node.fake_device_used() <= wall  # what the driver holds for the claim: within the wall
        gpu = node.region("claim-a").gpu(GPU0)
    finally:
        stop(holder)
    if how == "old-driver":
        # Known up front (no such call): the bound is reserved before each creation, so the
        # driver never held more than the wall even for a moment.
        assert node.fake_device_peak() <= wall
    assert gpu.limit_errors > 0
    assert gpu.limit_error_call.startswith("cuMipmappedArray" if fill[0] == "fillmip" else "cuArrayGet")
    assert holder.stderr is not None and "upper bound" in holder.stderr.read()


def test_with_the_requirements_calls_arrays_fill_the_wall_exactly(claimed: Node) -> None:
    # The same small mipmaps on a driver that tells their size: exactly LIMIT // 768 KiB of them.
    result = claimed.run("init", "ctx", "0", "fillmip", "256", "256", "9", "info")
    assert int(result.lines[2]["count"]) == LIMIT // (768 * 1024)
    assert claimed.region("claim-a").gpu(GPU0).limit_errors == 0


def test_an_allocation_the_driver_will_not_undo_keeps_its_charge(node: Node) -> None:
    # A 1000 x 1000 float array is reserved at its 4,000,000 texel bytes; the driver needs
    # 4,096,000, which does not fit under this wall, so the shim undoes it. If the driver refuses
    # to destroy it, the memory is still there: the reservation stays charged and is counted.
    node.add_claim("claim-a", {GPU0: 4_050_000})
    node.fail = ("cuArrayDestroy",)
    holder = node.start("init", "ctx", "0", "array", "1000", "1000", "info", "hold")
    try:
        lines = read_until(holder, "hold")
        assert lines[2]["rc"] == "2"  # CUDA_ERROR_OUT_OF_MEMORY: the array does not fit
        assert int(lines[3]["free"]) == 50_000  # not 4,050,000: the driver still holds the array
        gpu = node.region("claim-a").gpu(GPU0)
    finally:
        stop(holder)
    assert gpu.limit_errors == 1 and gpu.limit_error_call.startswith("undoing an allocation")
