"""Checkpoint encoding, verification and atomic storage."""
from __future__ import annotations

import json
import os

import pytest

from vgpu_dra.driver import checkpoint as cp


def _claim(uid: str = "u1", state: cp.ClaimState = "prepared") -> cp.PreparedClaim:
    device = cp.PreparedDevice(request="gpu", pool="node-a", device="gpu-0", share_id=None, gpu_uuid="GPU-1",
                               gpu_index=0, gpu_minor=0, memory_bytes=1 << 30, cores=25, core_policy="soft",
                               nvidia_cdi_device=None, cdi_device_ids=(f"k8s.vgpu.dra.dev/claim={uid}-gpu-0",))
    return cp.PreparedClaim(uid=uid, namespace="ns", name="c", state=state, devices=(device,),
                            shim_host_path="/var/lib/vgpu-dra/shim/x/libvgpu.so", pods=("p1",))


def test_round_trip(tmp_path):
    store = cp.CheckpointStore(tmp_path / "checkpoint.json")
    assert store.load() is None
    original = cp.Checkpoint(boot_id="boot-1", claims={"u1": _claim(), "u2": _claim("u2", "preparing")})
    store.save(original)
    loaded = store.load()
    assert loaded == original
    assert oct(os.stat(store.path).st_mode & 0o777) == "0o600"
    assert not [p for p in tmp_path.iterdir() if cp.is_temp_file(p.name)]


def test_any_modification_is_detected(tmp_path):
    store = cp.CheckpointStore(tmp_path / "checkpoint.json")
    store.save(cp.Checkpoint(boot_id="b", claims={"u1": _claim()}))
    document = json.loads(store.path.read_text())
    document["claims"]["u1"]["devices"][0]["memory_bytes"] = 1 << 40
    store.path.write_text(json.dumps(document))
    with pytest.raises(cp.CorruptCheckpoint, match="checksum"):
        store.load()


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b"\xff\xfe", b'{"version": 1}', b'{"version": "1"}'])
def test_garbage_is_reported_as_corrupt(tmp_path, content):
    path = tmp_path / "checkpoint.json"
    path.write_bytes(content)
    with pytest.raises(cp.CorruptCheckpoint):
        cp.CheckpointStore(path).load()


def test_truncated_file_is_corrupt(tmp_path):
    store = cp.CheckpointStore(tmp_path / "checkpoint.json")
    store.save(cp.Checkpoint(boot_id="b", claims={"u1": _claim()}))
    data = store.path.read_bytes()
    store.path.write_bytes(data[: len(data) // 2])
    with pytest.raises(cp.CorruptCheckpoint):
        store.load()


def test_newer_schema_is_refused_and_unknown_fields_are_tolerated():
    document = json.loads(cp.encode(cp.Checkpoint(boot_id="b", claims={"u1": _claim()})))
    document["claims"]["u1"]["futureField"] = {"x": 1}
    document["claims"]["u1"]["devices"][0]["futureDeviceField"] = 7
    document["somethingNew"] = True
    document["checksum"] = cp._checksum(document)
    assert cp.decode(json.dumps(document).encode()).claims["u1"] == _claim()
    document["version"] = cp.SCHEMA_VERSION + 1
    document["checksum"] = cp._checksum(document)
    with pytest.raises(cp.CorruptCheckpoint, match="newer"):
        cp.decode(json.dumps(document).encode())


def test_bad_state_is_corrupt():
    document = json.loads(cp.encode(cp.Checkpoint(boot_id="b", claims={"u1": _claim()})))
    document["claims"]["u1"]["state"] = "half-done"
    document["checksum"] = cp._checksum(document)
    with pytest.raises(cp.CorruptCheckpoint, match="malformed"):
        cp.decode(json.dumps(document).encode())


def test_quarantine_moves_the_file_aside(tmp_path):
    store = cp.CheckpointStore(tmp_path / "checkpoint.json")
    store.path.write_text("garbage")
    moved = store.quarantine()
    assert moved is not None and moved.read_text() == "garbage"
    assert not store.path.exists()
    assert store.quarantine() is None


def test_boot_id(tmp_path):
    (tmp_path / "boot_id").write_text("1234-abcd\n")
    assert cp.read_boot_id(tmp_path / "boot_id") == "1234-abcd"
    (tmp_path / "empty").write_text("")
    with pytest.raises(ValueError, match="empty"):
        cp.read_boot_id(tmp_path / "empty")
