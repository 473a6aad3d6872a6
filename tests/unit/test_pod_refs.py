"""Claims remember their pods' UIDs (the usage watchdog knows a pod's processes by them): from
``status.reservedFor``, through the checkpoint, and from a checkpoint written before they were kept."""
from __future__ import annotations

import json

from tests.unit.test_allocation_limits import _claim, _resolve, _result
from tests.unit.test_checkpoint import _claim as _prepared
from vgpu_dra.driver import checkpoint as cp
from vgpu_dra.driver.allocation_limits import pod_refs


def test_reserved_pods_come_with_their_uids_sorted_by_name():
    claim = _claim([_result(consumedCapacity={"memory": "1Gi"})], reserved=("pod-b", "pod-a"))
    claim["status"]["reservedFor"].append({"resource": "deployments", "name": "not-a-pod", "uid": "x"})
    assert _resolve(claim).reserved_for_pod_refs == (("pod-a", "pod-a-uid"), ("pod-b", "pod-b-uid"))
    assert pod_refs({"status": {}}) == ()


def test_pod_refs_survive_the_checkpoint_and_old_checkpoints_load_without_them(tmp_path):
    store = cp.CheckpointStore(tmp_path / "checkpoint.json")
    claim = cp.PreparedClaim(**{**{f: getattr(_prepared(), f) for f in cp.PreparedClaim.__dataclass_fields__},
                                "pod_refs": (("pod-a", "11111111-2222-4333-8444-555555555555"),)})
    store.save(cp.Checkpoint(boot_id="b", claims={claim.uid: claim}))
    assert store.load().claims[claim.uid].pod_refs == claim.pod_refs
    document = json.loads((tmp_path / "checkpoint.json").read_text())
    del document["claims"][claim.uid]["pod_refs"]
    document["checksum"] = cp._checksum(document)
    (tmp_path / "checkpoint.json").write_text(json.dumps(document))
    assert store.load().claims[claim.uid].pod_refs == ()
