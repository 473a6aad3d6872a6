"""Slow sweep of the SM-core cap: every cap from 10 to 90 % and every launch variant by every route.

All scenarios run side by side, each on its own fake GPU; `pytest -m slow tests/shim`.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import pytest

from tests.shim.busy_trace import BusyTrace, collect, window
from tests.shim.harness import GPU0, MiB, Node

pytestmark = pytest.mark.slow

RUN_S = 6.0
TOLERANCE_PP = 5.0
KINDS = ["kernel", "ptsz", "ex", "ex_ptsz", "coop", "coop_ptsz", "graph", "graph_ptsz"]


@dataclass(frozen=True)
class Case:
    cap: int
    processes: int
    kind: str
    via: str

    @property
    def name(self) -> str:
        return f"cap{self.cap}-{self.processes}p-{self.kind}-{self.via}"


CASES = [Case(cap, 2, "kernel", "link") for cap in range(10, 100, 10)] + [
    Case(35, 1, kind, via) for kind, via in itertools.product(KINDS, ["link", "dlsym", "procaddr"])
]


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[BusyTrace]]:
    started = []
    for case in CASES:
        node = Node(root=tmp_path_factory.mktemp(case.name))
        node.add_claim("claim-a", {GPU0: 64 * MiB}, cores=case.cap, policy="hard")
        started.append((case, [
            node.start_loop("--seconds", str(RUN_S), "--kind", case.kind, "--via", case.via, "--kernel-us", "2000")
            for _ in range(case.processes)
        ]))
    time.sleep(RUN_S)
    return {case.name: [collect(p, timeout=60) for p in procs] for case, procs in started}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_cap_and_launch_route_holds(traces: dict[str, list[BusyTrace]], case: Case) -> None:
    runs = traces[case.name]
    assert all(t.done["errors"] == "0" for t in runs), runs
    assert abs(window(runs, 3, RUN_S) - case.cap) <= TOLERANCE_PP
