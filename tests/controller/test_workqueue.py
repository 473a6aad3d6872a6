"""The work queue: one worker per key, re-queue while processing, backoff."""
from __future__ import annotations

from vgpu_dra.controller.workqueue import WorkQueue


def test_duplicates_collapse_and_a_key_added_while_processing_comes_back_once():
    queue = WorkQueue()
    for key in ("a", "b", "a", "a"):
        queue.add(key)
    assert len(queue) == 2
    first = queue.get(timeout_s=1)
    assert first == "a"
    queue.add("a")
    queue.add("a")
    assert queue.get(timeout_s=1) == "b"  # "a" is being processed: not handed out twice
    assert queue.get(timeout_s=0.05) is None
    queue.done("a")
    assert queue.get(timeout_s=1) == "a"


def test_rate_limited_retries_back_off_and_forget_resets():
    queue = WorkQueue(base_delay_s=0.01)
    assert queue.add_rate_limited("k") == 0.01
    assert queue.add_rate_limited("k") == 0.02
    assert queue.failures("k") == 2
    assert queue.get(timeout_s=1) == "k"
    queue.done("k")
    queue.forget("k")
    assert queue.failures("k") == 0
    assert queue.add_rate_limited("k") == 0.01


def test_shut_down_wakes_waiters():
    queue = WorkQueue()
    queue.shut_down()
    assert queue.get() is None


def test_repeated_delayed_adds_of_one_key_do_not_pile_up():
    queue = WorkQueue()
    for _ in range(50):
        queue.add_after("k", 0.01)
    queue.add_after("k", 10.0)  # a later retry does not postpone the earlier one
    assert queue.get(timeout_s=1) == "k"
    queue.done("k")
    assert queue.get(timeout_s=0.1) is None
