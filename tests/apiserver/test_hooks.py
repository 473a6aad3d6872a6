"""Test hooks other suites rely on: store access, faults, observers, audit, events, GC, shutdown."""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable

import pytest
from kubernetes import client

from tests.apiserver.raw_requests import request
from tests.apiserver.test_crud import CLAIMS, claim, pod
from tests.fakes.apiserver import DROP_CONNECTION, FakeApiServer, WriteRecord
from tests.fakes.kubeconfig import api_client_for


def test_objects_returns_copies_of_the_store(kube_client: client.ApiClient, fake_apiserver: FakeApiServer) -> None:
    request(kube_client, "POST", CLAIMS, claim("c1"))
    [stored] = fake_apiserver.objects("ResourceClaim")
    stored["metadata"]["labels"] = {"mutated": "locally"}
    assert "labels" not in fake_apiserver.objects("resourceclaims")[0]["metadata"]
    assert fake_apiserver.get("ResourceClaim", "c1", "default")["metadata"]["name"] == "c1"
    [shared] = fake_apiserver.objects("ResourceClaim", copies=False)
    assert shared is fake_apiserver.objects("ResourceClaim", copies=False)[0]  # no copy: for observers
    assert fake_apiserver.get("ResourceClaim", "missing", "default") is None


def test_injected_conflicts_then_success(kube_client: client.ApiClient, fake_apiserver: FakeApiServer) -> None:
    obj = request(kube_client, "POST", CLAIMS, claim("c1")).body
    fault = fake_apiserver.faults.add(409, resource="resourceclaims", verbs=("update",), subresource="status",
                                      count=2)
    for _ in range(2):
        resp = request(kube_client, "PUT", f"{CLAIMS}/c1/status", obj)
        assert resp.status == 409 and resp.body["reason"] == "Conflict"
    assert request(kube_client, "PUT", f"{CLAIMS}/c1/status", obj).status == 200
    assert fault.hits == 2
    # Only the matching verb/subresource was affected.
    fake_apiserver.faults.add(500, resource="ResourceClaim", verbs=("get",))
    assert request(kube_client, "GET", f"{CLAIMS}/c1").status == 500
    assert request(kube_client, "GET", f"{CLAIMS}/c1").status == 200


def test_throttling_sends_retry_after(kube_client: client.ApiClient, fake_apiserver: FakeApiServer) -> None:
    fake_apiserver.faults.add(429, verbs=("list",))
    # The client honours Retry-After on a read and tries again.
    client.CoreV1Api(kube_client).list_namespaced_pod("default")
    assert [(r.verb, r.code) for r in fake_apiserver.audit()] == [("list", 429), ("list", 200)]
    fake_apiserver.faults.add(429, verbs=("create",))
    with pytest.raises(client.ApiException) as exc:
        client.CoreV1Api(kube_client).create_namespaced_pod("default", pod("p"))
    assert exc.value.status == 429 and exc.value.headers["Retry-After"] == "1"


def test_observer_sees_every_committed_state(kube_client: client.ApiClient, fake_apiserver: FakeApiServer) -> None:
    seen: list[tuple[str, str, str, int]] = []

    def observe(record: WriteRecord) -> None:
        seen.append((record.type, record.resource.kind, record.obj["metadata"]["name"], record.rv))

    fake_apiserver.add_observer(observe)
    request(kube_client, "POST", CLAIMS, claim("c1"))
    request(kube_client, "PATCH", f"{CLAIMS}/c1", {"metadata": {"labels": {"a": "b"}}},
            "application/merge-patch+json")
    request(kube_client, "POST", CLAIMS, claim("bad_name"))  # rejected: not observed
    request(kube_client, "DELETE", f"{CLAIMS}/c1")
    assert [s[:3] for s in seen] == [("ADDED", "ResourceClaim", "c1"), ("MODIFIED", "ResourceClaim", "c1"),
                                     ("DELETED", "ResourceClaim", "c1")]
    assert [s[3] for s in seen] == sorted(s[3] for s in seen)


def test_audit_records_identity_per_client(fake_apiserver: FakeApiServer,
                                          kube_client_for: Callable[[str], client.ApiClient]) -> None:
    leader, follower = kube_client_for("leader"), kube_client_for("follower")
    request(leader, "POST", CLAIMS, claim("c1"))
    request(follower, "GET", f"{CLAIMS}/c1")
    request(follower, "POST", CLAIMS, claim("c1"))  # 409: not a successful write
    assert [(r.verb, r.name) for r in fake_apiserver.writes_by("leader")] == [("create", "c1")]
    assert fake_apiserver.writes_by("follower") == []
    assert [(r.user, r.verb, r.code) for r in fake_apiserver.audit()] == [
        ("leader", "create", 201), ("follower", "get", 200), ("follower", "create", 409)]


def test_deleting_an_owner_collects_its_dependents(kube_client: client.ApiClient,
                                                   fake_apiserver: FakeApiServer) -> None:
    node = fake_apiserver.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}})
    fake_apiserver.create({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
                           "metadata": {"name": "node-1-vgpu", "ownerReferences": [
                               {"apiVersion": "v1", "kind": "Node", "name": "node-1",
                                "uid": node["metadata"]["uid"], "controller": True}]},
                           "spec": {"driver": "vgpu.dra.dev", "nodeName": "node-1",
                                    "pool": {"name": "node-1", "generation": 1, "resourceSliceCount": 1},
                                    "devices": []}})
    client.CoreV1Api(kube_client).delete_node("node-1")
    assert fake_apiserver.objects("ResourceSlice") == []


def test_latency_delays_requests(kube_client: client.ApiClient, fake_apiserver: FakeApiServer) -> None:
    fake_apiserver.latency_s = 0.3
    start = time.monotonic()
    client.CoreV1Api(kube_client).list_namespaced_pod("default")
    # Not a performance assertion: the hook must delay by at least what it was told.
    assert time.monotonic() - start >= 0.3


def test_stop_releases_the_port() -> None:
    server = FakeApiServer().start()
    port = server.port
    api = api_client_for(server)
    client.CoreV1Api(api).create_namespaced_pod("default", pod("p"))
    server.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    api.close()


def test_failing_observer_does_not_break_writes(kube_client: client.ApiClient, fake_apiserver: FakeApiServer) -> None:
    def invariant(record: WriteRecord) -> None:
        assert record.obj["metadata"]["name"] != "c2", "c2 must never be stored"

    fake_apiserver.add_observer(invariant)
    assert request(kube_client, "POST", CLAIMS, claim("c1")).status == 201
    assert request(kube_client, "POST", CLAIMS, claim("c2")).status == 201
    [(record, exc)] = fake_apiserver.observer_errors
    assert record.obj["metadata"]["name"] == "c2" and "must never be stored" in str(exc)


def test_closed_watch_connections_release_their_threads(fake_apiserver: FakeApiServer) -> None:
    api = api_client_for(fake_apiserver)
    before = threading.active_count()
    for _ in range(5):
        resp = api.call_api("GET", f"{fake_apiserver.url}/api/v1/pods?watch=1&resourceVersion=1", {}, None)
        resp.response.close()
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert threading.active_count() <= before
    api.close()


def test_a_bug_in_the_fake_is_a_500_and_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeApiServer() as server:
        def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("simulated bug")

        monkeypatch.setattr(server.store, "get", broken)
        api = api_client_for(server)
        resp = request(api, "GET", f"{CLAIMS}/c1")
        assert resp.status == 500 and "simulated bug" in resp.message
        assert len(server.internal_errors) == 1 and "RuntimeError" in server.internal_errors[0]
        # The connection and the server keep working.
        monkeypatch.undo()
        assert request(api, "GET", f"{CLAIMS}/c1").status == 404
        api.close()


def test_orphan_propagation_keeps_dependents(kube_client: client.ApiClient, fake_apiserver: FakeApiServer) -> None:
    owner = client.CoreV1Api(kube_client).create_namespaced_pod("default", pod("owner"))
    body = claim("owned")
    body["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": "owner",
                                            "uid": owner.metadata.uid}]
    request(kube_client, "POST", CLAIMS, body)
    client.CoreV1Api(kube_client).delete_namespaced_pod("owner", "default", propagation_policy="Orphan")
    assert [c["metadata"]["name"] for c in fake_apiserver.objects("ResourceClaim")] == ["owned"]


def test_dropped_connection_fault(kube_client: client.ApiClient, fake_apiserver: FakeApiServer) -> None:
    fake_apiserver.faults.add(DROP_CONNECTION, verbs=("create",), resource="pods")
    with pytest.raises(Exception) as exc:
        client.CoreV1Api(kube_client).create_namespaced_pod("default", pod("p"))
    assert not isinstance(exc.value, client.ApiException)  # no HTTP answer, a transport error
    assert fake_apiserver.objects("Pod") == []
    client.CoreV1Api(kube_client).create_namespaced_pod("default", pod("p"))  # next request is fine


def test_dependents_of_absent_owners_are_collected(kube_client: client.ApiClient,
                                                   fake_apiserver: FakeApiServer) -> None:
    """A slice owned by a Node uid that no longer exists (the node re-registered) is deleted by the
    garbage collector right after it is written; one owned by the live Node stays."""
    old_node = fake_apiserver.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}})
    fake_apiserver.delete("Node", "node-1")
    node = fake_apiserver.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}})

    def slice_owned_by(uid: str, name: str) -> dict:
        return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
                "metadata": {"name": name, "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": "node-1", "uid": uid, "controller": True}]},
                "spec": {"driver": "vgpu.dra.dev", "nodeName": "node-1",
                         "pool": {"name": "node-1", "generation": 1, "resourceSliceCount": 1}, "devices": []}}

    stale = request(kube_client, "POST", "/apis/resource.k8s.io/v1/resourceslices",
                    slice_owned_by(old_node["metadata"]["uid"], "stale"))
    assert stale.status == 201
    live = request(kube_client, "POST", "/apis/resource.k8s.io/v1/resourceslices",
                   slice_owned_by(node["metadata"]["uid"], "live"))
    assert live.status == 201
    assert [s["metadata"]["name"] for s in fake_apiserver.objects("ResourceSlice")] == ["live"]


def test_wait_until_wakes_on_writes(kube_client: client.ApiClient, fake_apiserver: FakeApiServer) -> None:
    def later() -> None:
        time.sleep(0.2)
        request(kube_client, "POST", CLAIMS, claim("c1"))

    threading.Thread(target=later).start()
    # objects() takes the store lock: waiting must not hold anything a writer needs.
    found = fake_apiserver.wait_until(lambda s: next(iter(s.objects("ResourceClaim")), None), what="claim c1")
    assert found["metadata"]["name"] == "c1"
    with pytest.raises(TimeoutError, match="claim c2"):
        fake_apiserver.wait_until(lambda s: s.get("ResourceClaim", "c2", "default"), timeout=0.3, what="claim c2")
