"""GPU health signals → DRA device taints, and how long a taint stays (driver/device_health.py)."""
from __future__ import annotations

import json

import pytest

from vgpu_dra.driver.device_health import (ECC_KEY, LOST_KEY, PAGES_KEY, XID_KEY, DoubleBitEcc, GpuLost,
                                           PagesPending, TaintBook, XidError, classify, signals_from_poll)
from vgpu_dra.driver.device_taints import DeviceTaint, Toleration, blocking_taint


@pytest.mark.parametrize("xid", [48, 62, 64, 74, 79, 95, 119, 120, 140])
def test_xids_after_which_the_gpu_cannot_be_trusted_evict(xid):
    assert classify(XidError(xid)) == DeviceTaint(XID_KEY, str(xid), "NoExecute")


@pytest.mark.parametrize("xid", [13, 31, 43, 45, 68, 109])
def test_xids_an_application_causes_taint_nothing(xid):
    assert classify(XidError(xid)) is None


@pytest.mark.parametrize("xid", [61, 63, 92, 94, 999])
def test_other_critical_xids_keep_new_claims_away_but_let_running_work_finish(xid):
    assert classify(XidError(xid)) == DeviceTaint(XID_KEY, str(xid), "NoSchedule")


def test_ecc_lost_and_pages():
    assert classify(DoubleBitEcc()) == DeviceTaint(ECC_KEY, "double-bit", "NoExecute")
    assert classify(GpuLost()) == DeviceTaint(LOST_KEY, "gpu-is-lost", "NoExecute")
    assert classify(PagesPending("retirement")) == DeviceTaint(PAGES_KEY, "retirement-pending", "NoSchedule")
    assert classify(PagesPending("remap")) == DeviceTaint(PAGES_KEY, "remap-pending", "NoSchedule")
    assert classify(PagesPending("remap-failed")) == DeviceTaint(PAGES_KEY, "remap-failed", "NoExecute")


def test_every_taint_blocks_a_claim_without_tolerations_and_a_toleration_lets_it_through():
    for signal in (XidError(79), XidError(61), DoubleBitEcc(), GpuLost(), PagesPending("retirement")):
        taint = classify(signal)
        assert taint is not None and blocking_taint([taint], []) == taint
        assert blocking_taint([taint], [Toleration(key=taint.key, operator="Exists")]) is None


def test_poll_signals():
    assert signals_from_poll(lost=True, retired_pending=True, remap_pending=None, remap_failed=None,
                             uncorrected_before=0, uncorrected_now=5) == [GpuLost()]
    assert signals_from_poll(lost=False, retired_pending=None, remap_pending=None, remap_failed=None,
                             uncorrected_before=None, uncorrected_now=None) == []
    assert signals_from_poll(lost=False, retired_pending=False, remap_pending=True, remap_failed=True,
                             uncorrected_before=2, uncorrected_now=2) == [PagesPending("remap-failed")]
    # The first poll only learns the count; an increase after it is an uncorrectable error.
    assert signals_from_poll(lost=False, retired_pending=False, remap_pending=False, remap_failed=False,
                             uncorrected_before=None, uncorrected_now=7) == []
    assert signals_from_poll(lost=False, retired_pending=True, remap_pending=False, remap_failed=False,
                             uncorrected_before=7, uncorrected_now=8) == [PagesPending("retirement"), DoubleBitEcc()]


def test_a_taint_stays_while_its_signal_comes_and_goes_after_the_quiet_period():
    book = TaintBook()
    book, added = book.observe("gpu-0", DeviceTaint(LOST_KEY, "gpu-is-lost", "NoExecute"), now=100.0)
    assert added is not None and added.added_at == 100.0
    book, again = book.observe("gpu-0", DeviceTaint(LOST_KEY, "gpu-is-lost", "NoExecute"), now=150.0)
    assert again is None  # nothing to republish
    book, gone = book.expire(now=200.0, quiet_seconds=60)
    assert gone == [] and book.devices() == {"gpu-0"}
    book, gone = book.expire(now=210.0, quiet_seconds=60)
    assert [g.taint.key for g in gone] == [LOST_KEY] and book.devices() == frozenset()


def test_a_weaker_signal_never_weakens_a_taint_in_force_but_updates_its_value():
    book, _ = TaintBook().observe("gpu-1", DeviceTaint(XID_KEY, "79", "NoExecute"), now=0.0)
    book, changed = book.observe("gpu-1", DeviceTaint(XID_KEY, "61", "NoSchedule"), now=5.0)
    assert changed is not None and changed.taint == DeviceTaint(XID_KEY, "61", "NoExecute")
    assert changed.added_at == 0.0  # the taint has been in force since the first XID


def test_taints_as_slice_json_are_sorted_and_keep_their_first_time():
    book, _ = TaintBook().observe("gpu-0", DeviceTaint(XID_KEY, "79", "NoExecute"), now=0.0)
    book, _ = book.observe("gpu-0", DeviceTaint(ECC_KEY, "double-bit", "NoExecute"), now=60.0)
    book, _ = book.observe("gpu-2", DeviceTaint(PAGES_KEY, "retirement-pending", "NoSchedule"), now=1.0)
    assert book.by_device() == {
        "gpu-0": [{"key": ECC_KEY, "value": "double-bit", "effect": "NoExecute", "timeAdded": "1970-01-01T00:01:00Z"},
                  {"key": XID_KEY, "value": "79", "effect": "NoExecute", "timeAdded": "1970-01-01T00:00:00Z"}],
        "gpu-2": [{"key": PAGES_KEY, "value": "retirement-pending", "effect": "NoSchedule",
                   "timeAdded": "1970-01-01T00:00:01Z"}],
    }


def test_the_book_kept_across_a_restart_reads_back_only_for_the_same_gpus():
    from vgpu_dra.driver.device_health import book_from_json, book_to_json

    book, _ = TaintBook().observe("gpu-0", DeviceTaint("vgpu.dra.dev/xid", "79", "NoExecute"), 100.0)
    book, _ = book.observe("gpu-1", DeviceTaint("vgpu.dra.dev/pages", "remap-pending", "NoSchedule"), 110.0)
    book, _ = book.observe("gpu-0", DeviceTaint("vgpu.dra.dev/xid", "79", "NoExecute"), 150.0)
    uuids = {"gpu-0": "GPU-a", "gpu-1": "GPU-b"}
    document = json.loads(json.dumps(book_to_json(book, uuids)))
    assert book_from_json(document, uuids) == book
    [kept] = book_from_json(document, {"gpu-0": "GPU-a", "gpu-1": "GPU-other"}).active.values()
    assert (kept.device, kept.added_at, kept.last_seen) == ("gpu-0", 100.0, 150.0)  # the quiet period goes on
    assert book_from_json(document, {}).active == {}


@pytest.mark.parametrize("document", [None, [], {"version": 2, "taints": []}, {"version": 1},
                                      {"version": 1, "taints": [{"device": "gpu-0"}]},
                                      {"version": 1, "taints": [{"device": "gpu-0", "uuid": "GPU-a", "key": "k",
                                                                 "value": "v", "effect": "Sometimes",
                                                                 "addedAt": 1, "lastSeen": 1}]}])
def test_a_document_that_is_not_a_kept_book_is_refused(document):
    from vgpu_dra.driver.device_health import book_from_json

    with pytest.raises(ValueError):
        book_from_json(document, {"gpu-0": "GPU-a"})
