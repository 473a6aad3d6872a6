"""Optimistic concurrency and list+watch consistency under concurrent writers."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from kubernetes import client, config

from tests.apiserver.raw_requests import request
from tests.apiserver.test_crud import CLAIMS, claim
from tests.apiserver.test_dra_rules import gpu, slice_body
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.apiserver.schema_validation import SchemaRegistry, default_openapi_dir
from tests.fakes.kubeconfig import api_client_for, write_kubeconfig

WRITERS = 6
INCREMENTS = 15


def test_read_modify_write_loses_no_update(fake_apiserver: FakeApiServer) -> None:
    """Writers racing on one object: stale writes get 409, retries win, no increment is lost."""
    setup = api_client_for(fake_apiserver)
    request(setup, "POST", CLAIMS, claim("c1") | {"metadata": {"name": "c1", "annotations": {"n": "0"}}})
    conflicts = [0] * WRITERS

    def writer(idx: int) -> None:
        api = api_client_for(fake_apiserver, f"writer-{idx}")
        for _ in range(INCREMENTS):
            while True:
                obj = request(api, "GET", f"{CLAIMS}/c1").body
                obj["metadata"]["annotations"]["n"] = str(int(obj["metadata"]["annotations"]["n"]) + 1)
                resp = request(api, "PUT", f"{CLAIMS}/c1", obj)
                if resp.status == 200:
                    break
                assert resp.status == 409
                conflicts[idx] += 1
        api.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = request(setup, "GET", f"{CLAIMS}/c1").body
    assert final["metadata"]["annotations"]["n"] == str(WRITERS * INCREMENTS)
    successful = [r for r in fake_apiserver.audit() if r.verb == "update" and r.code == 200]
    assert len(successful) == WRITERS * INCREMENTS
    # Every successful write produced a distinct resourceVersion.
    assert len({r.resource_version for r in successful}) == WRITERS * INCREMENTS
    setup.close()


def test_list_then_watch_from_list_rv_sees_every_change_once(fake_apiserver: FakeApiServer) -> None:
    """An informer's list+watch: the list plus the events after its RV reproduce the final state."""
    api = api_client_for(fake_apiserver)

    def churn(prefix: str) -> None:
        w = api_client_for(fake_apiserver)
        for i in range(40):
            request(w, "POST", CLAIMS, claim(f"{prefix}-{i}"))
            if i % 3 == 0:
                request(w, "DELETE", f"{CLAIMS}/{prefix}-{i}")
            elif i % 3 == 1:
                request(w, "PATCH", f"{CLAIMS}/{prefix}-{i}", {"metadata": {"labels": {"v": "2"}}},
                        "application/merge-patch+json")
        w.close()

    writers = [threading.Thread(target=churn, args=(p,)) for p in ("a", "b", "c")]
    for t in writers:
        t.start()
    listed = request(api, "GET", CLAIMS).body
    state = {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in listed["items"]}
    rv = listed["metadata"]["resourceVersion"]
    for t in writers:
        t.join()
    # Bounded read of the watch: everything written so far is in the log.
    resp = api.call_api("GET", f"{fake_apiserver.url}{CLAIMS}?watch=1&resourceVersion={rv}&timeoutSeconds=1",
                        {}, None)
    last_rv = int(rv)
    for line in resp.response.read().decode().splitlines():
        ev = json.loads(line)
        meta = ev["object"]["metadata"]
        assert int(meta["resourceVersion"]) > last_rv  # in order, nothing replayed from before the list
        last_rv = int(meta["resourceVersion"])
        if ev["type"] == "DELETED":
            state.pop(meta["name"])
        else:
            state[meta["name"]] = meta["resourceVersion"]
    final = {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in fake_apiserver.objects("ResourceClaim")}
    assert state == final
    api.close()


def test_kubeconfig_file_works_with_load_kube_config(fake_apiserver: FakeApiServer, kubeconfig_path: Path,
                                                      tmp_path: Path) -> None:
    api = config.new_client_from_config(config_file=str(kubeconfig_path))
    client.CoreV1Api(api).create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gpu"}})
    assert [o["metadata"]["name"] for o in fake_apiserver.objects("Namespace")] == ["gpu"]
    api.close()
    # A kubeconfig written for an identity makes that identity show in the audit log.
    path = write_kubeconfig(fake_apiserver, tmp_path / "replica-1", user="replica-1")
    api = config.new_client_from_config(config_file=str(path))
    client.CoreV1Api(api).create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "two"}})
    assert [(r.verb, r.name) for r in fake_apiserver.writes_by("replica-1")] == [("create", "two")]
    api.close()


@pytest.mark.slow
def test_many_writers_and_watchers_agree_with_the_store(fake_apiserver: FakeApiServer) -> None:
    """8 writers churn pods across 4 nodes while 6 watchers (all pods, per node, per label) follow;
    each watcher's replay of its events must equal the store's final state for its selector."""
    selectors = ["", "fieldSelector=spec.nodeName%3Dn0", "fieldSelector=spec.nodeName%3Dn3",
                 "labelSelector=tier%3Da", "labelSelector=tier%3Db", "labelSelector=tier"]
    api = api_client_for(fake_apiserver)
    rv = request(api, "GET", "/api/v1/pods").body["metadata"]["resourceVersion"]
    streams = [api_client_for(fake_apiserver).call_api(
        "GET", f"{fake_apiserver.url}/api/v1/pods?watch=1&resourceVersion={rv}&{sel}", {}, None) for sel in selectors]

    def writer(idx: int) -> None:
        w = api_client_for(fake_apiserver, f"writer-{idx}")
        core = client.CoreV1Api(w)
        for i in range(60):
            name = f"w{idx}-{i}"
            core.create_namespaced_pod("default", {"apiVersion": "v1", "kind": "Pod",
                                                   "metadata": {"name": name, "labels": {"tier": "ab"[i % 2]}},
                                                   "spec": {"containers": [{"name": "c", "image": "x"}]}})
            if i % 4 != 3:
                request(w, "POST", f"/api/v1/namespaces/default/pods/{name}/binding",
                        {"target": {"kind": "Node", "name": f"n{(idx + i) % 4}"}, "metadata": {"name": name}})
            if i % 5 == 0:
                request(w, "PATCH", f"/api/v1/namespaces/default/pods/{name}",
                        {"metadata": {"labels": {"tier": "ba"[i % 2]}}}, "application/merge-patch+json")
            if i % 7 == 0:
                core.delete_namespaced_pod(name, "default")
        w.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fake_apiserver.end_watches()  # close the streams so they can be read to the end
    everything = fake_apiserver.objects("Pod", copies=False)
    for sel, resp in zip(selectors, streams):
        state: dict[str, str] = {}
        last = rv
        body = resp.response.read().decode()
        # A stream ended by the server may not carry the last events: like a client, watch again
        # from the last resourceVersion seen (a short watch, ended by its timeout).
        for attempt in range(2):
            for line in body.splitlines():
                ev = json.loads(line)
                meta = ev["object"]["metadata"]
                last = meta["resourceVersion"]
                if ev["type"] == "DELETED":
                    state.pop(meta["name"], None)
                else:
                    state[meta["name"]] = meta["resourceVersion"]
            if attempt == 0:
                body = api.call_api("GET", f"{fake_apiserver.url}/api/v1/pods?watch=1&resourceVersion={last}"
                                           f"&timeoutSeconds=1&{sel}", {}, None).response.read().decode()
        field, _, value = sel.partition("=")
        if field == "fieldSelector":
            node = value.split("%3D")[1]
            expected = [p for p in everything if p["spec"].get("nodeName") == node]
        elif field == "labelSelector" and "%3D" in value:
            tier = value.split("%3D")[1]
            expected = [p for p in everything if p["metadata"]["labels"].get("tier") == tier]
        else:
            expected = everything
        assert state == {p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in expected}, sel
    api.close()


def test_first_use_of_a_schema_from_many_threads_is_consistent() -> None:
    """Compiled checkers are published only when complete: concurrent first requests for a kind
    all get the full validation and stored form, never a half-built one."""
    key = ("resource.k8s.io/v1", "io.k8s.api.resource.v1.ResourceSlice")
    body = slice_body([gpu(i) for i in range(2)])
    body["spec"]["devices"][0]["capacity"]["vgpu.dra.dev/memory"]["value"] = "1024Mi"
    body["spec"]["devices"][1]["capacty"] = {}
    for _ in range(3):
        registry = SchemaRegistry(default_openapi_dir())  # fresh: nothing compiled yet
        results: list[tuple[list[str], str]] = []

        def use() -> None:
            errors = [e.field for e in registry.validate(body, *key)]
            stored = registry.stored_form(body, *key)
            results.append((errors, stored["spec"]["devices"][0]["capacity"]["vgpu.dra.dev/memory"]["value"]))

        threads = [threading.Thread(target=use) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [(["spec.devices[1].capacty"], "1Gi")] * 12
