"""The pod's nominated node, written with its allocation: kube-scheduler finds the node already
named when the gate goes, so it binds without writing the nomination itself, and tries that node
first. A hint only: when its write fails the gate still goes and the scheduler names the node."""
from __future__ import annotations

import threading
from typing import Any

from tests.controller.backends import client_for
from tests.fakes.apiserver.hooks import SLOW
from vgpu_dra.api.names import SCHEDULING_GATE
from vgpu_dra.controller.allocation_term import TermSettings
from vgpu_dra.controller.kubeapi import PODS, ApiError, KubeApi

from .cluster import add_device_class, add_node, claim, gpu, pod, running_controller, vgpu_config
from .waiting import wait_for


class PodVersions:
    """Every version of one pod the API server's watch delivers, from a resourceVersion on."""

    def __init__(self, server: Any, name: str, since: str):
        self.api = KubeApi(client_for(server, "admin"))
        self.name, self.since = name, since
        self.versions: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        version = self.since
        while not self._stop.is_set():
            try:
                for event in self.api.watch(PODS, version, namespace="default", timeout_seconds=5):
                    obj = event["object"]
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK" and obj["metadata"]["name"] == self.name:
                        self.versions.append(obj)
                    if self._stop.is_set():
                        return
            except ApiError:
                continue

    def first_ungated(self) -> dict[str, Any] | None:
        """The first version without the controller's gate."""
        return next((v for v in self.versions
                     if SCHEDULING_GATE not in [g["name"] for g in v["spec"].get("schedulingGates") or []]), None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def allocation_of(server: Any, name: str) -> dict[str, Any] | None:
    return (server.get("ResourceClaim", name, "default").get("status") or {}).get("allocation")


def _node_of(server: Any, claim_name: str) -> str:
    allocation = server.get("ResourceClaim", claim_name, "default")["status"]["allocation"]
    [term] = allocation["nodeSelector"]["nodeSelectorTerms"]
    return term["matchFields"][0]["values"][0]


def test_the_pod_names_its_claims_node_when_its_gate_goes(api_backend):
    server = api_backend
    add_node(server, "node-a", [gpu(0)])
    add_node(server, "node-b", [gpu(0)])
    add_device_class(server)
    server.create(claim("c", config=vgpu_config(memory="1Gi")))
    created = server.create(pod("app", ["c"]))
    versions = PodVersions(server, "app", created["metadata"]["resourceVersion"])
    try:
        with running_controller(server) as controller:
            wait_for(versions.first_ungated, what="the pod's gate lifted")
            ungated = versions.first_ungated()
            assert ungated["status"].get("nominatedNodeName") == _node_of(server, "c")
            assert controller.service.metrics.nominations.labels("written")._value.get() == 1
    finally:
        versions.close()


def test_a_failed_nomination_still_lifts_the_gate_and_is_counted(fake_apiserver):
    server = fake_apiserver
    add_node(server, "node", [gpu(0)])
    add_device_class(server)
    server.create(claim("c", config=vgpu_config(memory="1Gi")))
    server.create(pod("app", ["c"]))
    server.faults.add(500, resource="pods", verbs=("patch",), subresource="status", count=1)
    with running_controller(server) as controller:
        wait_for(lambda: not server.get("Pod", "app", "default")["spec"].get("schedulingGates"),
                 what="the gate lifted without the nomination")
        assert controller.service.metrics.nominations.labels("failed")._value.get() == 1
    stored = server.get("Pod", "app", "default")
    assert "nominatedNodeName" not in stored.get("status", {})
    assert server.get("ResourceClaim", "c", "default")["status"]["allocation"]


def test_nominations_can_be_switched_off(fake_apiserver):
    server = fake_apiserver
    add_node(server, "node", [gpu(0)])
    add_device_class(server)
    server.create(claim("c", config=vgpu_config(memory="1Gi")))
    server.create(pod("app", ["c"]))
    settings = TermSettings(watch_timeout_s=30, nominate_node=False)
    with running_controller(server, user="ctl", settings=settings):
        wait_for(lambda: not server.get("Pod", "app", "default")["spec"].get("schedulingGates"), what="gate lifted")
    assert [(r.resource, r.subresource) for r in server.writes_by("ctl") if r.resource == "pods"] == [("pods", "")]


def test_a_slow_nomination_holds_the_gate_until_it_lands_but_no_longer_than_the_wait(fake_apiserver):
    server = fake_apiserver
    add_node(server, "node", [gpu(0)])
    add_device_class(server)
    for name in ("c1", "c2"):
        server.create(claim(name, config=vgpu_config(memory="1Gi")))
    first = server.create(pod("slow", ["c1"]))
    versions = PodVersions(server, "slow", first["metadata"]["resourceVersion"])
    server.faults.add(SLOW, resource="pods", verbs=("patch",), subresource="status", delay_s=2.0)
    settings = TermSettings(watch_timeout_s=30, workers=1, nomination_wait_s=5.0)
    try:
        with running_controller(server, settings=settings):
            # One worker: had it waited for the slow write, the second pod would wait behind it.
            server.create(pod("next", ["c2"]))
            wait_for(lambda: allocation_of(server, "c2"), what="the second pod's claim allocated meanwhile")
            assert versions.first_ungated() is None, "the gate went before the nomination landed"
            wait_for(versions.first_ungated, what="the gate lifted once the nomination landed")
            assert versions.first_ungated()["status"].get("nominatedNodeName") == "node"
    finally:
        versions.close()
    server.faults.add(SLOW, resource="pods", verbs=("patch",), subresource="status", delay_s=4.0)
    server.create(claim("c3", config=vgpu_config(memory="1Gi")))
    server.create(pod("stuck", ["c3"]))
    with running_controller(server, settings=TermSettings(watch_timeout_s=30, nomination_wait_s=0.5)):
        wait_for(lambda: not server.get("Pod", "stuck", "default")["spec"].get("schedulingGates"), timeout_s=3.0,
                 what="the gate lifted after the wait, before the slow write")
