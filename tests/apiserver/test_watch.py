"""Watch semantics: resourceVersion, initial events, bookmarks, 410 Gone, selector transitions."""

from __future__ import annotations

import json
import queue
import threading
from typing import Any, Callable

import pytest
from kubernetes import client, watch

from tests.apiserver.raw_requests import request
from tests.apiserver.test_crud import CLAIMS, claim, pod
from tests.fakes.apiserver import FakeApiServer


def stream_events(api: client.ApiClient, path: str) -> list[dict[str, Any]]:
    """Read a whole (time-limited) watch stream as raw JSON events."""
    resp = api.call_api("GET", api.configuration.host + path, dict(api.default_headers), None)
    lines = resp.response.read().decode().splitlines()
    resp.response.release_conn()
    return [json.loads(line) for line in lines if line]


class Watcher:
    """Runs watch.Watch().stream in a thread and hands events over a queue."""

    def __init__(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.watch = watch.Watch()
        self.events: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(func, args, kwargs), daemon=True)
        self._thread.start()

    def _run(self, func: Callable[..., Any], args: Any, kwargs: Any) -> None:
        try:
            for ev in self.watch.stream(func, *args, **kwargs):
                self.events.put(ev)
        except Exception as exc:  # handed to the test thread
            self.events.put(exc)
        self.events.put(None)

    def next(self, timeout: float = 10.0) -> Any:
        ev = self.events.get(timeout=timeout)
        if isinstance(ev, Exception):
            raise ev
        return ev

    def stop(self) -> None:
        self.watch.stop()
        self._thread.join(timeout=10)


def test_watch_from_resource_version_sees_later_changes_only(kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    core.create_namespaced_pod("default", pod("before"))
    rv = core.list_namespaced_pod("default").metadata.resource_version
    w = Watcher(core.list_namespaced_pod, "default", resource_version=rv)
    try:
        core.create_namespaced_pod("default", pod("after"))
        core.patch_namespaced_pod("after", "default", {"metadata": {"labels": {"x": "y"}}})
        core.delete_namespaced_pod("after", "default")
        seen = [(ev["type"], ev["object"].metadata.name) for ev in (w.next(), w.next(), w.next())]
        assert seen == [("ADDED", "after"), ("MODIFIED", "after"), ("DELETED", "after")]
    finally:
        w.stop()


def test_watch_without_resource_version_starts_with_current_objects(kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    core.create_namespaced_pod("default", pod("a"))
    core.create_namespaced_pod("default", pod("b"))
    events = stream_events(kube_client, "/api/v1/namespaces/default/pods?watch=1&timeoutSeconds=1")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "a"), ("ADDED", "b")]


def test_send_initial_events_ends_with_marked_bookmark(kube_client: client.ApiClient) -> None:
    request(kube_client, "POST", CLAIMS, claim("c1"))
    events = stream_events(kube_client, CLAIMS + "?watch=1&sendInitialEvents=true&allowWatchBookmarks=true"
                           "&resourceVersionMatch=NotOlderThan&timeoutSeconds=1")
    assert events[0]["type"] == "ADDED" and events[0]["object"]["metadata"]["name"] == "c1"
    assert events[1]["type"] == "BOOKMARK"
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_bookmarks_carry_current_resource_version(kube_client: client.ApiClient,
                                                  fake_apiserver: FakeApiServer) -> None:
    fake_apiserver.bookmark_interval_s = 0.2
    rv = request(kube_client, "POST", CLAIMS, claim("c1")).body["metadata"]["resourceVersion"]
    # Writes to another kind move the global RV; the claim watcher learns it from bookmarks.
    client.CoreV1Api(kube_client).create_namespaced_pod("default", pod("p"))
    events = stream_events(kube_client, f"{CLAIMS}?watch=1&resourceVersion={rv}&allowWatchBookmarks=true"
                           "&timeoutSeconds=1")
    bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
    assert bookmarks and all(e["object"]["kind"] == "ResourceClaim" for e in bookmarks)
    assert int(bookmarks[-1]["object"]["metadata"]["resourceVersion"]) == fake_apiserver.resource_version
    assert not [e for e in events if e["type"] != "BOOKMARK"]


def test_watch_from_compacted_resource_version_is_gone(kube_client: client.ApiClient,
                                                        fake_apiserver: FakeApiServer) -> None:
    core = client.CoreV1Api(kube_client)
    old_rv = core.create_namespaced_pod("default", pod("a")).metadata.resource_version
    core.create_namespaced_pod("default", pod("b"))
    fake_apiserver.compact()
    events = stream_events(kube_client, f"/api/v1/namespaces/default/pods?watch=1&resourceVersion={old_rv}")
    assert [e["type"] for e in events] == ["ERROR"]
    assert events[0]["object"]["code"] == 410
    # The client library retries once, then surfaces 410 so the caller relists.
    w = Watcher(core.list_namespaced_pod, "default", resource_version=old_rv)
    with pytest.raises(client.ApiException) as exc:
        w.next()
    assert exc.value.status == 410
    # A watch from the RV of a fresh list works.
    rv = core.list_namespaced_pod("default").metadata.resource_version
    assert stream_events(kube_client, f"/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv}"
                         "&timeoutSeconds=1") == []


def test_watcher_falling_behind_retained_history_gets_gone() -> None:
    with FakeApiServer(history=3) as server:
        server.create(claim("c0") | {"metadata": {"name": "c0", "namespace": "default"}})
        rv = server.resource_version
        for i in range(1, 6):
            server.create(claim(f"c{i}") | {"metadata": {"name": f"c{i}", "namespace": "default"}})
        api = client.ApiClient(client.Configuration(host=server.url))
        events = stream_events(api, f"{CLAIMS}?watch=1&resourceVersion={rv}")
        assert events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 410
        api.close()


def test_field_selector_watch_turns_binding_into_added(kube_client: client.ApiClient) -> None:
    """A kubelet-style watch on spec.nodeName sees a pod appear when it is bound to the node."""
    core = client.CoreV1Api(kube_client)
    core.create_namespaced_pod("default", pod("p"))
    rv = core.list_namespaced_pod("default").metadata.resource_version
    w = Watcher(core.list_pod_for_all_namespaces, field_selector="spec.nodeName=node-1", resource_version=rv)
    try:
        # The real server answers a binding with a Status, which the typed client cannot parse as
        # a V1Binding: schedulers post it raw.
        resp = request(kube_client, "POST", "/api/v1/namespaces/default/pods/p/binding", {
            "apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"},
            "target": {"apiVersion": "v1", "kind": "Node", "name": "node-1"}})
        assert resp.status == 201
        ev = w.next()
        assert ev["type"] == "ADDED" and ev["object"].spec.node_name == "node-1"
    finally:
        w.stop()


def test_timeout_seconds_ends_the_stream(kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    events = list(watch.Watch().stream(core.list_namespaced_pod, "default", timeout_seconds=1))
    assert events == []


def test_stop_ends_open_watches(fake_apiserver: FakeApiServer) -> None:
    api = client.ApiClient(client.Configuration(host=fake_apiserver.url))
    core = client.CoreV1Api(api)
    w = Watcher(core.list_namespaced_pod, "default", resource_version="1")
    fake_apiserver.stop()
    end = w.events.get(timeout=10)
    while end is not None and not isinstance(end, Exception):
        end = w.events.get(timeout=10)
    api.close()


def test_events_api_watch_sees_core_events_in_its_own_shape(kube_client: client.ApiClient) -> None:
    rv = request(kube_client, "GET", "/apis/events.k8s.io/v1/namespaces/default/events").body["metadata"][
        "resourceVersion"]
    client.CoreV1Api(kube_client).create_namespaced_event("default", {
        "apiVersion": "v1", "kind": "Event", "metadata": {"name": "pod.1"}, "reason": "Scheduled",
        "type": "Normal", "message": "bound", "involvedObject": {"kind": "Pod", "namespace": "default", "name": "p"}})
    events = stream_events(kube_client, f"/apis/events.k8s.io/v1/namespaces/default/events?watch=1"
                           f"&resourceVersion={rv}&timeoutSeconds=1")
    assert [(e["type"], e["object"]["apiVersion"], e["object"]["note"], e["object"]["regarding"]["name"])
            for e in events] == [("ADDED", "events.k8s.io/v1", "bound", "p")]


def test_end_watches_makes_clients_rewatch_without_losing_events(kube_client: client.ApiClient,
                                                                   fake_apiserver: FakeApiServer) -> None:
    core = client.CoreV1Api(kube_client)
    rv = core.list_namespaced_pod("default").metadata.resource_version
    w = Watcher(core.list_namespaced_pod, "default", resource_version=rv)
    try:
        core.create_namespaced_pod("default", pod("a"))
        assert w.next()["object"].metadata.name == "a"
        fake_apiserver.end_watches()
        core.create_namespaced_pod("default", pod("b"))
        assert w.next()["object"].metadata.name == "b"  # the client re-watched from "a"'s RV
        watches = [r for r in fake_apiserver.audit() if r.verb == "watch"]
        assert len(watches) == 2
    finally:
        w.stop()


def test_injected_watch_expiry_is_an_in_stream_error(kube_client: client.ApiClient,
                                                      fake_apiserver: FakeApiServer) -> None:
    fake_apiserver.faults.add(410, verbs=("watch",), resource="pods")
    events = stream_events(kube_client, "/api/v1/namespaces/default/pods?watch=1&resourceVersion=1")
    assert [(e["type"], e["object"]["code"]) for e in events] == [("ERROR", 410)]
