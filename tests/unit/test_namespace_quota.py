"""Namespace GPU quotas, pure: ResourceQuota values → limits, claims → usage, the check, and the
ledger that counts per namespace and books only within quota."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from vgpu_dra.driver.namespace_quota import (KIND_INVALID, KIND_OVER, QUOTA_CORES, QUOTA_MEMORY, Limit,
                                             NamespaceQuota, Usage, check, claim_usage, quota_from_objects)
from vgpu_dra.driver.namespace_usage import NamespacedLedger, NamespaceUsage
from vgpu_dra.driver.node_state import Consumption, GpuDevice

MIB = 1 << 20
GIB = 1 << 30


def resource_quota(name: str, **hard: str) -> dict:
    keys = {"gpumem": QUOTA_MEMORY, "gpucores": QUOTA_CORES, "pods": "pods"}
    return {"metadata": {"name": name, "namespace": "team-a"}, "spec": {"hard": {keys[k]: v for k, v in hard.items()}}}


# --------------------------------------------------------------------------- reading ResourceQuotas

def test_gpumem_is_mib_and_gpucores_percent_as_hami_writes_them():
    quota = quota_from_objects("team-a", [resource_quota("gpu", gpumem="20480", gpucores="150")])
    assert quota == NamespaceQuota("team-a", Limit(20 * GIB, "gpu"), Limit(150, "gpu"))


def test_the_api_servers_canonical_form_reads_the_same():
    # kube-apiserver stores "10000" back as "10k".
    assert quota_from_objects("team-a", [resource_quota("q", gpumem="10k")]).memory == Limit(10000 * MIB, "q")


def test_no_quota_naming_our_keys_is_no_quota():
    assert quota_from_objects("team-a", [resource_quota("pods", pods="10")]) is None
    assert quota_from_objects("team-a", []) is None


def test_the_tightest_of_several_quotas_applies_per_name():
    quota = quota_from_objects("team-a", [resource_quota("a", gpumem="8192", gpucores="300"),
                                          resource_quota("b", gpumem="4096", gpucores="400")])
    assert quota.memory == Limit(4 * GIB, "b") and quota.cores == Limit(300, "a")


@pytest.mark.parametrize("value, words", [("20Gi", "binary suffix"), ("1.5", "whole number"), ("-3", "whole number"),
                                          ("lots", "not a Kubernetes quantity"), ("500m", "whole number")])
def test_an_unreadable_memory_value_is_a_problem_naming_it_and_the_fix(value, words):
    quota = quota_from_objects("team-a", [resource_quota("gpu", gpumem=value)])
    assert quota.problem is not None
    assert f"ResourceQuota team-a/gpu sets {QUOTA_MEMORY} = {value!r}" in quota.problem
    assert words in quota.problem and '"20480" for 20 GiB' in quota.problem


def test_one_bad_value_fails_the_whole_namespace_closed():
    quota = quota_from_objects("team-a", [resource_quota("good", gpumem="4096"), resource_quota("bad", gpucores="x")])
    refusal = check(quota, Usage(), Usage(MIB, 10, 1))
    assert refusal is not None and refusal.kind == KIND_INVALID
    assert "team-a/bad" in refusal.message and QUOTA_CORES in refusal.message


# --------------------------------------------------------------------------- what a claim counts

def test_a_claim_counts_its_walls_and_caps_on_every_device():
    usage = claim_usage([Consumption("n", "gpu-0", 2 * GIB, 25), Consumption("n", "gpu-1", 2 * GIB, 25)])
    assert usage == Usage(4 * GIB, 50, 1)


def test_a_device_without_a_core_cap_counts_the_whole_gpu():
    assert claim_usage([Consumption("n", "gpu-0", GIB, 0)]) == Usage(GIB, 100, 1)


def test_a_claim_taking_nothing_counts_nothing():
    assert claim_usage([]) == Usage()


# --------------------------------------------------------------------------- the check

QUOTA = NamespaceQuota("team-a", Limit(4 * GIB, "gpu"), Limit(100, "gpu"))


def test_a_request_that_fills_the_quota_exactly_fits_and_one_byte_more_does_not():
    assert check(QUOTA, Usage(3 * GIB, 50, 2), Usage(GIB, 50, 1)) is None
    refusal = check(QUOTA, Usage(3 * GIB, 50, 2), Usage(GIB + 1, 10, 1))
    assert refusal is not None and refusal.kind == KIND_OVER


def test_the_refusal_names_the_quota_the_usage_and_the_request():
    refusal = check(QUOTA, Usage(3 * GIB, 50, 2), Usage(2 * GIB, 10, 1))
    assert refusal is not None
    message = refusal.message
    assert "namespace team-a" in message and f"{QUOTA_MEMORY} of ResourceQuota gpu" in message
    assert "4096 MiB (4 GiB)" in message and "3072 MiB (3 GiB) is in use by 2 claim(s)" in message
    assert "need 2048 MiB (2 GiB) more" in message
    assert QUOTA_CORES not in message  # the cores fit


def test_cores_alone_can_refuse():
    refusal = check(QUOTA, Usage(GIB, 80, 1), Usage(GIB, 25, 1))
    assert refusal is not None and f"{QUOTA_CORES} of ResourceQuota gpu is 100 %" in refusal.message
    assert "80 % is in use" in refusal.message and "need 25 % more" in refusal.message


def test_a_quota_lowered_below_usage_refuses_new_claims_only():
    lowered = NamespaceQuota("team-a", Limit(GIB, "gpu"), None)
    assert check(lowered, Usage(3 * GIB, 0, 3), Usage(MIB, 0, 1)) is not None
    assert check(lowered, Usage(3 * GIB, 0, 3), Usage()) is None  # adds nothing: admin access
    assert lowered.free(Usage(3 * GIB, 0, 3)) == (0, None)


def test_no_quota_refuses_nothing():
    assert check(None, Usage(1 << 60, 10**6, 10**6), Usage(1 << 60, 100, 1)) is None


# --------------------------------------------------------------------------- counting per namespace

def test_usage_follows_set_replace_and_drop():
    usage = NamespaceUsage()
    usage.set("a", "team-a", Usage(GIB, 10, 1))
    usage.set("b", "team-a", Usage(2 * GIB, 20, 1))
    usage.set("c", "team-b", Usage(GIB, 0, 1))
    usage.set("a", "team-a", Usage(3 * GIB, 30, 1))
    assert usage.used("team-a") == Usage(5 * GIB, 50, 2)
    assert usage.used("team-a", excluding=["b", "c"]) == Usage(3 * GIB, 30, 1)
    usage.drop("b")
    usage.drop("a")
    usage.drop("unknown")
    assert usage.used("team-a") == Usage() and usage.namespaces() == ["team-b"]


@dataclass
class FakePlacement:
    claims: dict[str, tuple[Consumption, ...]]

    def claim_consumptions(self):
        return iter(self.claims.items())


def share(gib: int, cores: int = 10) -> tuple[Consumption, ...]:
    return (Consumption("node", "gpu-0", gib * GIB, cores),)


def ledger() -> NamespacedLedger:
    namespaces = {"a1": "team-a", "a2": "team-a", "b1": "team-b"}
    book = NamespacedLedger(namespaces.get)
    book.set_node("node", [GpuDevice("gpu-0", "GPU-0", 80 * GIB)])
    return book


def test_the_ledger_counts_what_it_books_per_namespace():
    book = ledger()
    book.record("a1", share(2))
    book.record("b1", share(3))
    book.record("a1", share(1))  # re-recorded: replaced
    assert book.usage.used("team-a") == Usage(GIB, 10, 1) and book.usage.used("team-b") == Usage(3 * GIB, 10, 1)
    book.release("a1")
    assert book.usage.used("team-a") == Usage()


def test_a_key_keeps_its_namespace_when_rebooked_without_a_known_one():
    book = NamespacedLedger(lambda key: None)
    book.set_node("node", [GpuDevice("gpu-0", "GPU-0", 80 * GIB)])
    assert book.book_within_quota("team-a", None, FakePlacement({"x": share(2)})) is None
    book.record("x", share(3))
    assert book.usage.used("team-a") == Usage(3 * GIB, 10, 1)


def test_booking_within_quota_books_all_or_nothing():
    book = ledger()
    quota = NamespaceQuota("team-a", Limit(4 * GIB, "gpu"), None)
    assert book.book_within_quota("team-a", quota, FakePlacement({"a1": share(3)})) is None
    refusal = book.book_within_quota("team-a", quota, FakePlacement({"a2": share(1), "a3": share(1)}))
    assert refusal is not None and refusal.kind == KIND_OVER
    assert book.booked("a2") == () and book.booked("a3") == ()
    assert book.usage.used("team-a") == Usage(3 * GIB, 10, 1)
    assert book.used("node", "gpu-0") == (3 * GIB, 10)


def test_a_second_booking_sees_the_first_so_only_one_fits():
    book = ledger()
    quota = NamespaceQuota("team-a", Limit(2 * GIB, "gpu"), None)
    first = book.book_within_quota("team-a", quota, FakePlacement({"a1": share(2)}))
    second = book.book_within_quota("team-a", quota, FakePlacement({"a2": share(2)}))
    assert first is None and second is not None


def test_rebooking_a_claim_does_not_count_it_twice():
    book = ledger()
    quota = NamespaceQuota("team-a", Limit(2 * GIB, "gpu"), None)
    book.record("a1", share(2))
    assert book.book_within_quota("team-a", quota, FakePlacement({"a1": share(2)})) is None
