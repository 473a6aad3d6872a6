"""Restarts, reboots, corrupt checkpoints: the node's claim files always match the checkpoint."""
from __future__ import annotations

import json
import mmap
import uuid
from pathlib import Path

from tests.plugin.cdi_schema import validate_cdi_spec
from tests.plugin.node import kubelet_for
from vgpu_dra.driver import region as region_layout
from vgpu_dra.driver.region import read_region
from vgpu_dra.kubeletplugin.plugin import KubeletPlugin


def _set_peak(path, value):
    with open(path, "r+b") as handle, mmap.mmap(handle.fileno(), region_layout.REGION_SIZE) as mem:
        region = region_layout.ffi.from_buffer("struct vgpu_region *", mem)
        region.gpus[0].peak_bytes = value
        del region


def _start(settings, kube_client):
    plugin = KubeletPlugin(settings, kube_client, publish_slices=False)
    plugin.start()
    return plugin


def _spec_path(settings, uid):
    return settings.cdi_dir / f"k8s.vgpu.dra.dev-claim_{uid}.json"


def test_restart_keeps_prepared_claims_and_answers_from_the_checkpoint(settings, kube_client, fake_nvml, claims):
    fake_nvml.use("mixed-node")
    claim = claims.create([{"request": "gpu", "device": "gpu-0"}])
    plugin = _start(settings, kube_client)
    kubelet = kubelet_for(settings)
    first = kubelet.prepare([claim.ref])[claim.uid]
    kubelet.close()
    plugin.stop()
    claims.server.delete("ResourceClaim", claim.name, claim.namespace)  # API gone: only the checkpoint knows

    plugin = _start(settings, kube_client)
    try:
        kubelet = kubelet_for(settings)
        assert kubelet.prepare([claim.ref])[claim.uid] == first
        assert kubelet.unprepare([claim.ref]) == {claim.uid: ""}
        assert not _spec_path(settings, claim.uid).exists()
        kubelet.close()
    finally:
        plugin.stop()


def test_simulated_reboot_recreates_specs_and_resets_regions(settings, kube_client, fake_nvml, claims):
    fake_nvml.use("mixed-node")
    one = claims.create([{"request": "gpu", "device": "gpu-0", "consumedCapacity": {"memory": "1Gi", "cores": "5"},
                          "shareID": str(uuid.uuid4())}])
    two = claims.create([{"request": "gpu", "device": "gpu-2"}])
    plugin = _start(settings, kube_client)
    kubelet = kubelet_for(settings)
    kubelet.prepare([one.ref, two.ref])
    kubelet.close()
    specs_before = {uid: _spec_path(settings, uid).read_text() for uid in (one.uid, two.uid)}
    plugin.stop()

    # Reboot: a new boot ID, /var/run (the CDI dir) empty, stale region inode left on /var/lib.
    settings.boot_id_path.write_text(str(uuid.uuid4()) + "\n")
    for spec in settings.cdi_dir.iterdir():
        spec.unlink()
    _set_peak(settings.claims_dir / one.uid / "region", 12345)  # what processes before the reboot left
    assert read_region(settings.claims_dir / one.uid / "region").gpus[0].peak_bytes == 12345

    plugin = _start(settings, kube_client)
    try:
        for uid in (one.uid, two.uid):
            assert _spec_path(settings, uid).read_text() == specs_before[uid]
            validate_cdi_spec(json.loads(specs_before[uid]))
        region = read_region(settings.claims_dir / one.uid / "region")
        assert region.gpus[0].peak_bytes == 0 and region.gpus[0].limit_bytes == 1 << 30
        checkpoint = json.loads(settings.checkpoint_path.read_text())
        assert checkpoint["bootID"] == settings.boot_id_path.read_text().strip()
    finally:
        plugin.stop()


def test_corrupt_checkpoint_is_set_aside_and_rebuilt_from_the_api(settings, kube_client, fake_nvml, claims):
    fake_nvml.use("mixed-node")
    kept = claims.create([{"request": "gpu", "device": "gpu-1", "consumedCapacity": {"memory": "2Gi", "cores": "0"},
                           "shareID": str(uuid.uuid4())}])
    gone = claims.create([{"request": "gpu", "device": "gpu-0"}])
    plugin = _start(settings, kube_client)
    kubelet = kubelet_for(settings)
    answers = kubelet.prepare([kept.ref, gone.ref])
    kubelet.close()
    plugin.stop()
    claims.server.delete("ResourceClaim", gone.name, gone.namespace)
    settings.checkpoint_path.write_bytes(settings.checkpoint_path.read_bytes()[:40])  # torn write

    plugin = _start(settings, kube_client)  # must not crash
    try:
        assert settings.checkpoint_path.with_name("checkpoint.json.corrupt").exists()
        (event,) = [e for e in claims.server.events() if e.reason == "CheckpointCorrupt"]
        assert (event.type, event.regarding_kind, event.regarding_name) == ("Warning", "Node", "mixed-node")
        assert "rebuilt" in event.message
        assert set(json.loads(settings.checkpoint_path.read_text())["claims"]) == {kept.uid}
        assert not (settings.claims_dir / gone.uid).exists() and not _spec_path(settings, gone.uid).exists()
        kubelet = kubelet_for(settings)
        assert kubelet.prepare([kept.ref])[kept.uid] == answers[kept.uid]
        kubelet.close()
    finally:
        plugin.stop()


def test_interrupted_prepare_is_rolled_back_at_start(settings, kube_client, fake_nvml, claims):
    """A checkpoint entry still 'preparing' (crash between the two checkpoint writes)."""
    from dataclasses import replace

    from vgpu_dra.driver.checkpoint import CheckpointStore

    fake_nvml.use("mixed-node")
    claim = claims.create([{"request": "gpu", "device": "gpu-0"}])
    plugin = _start(settings, kube_client)
    kubelet = kubelet_for(settings)
    kubelet.prepare([claim.ref])
    kubelet.close()
    plugin.stop()
    store = CheckpointStore(settings.checkpoint_path)
    checkpoint = store.load()
    store.save(checkpoint.with_claims({claim.uid: replace(checkpoint.claims[claim.uid], state="preparing")}))
    (settings.cdi_dir / ".k8s.vgpu.dra.dev-claim_x.json.tmp-123").write_text("{")  # torn temp file

    plugin = _start(settings, kube_client)
    try:
        assert list(settings.cdi_dir.iterdir()) == []
        assert list(settings.claims_dir.iterdir()) == []
        kubelet = kubelet_for(settings)
        assert kubelet.prepare([claim.ref])[claim.uid].error == ""  # the kubelet's retry succeeds
        assert _spec_path(settings, claim.uid).exists()
        kubelet.close()
    finally:
        plugin.stop()


def test_two_instances_during_a_rolling_update_keep_each_others_claims(settings, kube_client, fake_nvml, claims):
    from dataclasses import replace

    fake_nvml.use("mixed-node")
    old = _start(replace(settings, pod_uid="old-pod"), kube_client)
    new = _start(replace(settings, pod_uid="new-pod"), kube_client)
    try:
        x = claims.create([{"request": "gpu", "device": "gpu-0"}])
        y = claims.create([{"request": "gpu", "device": "gpu-1"}])
        old_kubelet = kubelet_for(replace(settings, pod_uid="old-pod"))
        new_kubelet = kubelet_for(replace(settings, pod_uid="new-pod"))
        assert old_kubelet.prepare([x.ref])[x.uid].error == ""
        assert new_kubelet.prepare([y.ref])[y.uid].error == ""
        assert set(json.loads(settings.checkpoint_path.read_text())["claims"]) == {x.uid, y.uid}
        assert new_kubelet.unprepare([x.ref]) == {x.uid: ""}  # Unprepare may reach the other instance
        assert set(json.loads(settings.checkpoint_path.read_text())["claims"]) == {y.uid}
        assert old_kubelet.prepare([y.ref])[y.uid].error == ""  # answered from the shared checkpoint
        old_kubelet.close()
        new_kubelet.close()
    finally:
        old.stop()
        new.stop()


def test_a_claim_whose_shim_version_vanished_is_pointed_at_the_installed_shim(settings, kube_client, fake_nvml,
                                                                              claims):
    from dataclasses import replace

    from vgpu_dra.driver.checkpoint import CheckpointStore

    fake_nvml.use("mixed-node")
    claim = claims.create([{"request": "gpu", "device": "gpu-0"}])
    plugin = _start(settings, kube_client)
    kubelet = kubelet_for(settings)
    kubelet.prepare([claim.ref])
    kubelet.close()
    plugin.stop()
    store = CheckpointStore(settings.checkpoint_path)
    checkpoint = store.load()
    lost = settings.shim_dir / "0.0.1-gone" / "libvgpu.so"
    store.save(checkpoint.with_claims({claim.uid: replace(checkpoint.claims[claim.uid], shim_host_path=str(lost))}))

    plugin = _start(settings, kube_client)
    try:
        spec = json.loads(_spec_path(settings, claim.uid).read_text())
        shim = {m["containerPath"]: m["hostPath"] for m in spec["containerEdits"]["mounts"]}
        assert Path(shim["/usr/lib/vgpu-dra/libvgpu.so"]).is_file()
        assert Path(shim["/etc/ld.so.preload"]).is_file()
    finally:
        plugin.stop()


def test_an_old_instance_whose_shim_was_cleaned_up_reinstalls_it(settings, kube_client, fake_nvml, claims, node_root):
    from dataclasses import replace

    fake_nvml.use("mixed-node")
    old_shim, new_shim = node_root / "old-libvgpu.so", node_root / "new-libvgpu.so"
    old_shim.write_bytes(b"old build")
    new_shim.write_bytes(b"new build")
    old = _start(replace(settings, pod_uid="old-pod", shim_source=old_shim), kube_client)
    new = _start(replace(settings, pod_uid="new-pod", shim_source=new_shim), kube_client)  # removes "old build"
    try:
        assert [p.read_bytes() for p in settings.shim_dir.glob("*/libvgpu.so")] == [b"new build"]
        claim = claims.create([{"request": "gpu", "device": "gpu-0"}])
        kubelet = kubelet_for(replace(settings, pod_uid="old-pod"))  # the old pod still gets a Prepare
        assert kubelet.prepare([claim.ref])[claim.uid].error == ""
        kubelet.close()
        spec = json.loads(_spec_path(settings, claim.uid).read_text())
        shim = {m["containerPath"]: m["hostPath"] for m in spec["containerEdits"]["mounts"]}
        assert Path(shim["/usr/lib/vgpu-dra/libvgpu.so"]).read_bytes() == b"old build"
    finally:
        old.stop()
        new.stop()
