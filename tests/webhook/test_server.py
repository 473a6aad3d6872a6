"""The HAMi webhook over real HTTPS: a client that trusts only the published CA bundle posts
AdmissionReviews; templates land in the fake API server; the certificate is created, renewed
before expiry, rotated with its CA without breaking trust, and a failure refuses the pod."""
from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import ssl
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.apiserver import FakeApiServer
from tests.fakes.apiserver.fixtures import fake_apiserver, kube_client  # noqa: F401
from tests.fakes.apiserver.patch import json_patch
from vgpu_dra.controller.kubeapi import ApiError, KubeApi
from vgpu_dra.webhook.admission import admit
from vgpu_dra.webhook.certs import TlsMaterial, Validity, new_serving, not_after, renewed
from vgpu_dra.webhook.kube import TemplateEnsurer
from vgpu_dra.webhook.server import MUTATE_PATH, CertificateKeeper, WebhookMetrics, WebhookServer

# Real time: the client checks validity against it. Rotation tests start their clock in the past so
# that every certificate they connect with is valid now.
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
SHORT = Validity(ca=dt.timedelta(days=30), serving=dt.timedelta(days=9))


class MemoryStore:
    """The TlsStore's three calls over a dict: what the Secret and the webhook configuration hold
    (the real store runs against the real API server in tests/e2e/test_hami_webhook.py)."""

    secret = "tls"

    def __init__(self) -> None:
        self.material: TlsMaterial | None = None
        self.version = 0
        self.bundle = ""

    def read(self) -> tuple[TlsMaterial | None, str | None]:
        return self.material, (str(self.version) if self.material else None)

    def write(self, material: TlsMaterial, resource_version: str | None) -> None:
        if resource_version != (str(self.version) if self.material else None):
            raise ApiError(409, "Conflict")
        self.material, self.version = material, self.version + 1

    def publish_bundle(self, bundle: str) -> bool:
        changed = bundle != self.bundle
        self.bundle = bundle
        return changed


def _pod(limits: dict[str, str] | None, scheduler: str | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "worker", "image": "busybox"}
    if limits:
        container["resources"] = {"limits": limits}
    spec: dict[str, Any] = {"containers": [container]}
    if scheduler:
        spec["schedulerName"] = scheduler
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "worker-", "labels": {"a": "b"}},
            "spec": spec}


def _review(pod: dict[str, Any], namespace: str = "default", dry_run: bool = False) -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE",
                        "namespace": namespace, "object": pod, "dryRun": dry_run}}


class Running:
    def __init__(self, server: WebhookServer, keeper: CertificateKeeper, store: MemoryStore):
        self.server, self.keeper, self.store = server, keeper, store

    def post(self, review: dict[str, Any], bundle: str | None = None) -> dict[str, Any]:
        context = ssl.create_default_context(cadata=bundle or self.store.bundle)
        connection = http.client.HTTPSConnection("127.0.0.1", self.server.server_address[1], context=context,
                                                 timeout=10)
        try:
            connection.request("POST", MUTATE_PATH, body=json.dumps(review),
                               headers={"Content-Type": "application/json"})
            answer = connection.getresponse()
            assert answer.status == 200
            return json.loads(answer.read())["response"]
        finally:
            connection.close()

    def served_certificate(self) -> str:
        context = ssl.create_default_context(cadata=self.store.bundle)
        import socket
        with socket.create_connection(("127.0.0.1", self.server.server_address[1]), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                return ssl.DER_cert_to_PEM_cert(tls.getpeercert(binary_form=True))


@pytest.fixture
def running(kube_client: Any) -> Iterator[Running]:  # noqa: F811
    api = KubeApi(kube_client)
    metrics = WebhookMetrics()
    ensure = TemplateEnsurer(api)
    server = WebhookServer(("127.0.0.1", 0), lambda r: admit(r, ensure), metrics, Path(tempfile.gettempdir()))
    store = MemoryStore()
    clock = {"now": NOW}
    keeper = CertificateKeeper(server, metrics, store=store, ip_addresses=["127.0.0.1"], validity=SHORT,  # type: ignore[arg-type]
                               clock=lambda: clock["now"])
    keeper.clock_state = clock  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield Running(server, keeper, store)
    finally:
        server.shutdown()
        server.server_close()


def test_nothing_is_served_before_a_certificate_exists_then_a_hami_pod_is_translated_over_https(
        running: Running, fake_apiserver: FakeApiServer) -> None:  # noqa: F811
    assert not running.server.ready
    running.keeper.check()
    assert running.server.ready and running.store.bundle
    pod = _pod({"nvidia.com/gpu": "1", "nvidia.com/gpumem-percentage": "20", "nvidia.com/gpucores": "25"},
               "hami-scheduler")
    response = running.post(_review(pod, "team-a"))
    assert response["allowed"] and response["patchType"] == "JSONPatch"
    patched = json_patch(pod, json.loads(base64.b64decode(response["patch"])))
    assert patched["spec"]["schedulerName"] == "default-scheduler"
    assert patched["spec"]["containers"][0]["resources"] == {"claims": [{"name": "vgpu-worker"}]}
    [entry] = patched["spec"]["resourceClaims"]
    assert "memoryPercent 20, cores 25" in patched["metadata"]["annotations"]["vgpu.dra.dev/hami-translation"]
    assert patched["metadata"]["labels"] == {"a": "b"}
    [template] = fake_apiserver.objects("ResourceClaimTemplate", "team-a")
    assert template["metadata"]["name"] == entry["resourceClaimTemplateName"]
    params = template["spec"]["spec"]["devices"]["config"][0]["opaque"]["parameters"]
    assert (params["memoryPercent"], params["cores"]) == (20, 25)
    # A second pod of the same shape reuses the template (AlreadyExists is fine).
    assert running.post(_review(pod, "team-a"))["allowed"]
    assert len(fake_apiserver.objects("ResourceClaimTemplate", "team-a")) == 1
    assert running.server.metrics.admissions.labels("translated")._value.get() == 2


def test_a_plain_pod_gets_no_patch_and_a_bad_value_is_refused_with_the_field(running: Running) -> None:
    running.keeper.check()
    plain = running.post(_review(_pod({"cpu": "1"})))
    assert plain == {"uid": "u-1", "allowed": True}
    bad = running.post(_review(_pod({"nvidia.com/gpu": "1", "nvidia.com/gpucores": "120"})))
    assert not bad["allowed"]
    assert "nvidia.com/gpucores = '120' is out of range; expected an integer from 0 to 100" in bad["status"]["message"]


def test_an_api_failure_creating_the_template_refuses_the_pod_saying_why(
        running: Running, fake_apiserver: FakeApiServer) -> None:  # noqa: F811
    running.keeper.check()
    fake_apiserver.faults.add(500, resource="resourceclaimtemplates", verbs=("create",))
    response = running.post(_review(_pod({"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1024"})))
    assert not response["allowed"] and response["status"]["code"] == 503
    message = response["status"]["message"]
    assert "could not create ResourceClaimTemplate default/hami-mem1024mi-" in message
    assert "refused rather than run without its memory wall" in message
    assert running.server.metrics.admissions.labels("error")._value.get() == 1


def test_an_edited_template_is_not_reused(running: Running, fake_apiserver: FakeApiServer) -> None:  # noqa: F811
    running.keeper.check()
    pod = _pod({"nvidia.com/gpu": "1", "nvidia.com/gpucores": "10"})
    assert running.post(_review(pod))["allowed"]
    [template] = fake_apiserver.objects("ResourceClaimTemplate", "default")
    fake_apiserver.delete("ResourceClaimTemplate", template["metadata"]["name"], "default")
    template["spec"]["spec"]["devices"]["requests"][0]["exactly"]["count"] = 3
    template["spec"]["spec"]["devices"]["requests"][0]["exactly"]["allocationMode"] = "ExactCount"
    for key in ("resourceVersion", "uid", "creationTimestamp"):
        template["metadata"].pop(key, None)
    fake_apiserver.create(template)
    response = running.post(_review(pod))
    assert not response["allowed"] and "exists with another spec" in response["status"]["message"]


def test_dry_run_creates_no_template(running: Running, fake_apiserver: FakeApiServer) -> None:  # noqa: F811
    running.keeper.check()
    assert running.post(_review(_pod({"nvidia.com/gpu": "1"}), dry_run=True))["allowed"]
    assert fake_apiserver.objects("ResourceClaimTemplate") == []


def test_the_serving_certificate_is_renewed_in_its_last_third_under_the_same_ca(running: Running) -> None:
    clock = running.keeper.clock_state  # type: ignore[attr-defined]
    start = NOW - dt.timedelta(days=8)  # a 9-day certificate issued then expires tomorrow
    clock["now"] = start
    running.keeper.check()
    first = running.store.material
    assert first is not None
    first_served = running.served_certificate()
    clock["now"] = start + dt.timedelta(days=5)
    running.keeper.check()
    assert running.store.material is first  # 4 of 9 days left: more than a third
    clock["now"] = start + dt.timedelta(days=7)
    running.keeper.check()
    second = running.store.material
    assert second is not None and second.tls_cert != first.tls_cert and second.ca_cert == first.ca_cert
    assert running.store.bundle == first.bundle  # trust unchanged while replicas switch
    served = running.served_certificate()
    assert served != first_served and not_after(served) > not_after(first.tls_cert)


def test_a_ca_near_its_end_is_replaced_and_the_old_ca_stays_trusted_until_it_expires(running: Running) -> None:
    clock = running.keeper.clock_state  # type: ignore[attr-defined]
    start = NOW - dt.timedelta(days=21)
    clock["now"] = start
    running.keeper.check()
    first = running.store.material
    assert first is not None
    clock["now"] = NOW  # 9 of the CA's 30 days left
    running.keeper.check()
    second = running.store.material
    assert second is not None and second.ca_cert != first.ca_cert
    assert second.bundle.startswith(second.ca_cert) and first.ca_cert in second.bundle
    # A client holding the new bundle still trusts a replica that serves the old certificate.
    assert running.post(_review(_pod({"cpu": "1"})), bundle=second.bundle)["allowed"]
    # A replica that has not switched yet serves a certificate of the old CA.
    key, cert = new_serving(first.ca_key, first.ca_cert, NOW, dt.timedelta(days=1), [], ["127.0.0.1"])
    running.server.load(cert, key)
    assert running.post(_review(_pod({"cpu": "1"})), bundle=second.bundle)["allowed"]
    clock["now"] = start + dt.timedelta(days=31)  # the old CA has expired: dropped from the bundle
    running.keeper.check()
    assert first.ca_cert not in running.store.bundle


def test_unreadable_material_is_replaced_not_served() -> None:
    good = renewed(None, NOW, ["svc.ns.svc"], [], SHORT)
    assert good is not None
    broken = TlsMaterial(good.ca_key, good.ca_cert, "not a key", good.tls_cert, good.bundle)
    fixed = renewed(broken, NOW, ["svc.ns.svc"], [], SHORT)
    assert fixed is not None and fixed.tls_key != "not a key"
    # A certificate that lacks a name the Service needs is reissued.
    more = renewed(good, NOW, ["svc.ns.svc", "svc.ns.svc.cluster.local"], [], SHORT)
    assert more is not None and more.ca_cert == good.ca_cert
    assert renewed(good, NOW, ["svc.ns.svc"], [], SHORT) is None
