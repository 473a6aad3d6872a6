"""Every way an application reaches the driver API leads through the wall."""

import pytest

from tests.shim.harness import GPU0, MiB, Node

LIMIT = 16 * MiB
ROUTES = ["link", "dlsym", "dlsym-next", "procaddr:12000", "procaddr:11030", "procaddr1:11030", "ptds:12080"]


@pytest.fixture
def claimed(node: Node) -> Node:
    node.add_claim("claim-a", {GPU0: LIMIT})
    return node


@pytest.mark.parametrize("mode", ROUTES)
def test_wall_holds_whichever_way_the_api_was_obtained(claimed: Node, mode: str) -> None:
    result = claimed.run(
        "init", "ctx", "0", "alloc", str(12 * MiB), "alloc", str(8 * MiB), "async", str(8 * MiB), "info",
        mode=mode,
    )
    assert result.rcs() == [0, 0, 0, 2, 2, 0], result
    assert int(result.lines[5]["free"]) == 4 * MiB
    assert int(result.lines[5]["total"]) == LIMIT


@pytest.mark.parametrize(
    ("name", "version", "flags", "expected"),
    [
        ("cuMemAlloc", 3000, 0, "cuMemAlloc"),  # pre-3.2 callers get the 32-bit v1 ABI, wrapped
        ("cuMemAlloc", 12000, 0, "cuMemAlloc_v2"),
        ("cuMemGetInfo", 3000, 0, "cuMemGetInfo"),
        ("cuMemGetInfo", 12000, 0, "cuMemGetInfo_v2"),
        ("cuCtxCreate", 3020, 0, "cuCtxCreate_v2"),
        ("cuCtxCreate", 11040, 0, "cuCtxCreate_v3"),
        ("cuCtxCreate", 12050, 0, "cuCtxCreate_v4"),
        ("cuMemAllocAsync", 12000, 0, "cuMemAllocAsync"),
        ("cuMemAllocAsync", 12000, 2, "cuMemAllocAsync_ptsz"),  # per-thread default stream
        ("cuMemFreeAsync", 12000, 2, "cuMemFreeAsync_ptsz"),
        ("cuLaunchKernel", 12000, 2, "cuLaunchKernel_ptsz"),
        ("cuLaunchKernel", 12000, 1, "cuLaunchKernel"),  # legacy stream asked explicitly
        ("cuGraphLaunch", 12000, 2, "cuGraphLaunch_ptsz"),
        ("cuGraphLaunch", 12000, 0, "cuGraphLaunch"),
        ("cuLaunchKernelEx", 12000, 0, "cuLaunchKernelEx"),
        ("cuLaunchKernelEx", 12000, 2, "cuLaunchKernelEx_ptsz"),
        ("cuLaunchCooperativeKernel", 12000, 0, "cuLaunchCooperativeKernel"),
        ("cuLaunchCooperativeKernel", 12000, 2, "cuLaunchCooperativeKernel_ptsz"),
        ("cuGetProcAddress", 11030, 0, "cuGetProcAddress"),
        ("cuGetProcAddress", 12000, 0, "cuGetProcAddress_v2"),  # nested lookups stay hooked
        ("cuMemCreate", 12000, 0, "cuMemCreate"),
        ("cuMipmappedArrayCreate", 12000, 0, "cuMipmappedArrayCreate"),
    ],
)
def test_get_proc_address_hands_out_our_wrapper_of_the_exact_variant(
    claimed: Node, name: str, version: int, flags: int, expected: str
) -> None:
    result = claimed.run("resolve", name, str(version), str(flags))
    assert result.lines[0]["rc"] == "0"
    assert (result.lines[0]["lib"], result.lines[0]["sym"]) == ("libvgpu-test.so", expected)


def test_functions_we_do_not_wrap_come_straight_from_the_driver(claimed: Node) -> None:
    result = claimed.run("resolve", "cuDeviceGet", "12000", "0")
    assert (result.lines[0]["lib"], result.lines[0]["sym"]) == ("libcuda.so.1", "cuDeviceGet")


def test_version_too_old_is_reported_like_the_driver_does(claimed: Node) -> None:
    result = claimed.run("resolve", "cuMemCreate", "9000", "0")
    assert result.lines[0] == {"cmd": "resolve", "rc": "500", "status": "2"}  # NOT_FOUND, VERSION_NOT_SUFFICIENT


def test_without_claims_lookups_are_untouched(node: Node) -> None:
    result = node.run("resolve", "cuMemAlloc", "12000", "0")
    assert (result.lines[0]["lib"], result.lines[0]["sym"]) == ("libcuda.so.1", "cuMemAlloc_v2")


@pytest.mark.parametrize(
    "name", ["cuMemAlloc_v2", "cuMemAllocAsync_ptsz", "cuMemFreeAsync_ptsz", "cuLaunchKernel_ptsz", "cuGetProcAddress_v2"]
)
def test_dlsym_on_the_driver_handle_returns_our_wrapper(claimed: Node, name: str) -> None:
    result = claimed.run("dlsymname", name)
    assert (result.lines[0]["lib"], result.lines[0]["sym"]) == ("libvgpu-test.so", name)


def test_dlsym_of_other_cu_prefixed_names_is_left_alone(claimed: Node) -> None:
    # Lower-case after "cu" (cublas*, curl_*) is not the driver API: never wrapped, never looked at.
    result = claimed.run("dlsymname", "cuda_nonexistent_symbol")
    assert result.lines[0] == {"cmd": "dlsymname", "rc": "500"}


LAUNCH_NAMES = [
    "cuLaunchKernel", "cuLaunchKernel_ptsz", "cuLaunchKernelEx", "cuLaunchKernelEx_ptsz",
    "cuLaunchCooperativeKernel", "cuLaunchCooperativeKernel_ptsz", "cuGraphLaunch", "cuGraphLaunch_ptsz",
]


@pytest.mark.parametrize("name", LAUNCH_NAMES)
def test_dlsym_of_every_launch_variant_leads_to_the_limiter(claimed: Node, name: str) -> None:
    result = claimed.run("init", "dlsymname", name)
    assert (result.lines[1]["lib"], result.lines[1]["sym"]) == ("libvgpu-test.so", name)


def test_every_launch_variant_passes_through(claimed: Node) -> None:
    result = claimed.run("init", "ctx", "0", "launchall")
    codes = {k: v for k, v in result.lines[2].items() if k.startswith("cu")}
    assert len(codes) == 8 and set(codes.values()) == {"0"}
