"""The plugin's GPU health loop on the fake NVML: injected XIDs, ECC errors and a GPU off the bus
become device taints in the published ResourceSlice, Node Events, metrics and DRAResourceHealth
answers; a taint goes after the quiet period."""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from tests.fakes.nvml_control import NvmlControl
from tests.fakes.nvml_env import inventory_document
from tests.plugin.node import kubelet_for, node_settings
from vgpu_dra.kubeletplugin.health_service import HEALTH_VERSION
from vgpu_dra.kubeletplugin.proto import dra_health_v1alpha1_pb2 as hpb
from vgpu_dra.kubeletplugin.proto import dra_health_v1alpha1_pb2_grpc as hpb_grpc

NODE = "mixed-node"
GPU0 = "GPU-2f8e4d1a-7c3b-4e9f-a152-6d0c8b9e3f71"
GPU1 = "GPU-9a4c7e2b-1d5f-4a8c-b3e6-0f2d9c1a7b84"
GPU2 = "GPU-c51e0b9d-3a7f-4d26-8e4b-7f1a2c6d9e03"
QUIET = 1.5


def _wait(predicate: Any, timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached in {timeout} s")


def _taints(server: Any) -> dict[str, list[tuple[str, str, str]]]:
    """Per published device of the node, its taints as (key, value, effect)."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    for s in server.objects("ResourceSlice"):
        if s["spec"]["nodeName"] != NODE:
            continue
        for d in s["spec"]["devices"]:
            out[d["name"]] = [(t["key"], t.get("value", ""), t["effect"]) for t in d.get("taints") or ()]
    return out


def _node_events(server: Any, reason: str) -> list[str]:
    return [e["message"] for e in server.objects("Event") if e.get("reason") == reason
            and e["involvedObject"]["kind"] == "Node" and e["involvedObject"]["name"] == NODE]


@pytest.fixture
def control(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> NvmlControl:
    found = NvmlControl(tmp_path / "nvml-control")
    found.use(monkeypatch)
    return found


def _start(node_root: Any, shim_source: Any, kube_client: Any, fake_nvml: Any, inventory: Any,
           quiet: float = QUIET) -> Any:
    from vgpu_dra.kubeletplugin.plugin import KubeletPlugin

    fake_nvml.use(inventory)
    settings = node_settings(node_root, NODE, shim_source, health_quiet_seconds=quiet, health_poll_seconds=0.2)
    plugin = KubeletPlugin(settings, kube_client, sample_gpus=False)
    plugin.start()
    return plugin


@pytest.fixture
def watched(node_root, shim_source, kube_client, fake_nvml, claims, control) -> Iterator[Any]:  # noqa: ANN001
    plugin = _start(node_root, shim_source, kube_client, fake_nvml, "mixed-node")
    yield plugin
    plugin.stop()


def _tainted(plugin: Any, device: str, key: str, effect: str) -> float | None:
    return plugin.metrics.registry.get_sample_value(
        "vgpu_dra_device_tainted", {"node": NODE, "device": device, "key": key, "effect": effect})


def test_an_xid_taints_the_device_in_the_slice_then_the_quiet_period_removes_it(watched, control, fake_apiserver):
    _wait(lambda: _taints(fake_apiserver), what="the slice published")
    control.xid(GPU0, 79)
    taints = _wait(lambda: _taints(fake_apiserver).get("gpu-0"), what="a taint on gpu-0")
    assert taints == [("vgpu.dra.dev/xid", "79", "NoExecute")]
    assert _taints(fake_apiserver)["gpu-1"] == [] and _taints(fake_apiserver)["gpu-2"] == []
    [message] = _wait(lambda: _node_events(fake_apiserver, "GpuTainted"), what="a Node event")
    assert "gpu-0" in message and GPU0 in message and "XID 79" in message and "NoExecute" in message
    assert _tainted(watched, "gpu-0", "vgpu.dra.dev/xid", "NoExecute") == 1.0
    tainted_at = time.monotonic()
    _wait(lambda: _taints(fake_apiserver).get("gpu-0") == [], timeout=QUIET + 10, what="the taint removed")
    assert time.monotonic() - tainted_at >= QUIET * 0.8  # not before the quiet period
    _wait(lambda: _node_events(fake_apiserver, "GpuTaintRemoved"), what="a Node event for the removal")
    assert _tainted(watched, "gpu-0", "vgpu.dra.dev/xid", "NoExecute") is None


def test_an_application_xid_taints_nothing_and_ecc_on_another_gpu_does(watched, control, fake_apiserver):
    _wait(lambda: _taints(fake_apiserver), what="the slice published")
    control.xid(GPU0, 13)  # an illegal address in someone's kernel: the GPU is fine
    control.double_bit_ecc(GPU1)
    _wait(lambda: _taints(fake_apiserver).get("gpu-1"), what="the ECC taint")
    assert _taints(fake_apiserver)["gpu-1"] == [("vgpu.dra.dev/ecc", "double-bit", "NoExecute")]
    assert _taints(fake_apiserver)["gpu-0"] == []  # events are handled in order: the XID was seen first
    registry = watched.metrics.registry
    assert registry.get_sample_value("vgpu_dra_device_health_signals_total",
                                     {"node": NODE, "device": "gpu-0", "kind": "xid"}) == 1.0


def test_a_lost_gpu_stays_tainted_while_lost_and_is_untainted_after_a_reset(watched, control, fake_apiserver):
    _wait(lambda: _taints(fake_apiserver), what="the slice published")
    control.lost(GPU2)
    _wait(lambda: _taints(fake_apiserver).get("gpu-2"), what="the lost taint")
    assert _taints(fake_apiserver)["gpu-2"] == [("vgpu.dra.dev/lost", "gpu-is-lost", "NoExecute")]
    time.sleep(QUIET * 2)  # every poll still sees it lost: the quiet period never starts
    assert _taints(fake_apiserver)["gpu-2"] == [("vgpu.dra.dev/lost", "gpu-is-lost", "NoExecute")]
    control.reset(GPU2)
    _wait(lambda: _taints(fake_apiserver)["gpu-2"] == [], timeout=QUIET + 10, what="the taint removed")


def test_pending_page_retirement_keeps_new_claims_away(watched, control, fake_apiserver):
    _wait(lambda: _taints(fake_apiserver), what="the slice published")
    control.page_retired(GPU1)
    _wait(lambda: _taints(fake_apiserver).get("gpu-1"), what="the pages taint")
    assert _taints(fake_apiserver)["gpu-1"] == [("vgpu.dra.dev/pages", "retirement-pending", "NoSchedule")]


def test_a_gpu_without_events_is_counted_logged_and_still_watched_by_polling(
        node_root, shim_source, kube_client, fake_nvml, claims, control, fake_apiserver):
    inventory = inventory_document("mixed-node")
    inventory["gpus"][1].setdefault("fakeNvml", {})["errors"] = {"nvmlDeviceRegisterEvents": "NOT_SUPPORTED"}
    plugin = _start(node_root, shim_source, kube_client, fake_nvml, inventory)
    try:
        registry = plugin.metrics.registry
        assert registry.get_sample_value("vgpu_dra_device_event_registration_failures_total",
                                         {"node": NODE, "device": "gpu-1"}) == 1.0
        assert registry.get_sample_value("vgpu_dra_device_event_registration_failures_total",
                                         {"node": NODE, "device": "gpu-0"}) is None
        _wait(lambda: _taints(fake_apiserver), what="the slice published")
        control.lost(GPU1)
        _wait(lambda: _taints(fake_apiserver).get("gpu-1"), what="the poll's lost taint")
    finally:
        plugin.stop()


def _health_stream(settings: Any) -> Iterator[hpb.NodeWatchResourcesResponse]:
    kubelet = kubelet_for(settings)
    assert HEALTH_VERSION in kubelet.info.supported_versions
    kubelet.close()
    channel = grpc.insecure_channel(f"unix://{settings.dra_socket}")
    stub = hpb_grpc.DRAResourceHealthStub(channel)
    return stub.NodeWatchResources(hpb.NodeWatchResourcesRequest(), timeout=30)


def _states(message: hpb.NodeWatchResourcesResponse) -> dict[str, int]:
    return {d.device.device_name: d.health for d in message.devices if d.device.pool_name == NODE}


def test_the_kubelet_health_stream_reports_unhealthy_while_tainted_and_unknown_when_nvml_cannot_tell(
        node_root, shim_source, kube_client, fake_nvml, claims, control, fake_apiserver):
    inventory = inventory_document("mixed-node")
    inventory["gpus"][2].setdefault("fakeNvml", {})["errors"] = {"nvmlDeviceGetRetiredPagesPendingStatus": "UNKNOWN"}
    plugin = _start(node_root, shim_source, kube_client, fake_nvml, inventory)
    try:
        stream = _health_stream(plugin.settings)
        first = next(stream)
        assert _states(first) == {"gpu-0": hpb.HEALTHY, "gpu-1": hpb.HEALTHY, "gpu-2": hpb.UNKNOWN}
        assert plugin.metrics.registry.get_sample_value("vgpu_dra_device_health_poll_failures_total",
                                                        {"node": NODE, "device": "gpu-2"}) >= 1.0
        control.xid(GPU0, 61)
        changed = next(stream)  # sent on the change, not at the next heartbeat
        assert _states(changed)["gpu-0"] == hpb.UNHEALTHY
        assert "vgpu.dra.dev/xid=61:NoSchedule" in next(d.message for d in changed.devices
                                                           if d.device.device_name == "gpu-0")
        stream.cancel()
    finally:
        plugin.stop()


def test_the_plugin_as_a_process_taints_on_an_xid_written_by_another_process(
        settings, kubeconfig_path, fake_nvml, claims, control, fake_apiserver):
    import subprocess

    from tests.plugin.node import plugin_command

    env = control.env(fake_nvml.env("mixed-node"))
    command = [*plugin_command(settings, kubeconfig_path), "--health-quiet-seconds=30", "--health-poll-seconds=0.5"]
    log = settings.state_dir.parent / "plugin.log"
    with log.open("ab") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait(lambda: _taints(fake_apiserver), 30, "the slice published")
        control.xid(GPU1, 48)
        try:
            _wait(lambda: _taints(fake_apiserver).get("gpu-1"), 15, "the taint")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log.read_text()[-3000:]}") from None
        assert _taints(fake_apiserver)["gpu-1"] == [("vgpu.dra.dev/xid", "48", "NoExecute")]
    finally:
        process.terminate()
        process.wait(timeout=30)


def _delete_slices(server: Any) -> None:
    for found in server.objects("ResourceSlice"):
        server.delete("ResourceSlice", found["metadata"]["name"])


def test_a_restarted_plugin_publishes_the_xid_taint_until_its_quiet_period_ends(
        node_root, shim_source, kube_client, fake_nvml, claims, control, fake_apiserver, tmp_path, monkeypatch):
    plugin = _start(node_root, shim_source, kube_client, fake_nvml, "mixed-node", quiet=8)
    try:
        _wait(lambda: _taints(fake_apiserver), what="the slice published")
        control.xid(GPU0, 79)
        _wait(lambda: _taints(fake_apiserver).get("gpu-0"), what="a taint on gpu-0")
    finally:
        plugin.stop()
    # NVML reports an XID once: the restarted plugin has only what it kept. Its slices are gone
    # (deleted here), so what it publishes is what it restored.
    _delete_slices(fake_apiserver)
    NvmlControl(tmp_path / "nvml-control-after").use(monkeypatch)  # the XID is not seen again
    plugin = _start(node_root, shim_source, kube_client, fake_nvml, "mixed-node", quiet=8)
    try:
        published = _wait(lambda: _taints(fake_apiserver), what="the restarted plugin's slice")
        assert published["gpu-0"] == [("vgpu.dra.dev/xid", "79", "NoExecute")]
        assert published["gpu-1"] == [] and published["gpu-2"] == []
        assert _tainted(plugin, "gpu-0", "vgpu.dra.dev/xid", "NoExecute") == 1.0
        assert len(_node_events(fake_apiserver, "GpuTainted")) == 1  # restored, not reported again
        _wait(lambda: _taints(fake_apiserver).get("gpu-0") == [], timeout=20, what="the taint removed")
        _wait(lambda: _node_events(fake_apiserver, "GpuTaintRemoved"), what="a Node event for the removal")
    finally:
        plugin.stop()


def test_an_unreadable_taint_file_taints_every_gpu_for_one_quiet_period(
        node_root, shim_source, kube_client, fake_nvml, claims, control, fake_apiserver):
    path = node_settings(node_root, NODE, shim_source).taint_state_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"version": 1, "taints": [{"device": "gpu-0"')  # torn by a full disk, say
    plugin = _start(node_root, shim_source, kube_client, fake_nvml, "mixed-node", quiet=3)
    try:
        published = _wait(lambda: _taints(fake_apiserver), what="the slice published")
        unreadable = [("vgpu.dra.dev/health", "state-unreadable", "NoSchedule")]
        assert published == {"gpu-0": unreadable, "gpu-1": unreadable, "gpu-2": unreadable}
        assert plugin.metrics.registry.get_sample_value(
            "vgpu_dra_device_taint_state_failures_total", {"node": NODE, "operation": "load"}) == 1.0
        messages = _wait(lambda: len(_node_events(fake_apiserver, "GpuTainted")) == 3
                         and _node_events(fake_apiserver, "GpuTainted"), what="an Event per GPU")
        assert all("could not be read" in m and str(path) in m for m in messages), messages
        assert path.with_name(path.name + ".unreadable").exists()  # kept for a post-mortem
        _wait(lambda: _taints(fake_apiserver) == {"gpu-0": [], "gpu-1": [], "gpu-2": []}, timeout=20,
              what="every GPU untainted after the quiet period")
    finally:
        plugin.stop()
    assert '"taints": []' in path.read_text()  # the next start reads a good file
