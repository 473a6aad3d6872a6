"""ResourceSlice publishing: pool shape, ownership, generations, republish after a wipe, gates off."""
from __future__ import annotations

import time
from dataclasses import replace

import pytest
import structlog
import structlog.testing

from vgpu_dra.driver.inventory import discover
from vgpu_dra.kubeletplugin.slices import SlicePublisher

NODE = "mixed-node"


def _slices(server):
    return sorted((s for s in server.objects("ResourceSlice") if s["spec"]["nodeName"] == NODE),
                  key=lambda s: s["metadata"]["name"])


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def inventory(fake_nvml):  # noqa: ANN001, ANN201
    fake_nvml.use("mixed-node")
    return discover(NODE)


def test_plugin_publishes_one_pool_owned_by_the_node(plugin, fake_apiserver):
    slices = _wait(lambda: _slices(fake_apiserver))
    node = fake_apiserver.get("Node", NODE)
    (only,) = slices
    spec = only["spec"]
    assert spec["driver"] == "vgpu.dra.dev" and spec["nodeName"] == NODE
    assert spec["pool"]["name"] == NODE and spec["pool"]["resourceSliceCount"] == 1
    assert spec["pool"]["generation"] >= 1
    assert [d["name"] for d in spec["devices"]] == ["gpu-0", "gpu-1", "gpu-2"]
    assert all(d.get("allowMultipleAllocations") for d in spec["devices"])
    (owner,) = only["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("Node", NODE,
                                                                             node["metadata"]["uid"], True)


def test_slices_are_republished_after_the_kubelet_deletes_them(plugin, fake_apiserver):
    (first,) = _wait(lambda: _slices(fake_apiserver))
    fake_apiserver.delete("ResourceSlice", first["metadata"]["name"])  # the kubelet's wipe at its start
    (again,) = _wait(lambda: _slices(fake_apiserver))
    assert again["spec"]["pool"]["generation"] > first["spec"]["pool"]["generation"]
    assert again["spec"]["devices"] == first["spec"]["devices"]


def test_split_into_slices_and_generation_bump_on_change(kube_client, fake_apiserver, claims, inventory):
    publisher = SlicePublisher(kube_client, NODE, "vgpu.dra.dev", inventory, max_devices_per_slice=2)
    assert publisher.sync() is True
    slices = _slices(fake_apiserver)
    assert [len(s["spec"]["devices"]) for s in slices] == [2, 1]
    assert {s["spec"]["pool"]["resourceSliceCount"] for s in slices} == {2}
    assert len({s["spec"]["pool"]["generation"] for s in slices}) == 1
    assert publisher.sync() is False  # nothing changed: nothing written, generation kept

    smaller = replace(inventory, gpus=inventory.gpus[:1])  # a GPU disappeared (fell off the bus)
    publisher.set_inventory(smaller)
    assert publisher.sync() is True
    (remaining,) = _slices(fake_apiserver)
    assert remaining["spec"]["pool"]["generation"] == slices[0]["spec"]["pool"]["generation"] + 1
    assert remaining["spec"]["pool"]["resourceSliceCount"] == 1


def test_a_restarted_publisher_continues_the_generation(kube_client, fake_apiserver, claims, inventory):
    SlicePublisher(kube_client, NODE, "vgpu.dra.dev", inventory).sync()
    (before,) = _slices(fake_apiserver)
    SlicePublisher(kube_client, NODE, "vgpu.dra.dev", inventory).sync()
    (after,) = _slices(fake_apiserver)
    assert after["metadata"]["name"] == before["metadata"]["name"]  # updated, not duplicated
    assert after["spec"]["pool"]["generation"] == before["spec"]["pool"]["generation"] + 1


def test_server_without_consumable_capacity(kube_client, fake_apiserver, claims, inventory):
    fake_apiserver.disable_feature("DRAConsumableCapacity")
    publisher = SlicePublisher(kube_client, NODE, "vgpu.dra.dev", inventory)
    with structlog.testing.capture_logs() as logs:
        publisher.sync()
        assert publisher.sync() is False  # no endless republishing against a server that drops fields
        publisher.sync()
    assert publisher.allow_multiple_allocations is False
    (stored,) = _slices(fake_apiserver)
    assert all("allowMultipleAllocations" not in d for d in stored["spec"]["devices"])
    assert all(d["capacity"]["memory"]["value"] for d in stored["spec"]["devices"])
    warnings = [e for e in logs if "dropped fields" in e["event"]]
    assert len(warnings) == 1 and warnings[0]["dropped"] == ["allowMultipleAllocations", "capacity.requestPolicy"]


def test_inventory_change_seen_by_resync_republishes(settings, kube_client, fake_apiserver, fake_nvml, claims):
    from vgpu_dra.kubeletplugin.plugin import KubeletPlugin

    fake_nvml.use("mixed-node")
    # Without the metrics' NVML sampler and the health loop, which keep NVML initialised and so pin
    # the fake's inventory.
    plugin = KubeletPlugin(replace(settings, watch_health=False), kube_client, sample_gpus=False)
    plugin.start()
    try:
        (before,) = _wait(lambda: _slices(fake_apiserver))
        fake_nvml.use("rtx3080-homelab")  # the node's GPUs changed (e.g. a card swapped during maintenance)
        plugin.resync()
    finally:
        plugin.stop()
    (after,) = _wait(lambda: [s for s in _slices(fake_apiserver)
                              if s["spec"]["pool"]["generation"] > before["spec"]["pool"]["generation"]])
    assert [d["name"] for d in after["spec"]["devices"]] == ["gpu-0"]
    assert after["spec"]["devices"][0]["attributes"]["productName"]["string"] != \
        before["spec"]["devices"][0]["attributes"]["productName"]["string"]


def test_registration_republishes_even_without_the_watch(plugin, fake_apiserver, settings):
    from tests.plugin.node import kubelet_for

    (first,) = _wait(lambda: _slices(fake_apiserver))
    plugin.slices.stop()  # no watch: only the registration can bring the slices back
    fake_apiserver.delete("ResourceSlice", first["metadata"]["name"])  # a restarting kubelet wipes them...
    kubelet = kubelet_for(settings)  # ...then registers the plugin again
    (again,) = _wait(lambda: _slices(fake_apiserver))
    assert again["spec"]["pool"]["generation"] > first["spec"]["pool"]["generation"]
    kubelet.close()
