"""The user's HAMi Deployments on the real control plane, applied unchanged with kubectl.

The chart is installed with `hamiWebhook.enabled` (controller mode, one RTX 3080 node); the webhook
runs as a process with the chart's arguments under its ServiceAccount's token, so the chart's RBAC
decides what it may write. The test cluster has no Service networking, so the configuration the
chart applied is pointed at the process's loopback URL; the webhook itself creates its CA and
certificate and patches the caBundle in, and the real kube-apiserver evaluates the chart's match
conditions and calls it over TLS. The claims kube-controller-manager stamps from the templates the
webhook made are allocated by the controller and prepared by the plugin with HAMi's limits.
"""
from __future__ import annotations

import base64
import http.client
import os
import ssl
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.control_plane import free_port
from tests.cluster.real_cluster import RealCluster, wait_until
from tests.e2e.install import EXAMPLES, NAMESPACE, Installation, NodeSpec, Process, _container, _with_option
from tests.plugin.kubelet_client import Claim
from vgpu_dra.controller.kubeapi import PODS, RESOURCE_CLAIMS, ApiError
from vgpu_dra.driver.claimconfig import parse
from vgpu_dra.driver.inventory_file import load_inventory
from vgpu_dra.webhook.kube import MUTATING_WEBHOOK_CONFIGURATIONS, RESOURCE_CLAIM_TEMPLATES, SECRETS

pytestmark = pytest.mark.e2e

SEED = Path(__file__).resolve().parents[1] / "data" / "seed-hami"
RTX3080 = EXAMPLES / "inventory" / "rtx3080.yaml"
MIB = 1 << 20
# (memory percent, cores) per Deployment, as the user's files ask (gpumem-percentage, gpucores).
EXPECTED = {"gpu-worker-a": (20, 25), "gpu-worker-b": (30, 40)}
TEST_NAMESPACE = f"hami-{uuid.uuid4().hex[:6]}"  # a namespace still being deleted by an earlier run blocks its name


class Webhook:
    """The chart's webhook container run here, reachable at https://127.0.0.1:<port>."""

    def __init__(self, installation: Installation):
        self.installation = installation
        self.port = free_port()
        self.process: Process | None = None
        self.config_name = next(o["metadata"]["name"] for o in installation.rendered
                                if o["kind"] == "MutatingWebhookConfiguration")

    def point_configuration_here(self) -> None:
        """Replace each webhook's service reference with this process's URL (no caBundle: the
        webhook publishes its own)."""
        kube = self.installation.cluster.kube
        config = kube.get(MUTATING_WEBHOOK_CONFIGURATIONS, self.config_name)
        ops = [{"op": "replace", "path": f"/webhooks/{i}/clientConfig",
                "value": {"url": f"https://127.0.0.1:{self.port}/mutate-hami"}} for i in range(len(config["webhooks"]))]
        kube.patch(MUTATING_WEBHOOK_CONFIGURATIONS, self.config_name, ops, patch_type="application/json-patch+json")

    def start(self) -> Process:
        installation = self.installation
        deployment = installation.workload("Deployment", "hami-webhook")
        pods = wait_until(lambda: installation.pods_of("Deployment", "hami-webhook"), 90, "the webhook's pods")
        token = installation.cluster.service_account_token(
            NAMESPACE, deployment["spec"]["template"]["spec"]["serviceAccountName"], bound_pod=pods[0])
        kubeconfig = installation.cluster.kubeconfig_with_token(token, "hami-webhook")
        args = list(_container(deployment, "webhook")["args"])
        for option, value in (("--port", str(self.port)), ("--address", "127.0.0.1"), ("--ip-address", "127.0.0.1"),
                              ("--metrics-port", "0"), ("--check-interval", "1"), ("--kubeconfig", str(kubeconfig))):
            args = _with_option(args, option, value)
        self.process = Process("hami-webhook", [sys.executable, "-m", "vgpu_dra.cli.main", *args],
                               {**os.environ, "PYTHONUNBUFFERED": "1"},
                               installation.workdir / "hami-webhook.log").start()
        wait_until(self.published, 60, "the webhook's caBundle in its configuration")
        wait_until(self.answers, 60, "the webhook answering over TLS")
        return self.process

    def answers(self) -> bool:
        """Whether /healthz answers over TLS with a certificate the published bundle trusts."""
        config = self.installation.cluster.kube.get(MUTATING_WEBHOOK_CONFIGURATIONS, self.config_name)
        bundle = base64.b64decode(config["webhooks"][0]["clientConfig"]["caBundle"]).decode()
        connection = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=5,
                                                 context=ssl.create_default_context(cadata=bundle))
        try:
            connection.request("GET", "/healthz")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def published(self) -> bool:
        if self.process is not None and not self.process.running:
            raise AssertionError(f"the webhook exited:\n{self.process.tail()}")
        config = self.installation.cluster.kube.get(MUTATING_WEBHOOK_CONFIGURATIONS, self.config_name)
        return all(w["clientConfig"].get("caBundle") for w in config["webhooks"])

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


@pytest.fixture(scope="module")
def webhook(real_cluster: RealCluster) -> Iterator[Webhook]:
    workdir = Path(tempfile.mkdtemp(prefix="vgpu-hami-"))
    installation = Installation(real_cluster, "controller", workdir, node_specs=(NodeSpec("gpu-node-a", RTX3080),),
                                extra_values={"hamiWebhook": {"enabled": True, "replicas": 1}})
    hook: Webhook | None = None
    try:
        installation.install()
        real_cluster.create_namespace(TEST_NAMESPACE)
        hook = Webhook(installation)
        hook.point_configuration_here()
        hook.start()
        yield hook
    except BaseException:
        sys.stderr.write(installation.logs() + (hook.process.tail() if hook and hook.process else ""))
        raise
    finally:
        if hook is not None:
            hook.stop()
        real_cluster.delete_namespace(TEST_NAMESPACE)
        installation.uninstall()
        if not os.environ.get("VGPU_KEEP_CLUSTER_LOGS"):
            shutil.rmtree(workdir, ignore_errors=True)


def _pods(cluster: RealCluster, namespace: str) -> list[dict[str, Any]]:
    items = cluster.kube.list(PODS, namespace).get("items") or []
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def _claim(cluster: RealCluster, pod: dict[str, Any]) -> dict[str, Any] | None:
    statuses = (pod.get("status") or {}).get("resourceClaimStatuses") or []
    if len(statuses) != 1 or not statuses[0].get("resourceClaimName"):
        return None
    claim = cluster.kube.get(RESOURCE_CLAIMS, statuses[0]["resourceClaimName"], TEST_NAMESPACE)
    status = claim.get("status") or {}
    reserved = any(r.get("uid") == pod["metadata"]["uid"] for r in status.get("reservedFor") or [])
    return claim if status.get("allocation") and reserved and pod["spec"].get("nodeName") else None


def _settled(cluster: RealCluster) -> dict[str, tuple[dict[str, Any], dict[str, Any]]] | None:
    found = {}
    for pod in _pods(cluster, TEST_NAMESPACE):
        owner = pod["metadata"].get("generateName", "").rsplit("-", 2)[0]
        claim = _claim(cluster, pod)
        if owner not in EXPECTED or claim is None:
            return None
        found[owner] = (pod, claim)
    return found if set(found) == set(EXPECTED) else None


def test_the_users_hami_files_applied_unchanged_run_with_their_limits(webhook: Webhook) -> None:
    installation = webhook.installation
    cluster = installation.cluster
    cluster.kubectl("apply", "-n", TEST_NAMESPACE, "-f", str(SEED))
    try:
        try:
            settled = wait_until(lambda: _settled(cluster), 120, "both HAMi workers bound with allocated claims")
        except AssertionError as exc:
            state = cluster.kubectl("get", "pods,resourceclaims,resourceclaimtemplates,events", "-n", TEST_NAMESPACE,
                                    check=False).stdout
            raise AssertionError(f"{exc}\n{state}\n{installation.logs()}\n{webhook.process.tail() if webhook.process else ''}")
        node = installation.nodes["gpu-node-a"]
        [gpu] = load_inventory(node.spec.inventory).gpus
        kubelet = node.kubelet()
        try:
            for owner, (pod, claim) in settled.items():
                percent, cores = EXPECTED[owner]
                spec = pod["spec"]
                assert spec["schedulerName"] == "default-scheduler"
                [container] = spec["containers"]
                assert not any(k.startswith("nvidia.com/") for k in (container["resources"].get("limits") or {}))
                note = pod["metadata"]["annotations"]["vgpu.dra.dev/hami-translation"]
                assert f"gpucores={cores} gpumem-percentage={percent}" in note
                assert f"memoryPercent {percent}, cores {cores}" in note
                assert "schedulerName hami-scheduler -> default-scheduler" in note
                # kube-controller-manager made the claim and the pod owns it: it goes with the pod.
                [owner_ref] = claim["metadata"]["ownerReferences"]
                assert (owner_ref["kind"], owner_ref["uid"]) == ("Pod", pod["metadata"]["uid"])
                uid = claim["metadata"]["uid"]
                answer = kubelet.prepare([Claim(TEST_NAMESPACE, uid, claim["metadata"]["name"])])[uid]
                assert answer.error == "", answer.error
                [limit] = parse((node.settings.claims_dir / uid / "config").read_text()).gpus
                wanted = gpu.usable_memory_bytes * percent // 100
                assert (limit.uuid, limit.memory_bytes, limit.cores) == (gpu.uuid, wanted - wanted % MIB, cores), owner
        finally:
            kubelet.close()
        templates = cluster.kube.list(RESOURCE_CLAIM_TEMPLATES, TEST_NAMESPACE)["items"]
        assert sorted(t["metadata"]["name"].rsplit("-", 1)[0] for t in templates) == [
            "hami-mem20pct-cores25", "hami-mem30pct-cores40"]
    finally:
        cluster.kubectl("delete", "-n", TEST_NAMESPACE, "--wait=false", "-f", str(SEED), check=False)
    wait_until(lambda: not _pods(cluster, TEST_NAMESPACE)
               and not cluster.kube.list(RESOURCE_CLAIMS, TEST_NAMESPACE).get("items"), 120,
               "the workers' pods and claims gone")


def _plain_pod(name: str) -> str:
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": TEST_NAMESPACE},
                           "spec": {"containers": [{"name": "c", "image": "busybox",
                                                    "resources": {"limits": {"cpu": "100m"}}}]}})


def _gpu_pod(name: str) -> str:
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": TEST_NAMESPACE},
                           "spec": {"schedulerName": "hami-scheduler", "containers": [{
                               "name": "c", "image": "busybox",
                               "resources": {"limits": {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "1024"}}}]}})


def _delete_pod(cluster: RealCluster, name: str) -> None:
    try:
        cluster.kube.delete(PODS, name, TEST_NAMESPACE, grace_period_s=0)
    except ApiError as exc:
        if not exc.not_found:
            raise


def test_a_pod_without_gpu_requests_is_untouched(webhook: Webhook) -> None:
    cluster = webhook.installation.cluster
    manifest = _plain_pod("plain")
    cluster.kubectl("apply", "-f", "-", input=manifest)
    try:
        pod = cluster.kube.get(PODS, "plain", TEST_NAMESPACE)
        assert "vgpu.dra.dev/hami-translation" not in (pod["metadata"].get("annotations") or {})
        assert "resourceClaims" not in pod["spec"] and pod["spec"]["schedulerName"] == "default-scheduler"
        assert pod["spec"]["containers"][0]["resources"] == {"limits": {"cpu": "100m"}, "requests": {"cpu": "100m"}}
    finally:
        _delete_pod(cluster, "plain")


def test_a_bad_hami_value_is_refused_naming_the_field(webhook: Webhook) -> None:
    cluster = webhook.installation.cluster
    manifest = _gpu_pod("bad").replace("nvidia.com/gpumem: '1024'", "nvidia.com/gpucores: '250'")
    done = cluster.kubectl("apply", "-f", "-", input=manifest, check=False)
    assert done.returncode != 0
    assert 'admission webhook "translate-hami-gpu.vgpu.dra.dev" denied the request' in done.stderr, done.stderr
    assert "container c: nvidia.com/gpucores = '250' is out of range; expected an integer from 0 to 100" in done.stderr


def test_with_the_webhook_down_a_gpu_pod_is_refused_saying_why_and_a_plain_pod_is_admitted(webhook: Webhook) -> None:
    cluster = webhook.installation.cluster
    webhook.stop()
    try:
        refused = cluster.kubectl("apply", "-f", "-", input=_gpu_pod("gpu-while-down"), check=False)
        assert refused.returncode != 0
        assert 'failed calling webhook "translate-hami-gpu.vgpu.dra.dev"' in refused.stderr, refused.stderr
        with pytest.raises(ApiError):
            cluster.kube.get(PODS, "gpu-while-down", TEST_NAMESPACE)
        cluster.kubectl("apply", "-f", "-", input=_plain_pod("plain-while-down"))
        assert cluster.kube.get(PODS, "plain-while-down", TEST_NAMESPACE)["metadata"]["name"] == "plain-while-down"
    finally:
        _delete_pod(cluster, "plain-while-down")
        _delete_pod(cluster, "gpu-while-down")
        webhook.start()
    # Back up: the same pod is admitted and translated.
    cluster.kubectl("apply", "-f", "-", input=_gpu_pod("gpu-after"))
    try:
        pod = cluster.kube.get(PODS, "gpu-after", TEST_NAMESPACE)
        assert pod["spec"]["resourceClaims"][0]["resourceClaimTemplateName"].startswith("hami-mem1024mi-")
    finally:
        _delete_pod(cluster, "gpu-after")


def test_the_ca_bundle_the_webhook_published_is_the_one_in_its_secret(webhook: Webhook) -> None:
    cluster = webhook.installation.cluster
    secret_name = next(a.split("=", 1)[1] for a in
                       _container(webhook.installation.workload("Deployment", "hami-webhook"), "webhook")["args"]
                       if a.startswith("--tls-secret="))
    secret = cluster.kube.get(SECRETS, secret_name, NAMESPACE)
    bundle = secret["data"]["ca-bundle.crt"]
    config = cluster.kube.get(MUTATING_WEBHOOK_CONFIGURATIONS, webhook.config_name)
    assert {w["clientConfig"]["caBundle"] for w in config["webhooks"]} == {bundle}
    assert base64.b64decode(bundle).startswith(b"-----BEGIN CERTIFICATE-----")


WORKLOADS = f"""
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: trainer, namespace: {TEST_NAMESPACE}}}
spec:
  serviceName: trainer
  replicas: 1
  selector: {{matchLabels: {{app: trainer}}}}
  template:
    metadata:
      labels: {{app: trainer}}
      annotations: {{nvidia.com/use-gputype: "RTX 3080", hami.io/gpu-scheduler-policy: spread}}
    spec:
      initContainers:
        - name: warmup
          image: busybox
          resources: {{limits: {{nvidia.com/gpu: "1", nvidia.com/gpumem: "1024", nvidia.com/gpucores: "10"}}}}
      containers:
        - name: a
          image: busybox
          resources: {{limits: {{nvidia.com/gpu: "1", nvidia.com/gpumem: "1024", nvidia.com/gpucores: "10"}}}}
        - name: b
          image: busybox
          resources: {{limits: {{nvidia.com/gpumem-percentage: "10"}}}}
---
apiVersion: batch/v1
kind: Job
metadata: {{name: batch, namespace: {TEST_NAMESPACE}}}
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: work
          image: busybox
          resources: {{limits: {{nvidia.com/gpu: "1", nvidia.com/gpumem: "512"}}}}
"""


def _allocated_claims(cluster: RealCluster, pod: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    statuses = {s["name"]: s.get("resourceClaimName") for s in (pod.get("status") or {}).get("resourceClaimStatuses") or []}
    claims = {}
    for entry in pod["spec"].get("resourceClaims") or []:
        name = statuses.get(entry["name"])
        if not name:
            return None
        claim = cluster.kube.get(RESOURCE_CLAIMS, name, TEST_NAMESPACE)
        if not (claim.get("status") or {}).get("allocation"):
            return None
        claims[entry["name"]] = claim
    return claims if claims and pod["spec"].get("nodeName") else None


def test_pods_of_statefulsets_and_jobs_with_init_and_several_gpu_containers_get_their_claims(webhook: Webhook) -> None:
    installation = webhook.installation
    cluster = installation.cluster
    cluster.kubectl("apply", "-f", "-", input=WORKLOADS)
    try:
        def settled() -> dict[str, dict[str, dict[str, Any]]] | None:
            found = {}
            for pod in _pods(cluster, TEST_NAMESPACE):
                claims = _allocated_claims(cluster, pod)
                if claims is None:
                    return None
                found[pod["metadata"]["name"].split("-")[0]] = claims
            return found if set(found) == {"trainer", "batch"} else None
        try:
            found = wait_until(settled, 120, "the StatefulSet's and the Job's pods bound with allocated claims")
        except AssertionError as exc:
            state = cluster.kubectl("get", "pods,resourceclaims,events", "-n", TEST_NAMESPACE, check=False).stdout
            raise AssertionError(f"{exc}\n{state}\n{installation.logs()}") from None
        assert sorted(found["trainer"]) == ["vgpu-a", "vgpu-b"]  # the init container uses a's claim
        assert sorted(found["batch"]) == ["vgpu-work"]
        trainer = cluster.kube.get(PODS, "trainer-0", TEST_NAMESPACE)
        [warmup] = trainer["spec"]["initContainers"]
        assert warmup["resources"]["claims"] == [{"name": "vgpu-a"}]
        policy = found["trainer"]["vgpu-a"]["metadata"].get("annotations") or {}
        assert policy.get("vgpu.dra.dev/gpu-policy") == "spread"
        node = installation.nodes["gpu-node-a"]
        [gpu] = load_inventory(node.spec.inventory).gpus
        kubelet = node.kubelet()
        try:
            walls = {}
            for pod_claims in found.values():
                for entry, claim in pod_claims.items():
                    uid = claim["metadata"]["uid"]
                    answer = kubelet.prepare([Claim(TEST_NAMESPACE, uid, claim["metadata"]["name"])])[uid]
                    assert answer.error == "", answer.error
                    [limit] = parse((node.settings.claims_dir / uid / "config").read_text()).gpus
                    walls[entry] = (limit.memory_bytes, limit.cores)
        finally:
            kubelet.close()
        tenth = gpu.usable_memory_bytes // 10
        assert walls == {"vgpu-a": (1024 * MIB, 10), "vgpu-b": (tenth - tenth % MIB, 0), "vgpu-work": (512 * MIB, 0)}
    finally:
        cluster.kubectl("delete", "-f", "-", "--wait=false", input=WORKLOADS, check=False)
    try:
        wait_until(lambda: not _pods(cluster, TEST_NAMESPACE)
                   and not cluster.kube.list(RESOURCE_CLAIMS, TEST_NAMESPACE).get("items"), 120,
                   "the pods and claims gone")
    except AssertionError as exc:
        left = cluster.kubectl("get", "pods,resourceclaims,events", "-n", TEST_NAMESPACE, "-o", "wide",
                               check=False).stdout
        finalizers = [(c["metadata"]["name"], c["metadata"].get("finalizers"), c["metadata"].get("deletionTimestamp"),
                       (c.get("status") or {}).get("reservedFor"))
                      for c in cluster.kube.list(RESOURCE_CLAIMS, TEST_NAMESPACE).get("items") or []]
        raise AssertionError(f"{exc}\n{left}\nclaims (finalizers, deletion, reservedFor): {finalizers}\n"
                             f"{installation.logs()}") from None
