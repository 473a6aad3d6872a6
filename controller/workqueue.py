"""A de-duplicating work queue with per-key exponential backoff (client-go's rate-limited queue).

A key is processed by at most one worker at a time; adding a key while it is being processed
queues it once more for after `done`. `add_rate_limited` delays a retry by 5 ms · 2^failures
(capped), `forget` resets the failure count after a success.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Hashable


class WorkQueue:
    """Thread-safe; `get` blocks until a key is ready or the queue is shut down (then None)."""

    def __init__(self, *, base_delay_s: float = 0.005, max_delay_s: float = 30.0):
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self._cond = threading.Condition()
        self._queue: deque[Hashable] = deque()
        self._queued: set[Hashable] = set()
        self._processing: set[Hashable] = set()
        self._dirty: set[Hashable] = set()
        self._delayed: list[tuple[float, int, Hashable]] = []
        self._due: dict[Hashable, float] = {}  # earliest pending delayed add per key
        self._sequence = itertools.count()
        self._failures: dict[Hashable, int] = {}
        self._shutdown = False

    def add(self, key: Hashable) -> None:
        """Queue `key` now (once, however often it is added before being processed)."""
        with self._cond:
            self._add_locked(key)

    def _add_locked(self, key: Hashable) -> None:
        if self._shutdown:
            return
        if key in self._processing:
            self._dirty.add(key)
            return
        if key not in self._queued:
            self._queued.add(key)
            self._queue.append(key)
            self._cond.notify()

    def add_after(self, key: Hashable, delay_s: float) -> None:
        """Queue `key` after `delay_s`; a key already waiting to be added earlier is left alone, so
        repeated retries of one key never pile up."""
        due = time.monotonic() + delay_s
        with self._cond:
            if self._shutdown:
                return
            current = self._due.get(key)
            if current is not None and current <= due:
                return
            self._due[key] = due
            heapq.heappush(self._delayed, (due, next(self._sequence), key))
            self._cond.notify()

    def add_rate_limited(self, key: Hashable) -> float:
        """Queue a retry of `key` after its backoff; returns the delay."""
        with self._cond:
            failures = self._failures.get(key, 0)
            self._failures[key] = failures + 1
        delay = min(self.base_delay_s * (2 ** failures), self.max_delay_s)
        self.add_after(key, delay)
        return delay

    def forget(self, key: Hashable) -> None:
        """Reset the backoff of `key`."""
        with self._cond:
            self._failures.pop(key, None)

    def failures(self, key: Hashable) -> int:
        """How many rate-limited retries `key` has had since its last `forget`."""
        with self._cond:
            return self._failures.get(key, 0)

    def get(self, timeout_s: float | None = None) -> Hashable | None:
        """The next ready key (mark it processing), or None on shutdown/timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while True:
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    due, _, key = heapq.heappop(self._delayed)
                    if self._due.get(key) == due:  # else superseded by an earlier add_after
                        del self._due[key]
                        self._add_locked(key)
                if self._queue:
                    key = self._queue.popleft()
                    self._queued.discard(key)
                    self._processing.add(key)
                    return key
                if self._shutdown:
                    return None
                wait = None if not self._delayed else max(self._delayed[0][0] - now, 0.0)
                if deadline is not None:
                    remaining = deadline - now
                    if remaining <= 0:
                        return None
                    wait = remaining if wait is None else min(wait, remaining)
                self._cond.wait(wait)

    def done(self, key: Hashable) -> None:
        """Finish processing `key`; re-queue it if it was added meanwhile."""
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self._add_locked(key)

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue) + len(self._delayed)

    def shut_down(self) -> None:
        """Wake every waiter; `get` returns None from now on once the queue is drained."""
        with self._cond:
            self._shutdown = True
            self._queue.clear()
            self._queued.clear()
            self._delayed.clear()
            self._due.clear()
            self._cond.notify_all()
