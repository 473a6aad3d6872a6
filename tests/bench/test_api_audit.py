"""Counting a round's writes from kube-apiserver's audit log: lines recorded by the v1.36.2
kube-apiserver of the real-cluster tier during a controller-mode round (tests/data/audit)."""
from __future__ import annotations

from pathlib import Path

from bench.api_audit import Write, claim_writes_line, read, writes_in

LOG = Path(__file__).resolve().parents[1] / "data" / "audit" / "kube-apiserver-audit.jsonl"
ROUND = "bench-controller-a-paced"


def test_only_the_rounds_namespace_is_counted_with_who_wrote_what_and_the_answer():
    writes = read(LOG, ROUND)
    assert len(writes) == 7  # the eighth line is another namespace's
    assert writes[0] == Write(user="vgpu-test-admin", verb="create", resource="pods", code=201)
    assert Write(user="vgpu-dra-controller", verb="patch", resource="resourceclaims/status", code=200) in writes
    assert Write(user="generic-garbage-collector", verb="delete", resource="resourceclaims", code=409) in writes
    assert read(LOG, "bench-scheduler-a-paced") == [
        Write(user="resource-claim-controller", verb="create", resource="resourceclaims", code=201)]


def test_the_line_counts_claim_requests_by_writer_and_the_refused_ones():
    line = claim_writes_line(read(LOG, ROUND))
    assert line.startswith("6 claim requests, 1 refused (404/409): ")
    assert "generic-garbage-collector 2 (1 refused)" in line
    assert "vgpu-dra-controller 2," in line or line.endswith("vgpu-dra-controller 2")
    assert "pods" not in line


def test_a_missing_log_or_blank_lines_read_as_nothing(tmp_path):
    assert read(tmp_path / "absent.log", ROUND) == []
    assert writes_in(["", "  \n"], ROUND) == []
