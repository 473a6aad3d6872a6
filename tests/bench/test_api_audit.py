"""Counting a round's writes from kube-apiserver's audit log: lines recorded by the v1.36.2
kube-apiserver of the real-cluster tier during a controller-mode round (tests/data/audit)."""
from __future__ import annotations

from pathlib import Path

from bench.api_audit import Write, claim_writes_line, read, write_path_lines, write_paths, writes_in

LOG = Path(__file__).resolve().parents[1] / "data" / "audit" / "kube-apiserver-audit.jsonl"
ROUND = "bench-controller-a-paced"


def _what(write: Write) -> tuple[str, str, str, int]:
    return write.user, write.verb, write.resource, write.code


def test_only_the_rounds_namespace_is_counted_with_who_wrote_what_and_the_answer():
    writes = [_what(w) for w in read(LOG, ROUND)]
    assert len(writes) == 7  # the eighth line is another namespace's
    assert writes[0] == ("vgpu-test-admin", "create", "pods", 201)
    assert ("vgpu-dra-controller", "patch", "resourceclaims/status", 200) in writes
    assert ("generic-garbage-collector", "delete", "resourceclaims", 409) in writes
    assert [_what(w) for w in read(LOG, "bench-scheduler-a-paced")] == [
        ("resource-claim-controller", "create", "resourceclaims", 201)]
    first = read(LOG, ROUND)[0]
    assert first.name == "p-0000" and 0 < first.completed - first.received < 1  # the server's own times


def test_the_line_counts_claim_requests_by_writer_and_the_refused_ones():
    line = claim_writes_line(read(LOG, ROUND))
    assert line.startswith("6 claim requests, 1 refused (404/409): ")
    assert "generic-garbage-collector 2 (1 refused)" in line
    assert "vgpu-dra-controller 2," in line or line.endswith("vgpu-dra-controller 2")
    assert "pods" not in line


def test_a_missing_log_or_blank_lines_read_as_nothing(tmp_path):
    assert read(tmp_path / "absent.log", ROUND) == []
    assert writes_in(["", "  \n"], ROUND) == []


PATHS = LOG.with_name("kube-apiserver-write-paths.jsonl")  # two pods per mode, a paced round each


def test_a_pods_path_holds_its_own_and_its_claims_writes_up_to_its_binding():
    paths = write_paths(read(PATHS, "bench-controller-0-paced"))
    assert sorted(paths) == ["p-0000", "p-0001"]
    steps = [(w.user, w.verb, w.resource, w.name) for w in paths["p-0000"]]
    assert steps[0] == ("vgpu-test-admin", "create", "pods", "p-0000")
    assert steps[-1] == ("kube-scheduler", "create", "pods/binding", "p-0000")
    assert ("vgpu-dra-controller", "patch", "resourceclaims/status", "p-0000-gpu-4sqz2") in steps
    assert all(name.startswith("p-0000") for *_, name in steps)  # not the other pod's
    assert not [s for s in steps if s[1] == "delete"]            # the teardown is after the binding
    assert all(a.received <= b.received for a, b in zip(paths["p-0000"], paths["p-0000"][1:]))


def test_the_path_lines_show_who_wrote_what_in_order_with_the_servers_times():
    ours = write_path_lines(read(PATHS, "bench-controller-0-paced"))
    native = write_path_lines(read(PATHS, "bench-scheduler-0-paced"))
    assert [line.split(":")[0] for line in native] == [
        "vgpu-test-admin", "resource-claim-controller", "kube-scheduler", "kube-scheduler", "kube-scheduler",
        "kube-scheduler"]
    assert native[2].startswith("kube-scheduler: patch pods/status: 2 of 2 pods, p50 13.5 → 16.0 ms")
    # With the controller's nomination kube-scheduler writes the binding alone.
    assert [line for line in ours if line.startswith("kube-scheduler")] == [
        "kube-scheduler: create pods/binding: 2 of 2 pods, p50 95.1 → 101.5 ms"]
    assert ours[0].startswith("vgpu-test-admin: create pods: 2 of 2 pods, p50 0.0 → ")


def test_a_pod_never_bound_has_no_path(tmp_path):
    lines = [line for line in PATHS.read_text().splitlines() if "binding" not in line]
    assert write_paths(writes_in(lines, "bench-controller-0-paced")) == {}
