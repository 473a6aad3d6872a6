"""vgpu-dra installed on a real control plane the way a user installs it, minus the images.

The Helm chart is rendered with Helm's own engine and applied with the real `kubectl`; the
Deployment and DaemonSet then exist and kube-controller-manager creates their pods, which
kube-scheduler binds to the test's Nodes. No kubelet runs them, so this module runs their
containers' commands as real processes instead, with the arguments the chart gives them and the
identities their pods would have: a ServiceAccount token bound to the component's own pod (for
the kubelet plugin that makes the node-bound identity the chart's RBAC and admission policy are
written for). GPUs come from the fake NVML; the test plays the kubelet over the plugin's sockets.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.control_plane import free_port
from tests.cluster.real_cluster import RealCluster, wait_until
from tests.deploy.chart import render
from tests.fakes.nvml_env import FakeNvml, build_library
from tests.plugin.kubelet_client import FakeKubelet
from tests.plugin.node import node_settings, shim_library
from vgpu_dra.controller.kubeapi import DEVICE_CLASSES, PODS, RESOURCE_SLICES, ApiError, Resource
from vgpu_dra.kubeletplugin.settings import PluginSettings

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
INVENTORIES = REPO / "tests" / "fakes" / "inventories"
NAMESPACE = "vgpu-dra"
RELEASE = "vgpu-dra"
LEASES = Resource("coordination.k8s.io", "v1", "leases", True)
_VARIABLE = re.compile(r"\$\(([A-Z_]+)\)")


@dataclass(frozen=True)
class NodeSpec:
    """A GPU node of the test cluster: its name and the fake NVML inventory its plugin sees."""

    name: str
    inventory: Path


DEFAULT_NODES = (NodeSpec("gpu-node-a", EXAMPLES / "inventory" / "rtx3080.yaml"),
                 NodeSpec("gpu-node-b", INVENTORIES / "mixed-node.yaml"))


def _container(workload: Mapping[str, Any], name: str) -> dict[str, Any]:
    [container] = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return container


def _expand(args: Sequence[str], variables: Mapping[str, str]) -> list[str]:
    """Container args with $(VAR) replaced as the kubelet does."""
    return [_VARIABLE.sub(lambda m: variables.get(m.group(1), m.group(0)), a) for a in args]


def _with_option(args: list[str], option: str, value: str) -> list[str]:
    """`args` with `--option=value` replacing any existing `--option…` (the test's paths and ports
    instead of the host's)."""
    kept = [a for a in args if a != option and not a.startswith(option + "=")]
    return [*kept, f"{option}={value}"]


def controller_ready(process: Process) -> bool:
    """True once the controller `process` leads with synced caches (its ready gauge is 1)."""
    port = next(a.split("=", 1)[1] for a in process.argv if a.startswith("--metrics-port="))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return False
    return any(line.split() == ["vgpu_dra_controller_ready", "1.0"] for line in text.splitlines())


@dataclass
class Process:
    """A component run as a child process, with its log."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen | None = None

    def start(self) -> Process:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)
        return self

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """Send `sig` and wait for the exit (SIGKILL after `timeout`)."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def tail(self, chars: int = 4000) -> str:
        """The end of the log."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@dataclass
class GpuNode:
    """A node whose kubelet plugin runs here."""

    spec: NodeSpec
    settings: PluginSettings
    env: dict[str, str]
    plugin: Process | None = None

    def kubelet(self) -> FakeKubelet:
        """A kubelet registered with the running plugin (wait for its registration socket)."""
        wait_until(lambda: self.settings.registration_socket.exists() or self._died(), 60,
                   f"the kubelet plugin of {self.spec.name} to serve its registration socket")
        kubelet = FakeKubelet(self.settings.registration_socket)
        kubelet.register()
        return kubelet

    def _died(self) -> bool:
        if self.plugin is not None and not self.plugin.running:
            raise AssertionError(f"kubelet plugin of {self.spec.name} exited:\n{self.plugin.tail()}")
        return False


@dataclass
class Installation:
    """The chart applied with kubectl, plugins on every GPU node, the controller (in controller mode)."""

    cluster: RealCluster
    allocator: str
    workdir: Path
    nodes: dict[str, GpuNode] = field(default_factory=dict)
    controllers: list[Process] = field(default_factory=list)
    rendered: list[dict[str, Any]] = field(default_factory=list)
    node_specs: Sequence[NodeSpec] = DEFAULT_NODES
    extra_values: Mapping[str, Any] = field(default_factory=dict)

    @property
    def values(self) -> dict[str, Any]:
        """Chart values of this installation."""
        return {"allocator": self.allocator, "logFormat": "json", **self.extra_values}

    def install(self) -> Installation:
        """Apply the chart, create the GPU nodes, start their plugins and the controller."""
        self.rendered = render(self.values, release=RELEASE, namespace=NAMESPACE).objects
        self.cluster.kubectl("create", "namespace", NAMESPACE, check=False)
        manifest = yaml.safe_dump_all(self.rendered)
        self.cluster.kubectl("apply", "--server-side", "--field-manager=helm", "-f", "-", input=manifest)
        for spec in self.node_specs:
            self.cluster.nodes.add(spec.name, {"nvidia.com/gpu.present": "true"})
        library = build_library()
        shim = shim_library(self.workdir)
        for spec in self.node_specs:
            root = Path(tempfile.mkdtemp(prefix=f"{spec.name[-1]}-", dir=self.workdir))
            settings = node_settings(root, spec.name, shim, metrics_port=None)
            env = FakeNvml(library, root, None).env(spec.inventory)  # type: ignore[arg-type]
            node = GpuNode(spec, settings, env)
            self.nodes[spec.name] = node
            self.start_plugin(spec.name)
        for spec in self.node_specs:
            wait_until(lambda spec=spec: self.published(spec.name), 90, f"ResourceSlices of {spec.name}")
        if self.allocator == "controller":
            controller = self.start_controller()
            # As kube-scheduler is before a test starts: up, leading, caches synced. A test's first
            # pod must not time the controller's start-up (that is bench/failover.py's measure).
            wait_until(lambda: controller_ready(controller) or not controller.running, 90,
                       "the controller leading with synced caches")
            if not controller.running:
                raise AssertionError(f"the controller exited at start-up\n{self.logs()}")
        return self

    # ------------------------------------------------------------------ components

    def _workloads(self, kind: str, component: str | None) -> list[dict[str, Any]]:
        # The HAMi webhook's Deployment sits beside the controller's: it is asked for by name.
        def wanted(o: dict[str, Any]) -> bool:
            label = (o["metadata"].get("labels") or {}).get("app.kubernetes.io/component")
            return label == component if component else label != "hami-webhook"
        return [o for o in self.rendered if o["kind"] == kind and wanted(o)]

    def workload(self, kind: str, component: str | None = None) -> dict[str, Any]:
        """The rendered Deployment or DaemonSet of the chart (`component`: another than the
        controller's or the plugin's, e.g. "hami-webhook")."""
        [found] = self._workloads(kind, component)
        return found

    def pods_of(self, kind: str, component: str | None = None) -> list[dict[str, Any]]:
        """The live pods kube-controller-manager created for the chart's `kind` (none when the
        chart has no such workload, as in scheduler mode for the controller)."""
        if not self._workloads(kind, component):
            return []
        selector = self.workload(kind, component)["spec"]["selector"]["matchLabels"]
        labels = ",".join(f"{k}={v}" for k, v in selector.items())
        pods = self.cluster.kube.list(PODS, NAMESPACE, label_selector=labels).get("items") or []
        return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

    def _component_env(self, extra: Mapping[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
        return {**env, "PYTHONUNBUFFERED": "1", **extra}

    def plugin_pod(self, node: str) -> dict[str, Any]:
        """The DaemonSet's pod bound to `node`."""
        def bound() -> dict[str, Any] | None:
            return next((p for p in self.pods_of("DaemonSet") if p["spec"].get("nodeName") == node), None)
        try:
            return wait_until(bound, 90, f"the kubelet plugin DaemonSet's pod on {node}")
        except AssertionError as exc:
            state = self.cluster.kubectl("get", "daemonsets,pods", "-n", NAMESPACE, "-o", "wide", check=False).stdout
            state += self.cluster.kubectl("get", "nodes", "-o", "custom-columns=NAME:.metadata.name,TAINTS:.spec.taints",
                                          check=False).stdout
            events = self.cluster.kubectl("get", "events", "-n", NAMESPACE, check=False).stdout[-3000:]
            raise AssertionError(f"{exc}\n{state}\n{events}") from None

    def start_plugin(self, name: str, extra_args: Sequence[str] = ()) -> Process:
        """Run the DaemonSet container's command for node `name`, under a token of the plugin's
        ServiceAccount bound to its pod on that node; `extra_args` (`--option=value`) replace the
        chart's."""
        node = self.nodes[name]
        daemonset = self.workload("DaemonSet")
        pod = self.plugin_pod(name)
        service_account = daemonset["spec"]["template"]["spec"]["serviceAccountName"]
        token = self.cluster.service_account_token(NAMESPACE, service_account, bound_pod=pod)
        kubeconfig = self.cluster.kubeconfig_with_token(token, f"plugin-{name}")
        s = node.settings
        args = _expand(_container(daemonset, "kubelet-plugin")["args"],
                       {"NODE_NAME": name, "POD_UID": pod["metadata"]["uid"]})
        for option, value in (("--registrar-dir", s.registrar_dir), ("--plugin-dir", s.plugin_dir),
                              ("--cdi-dir", s.cdi_dir), ("--state-dir", s.state_dir), ("--shim", s.shim_source),
                              ("--boot-id-file", s.boot_id_path), ("--metrics-port", "-1"),
                              ("--kubeconfig", kubeconfig)):
            args = _with_option(args, option, str(value))
        for extra in extra_args:
            option, _, value = extra.partition("=")
            args = _with_option(args, option, value)
        args = [a for a in args if not a.startswith("--nvidia-cdi-dir")]
        args += [f"--nvidia-cdi-dir={d}" for d in s.nvidia_cdi_dirs]
        # With the pod UID the plugin names its sockets per pod (rolling updates): drop it so the
        # test's kubelet finds the plain socket names.
        args = [a for a in args if not a.startswith("--pod-uid")]
        process = Process(f"plugin-{name}", [sys.executable, "-m", "vgpu_dra.cli.main", *args],
                          self._component_env(node.env), self.workdir / f"plugin-{name}.log").start()
        node.plugin = process
        return process

    def stop_plugin(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop node `name`'s plugin."""
        node = self.nodes[name]
        if node.plugin is not None:
            node.plugin.stop(sig)
            node.plugin = None

    def start_controller(self) -> Process:
        """Run the Deployment container's command under a token of the controller's
        ServiceAccount bound to one of its pods; identity = that pod's name."""
        deployment = self.workload("Deployment")
        pods = wait_until(lambda: self.pods_of("Deployment"), 90, "the controller Deployment's pods")
        pod = pods[len(self.controllers) % len(pods)]
        service_account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        token = self.cluster.service_account_token(NAMESPACE, service_account, bound_pod=pod)
        name = f"controller-{len(self.controllers)}"
        kubeconfig = self.cluster.kubeconfig_with_token(token, name)
        args = _expand(_container(deployment, "controller")["args"], {"POD_NAME": pod["metadata"]["name"]})
        args = _with_option(args, "--metrics-port", str(free_port()))
        args = _with_option(args, "--kubeconfig", str(kubeconfig))
        process = Process(name, [sys.executable, "-m", "vgpu_dra.cli.main", *args], self._component_env({}),
                          self.workdir / f"{name}.log").start()
        self.controllers.append(process)
        return process

    def live_controllers(self) -> list[Process]:
        """Controller processes still running."""
        return [c for c in self.controllers if c.running]

    def lease_holder(self) -> str:
        """The controller Lease's holder ('' when none)."""
        lease_name = next((a.split("=", 1)[1] for a in _container(self.workload("Deployment"), "controller")["args"]
                           if a.startswith("--lease-name=")), "vgpu-dra-controller")
        try:
            lease = self.cluster.kube.get(LEASES, lease_name, NAMESPACE)
        except ApiError as exc:
            if exc.not_found:
                return ""
            raise
        return (lease.get("spec") or {}).get("holderIdentity") or ""

    def published(self, node: str) -> list[dict[str, Any]]:
        """The ResourceSlices published for `node`."""
        items = self.cluster.kube.list(RESOURCE_SLICES, field_selector=f"spec.nodeName={node}").get("items") or []
        return [s for s in items if s["spec"]["driver"] == "vgpu.dra.dev"]

    def logs(self) -> str:
        """Every component's log tail, for a failure message."""
        parts = [f"--- {p.name}\n{p.tail(2500)}" for p in
                 [*self.controllers, *(n.plugin for n in self.nodes.values() if n.plugin)]]
        return "\n".join(parts)

    def uninstall(self) -> None:
        """Stop every process, delete the chart's objects, then the nodes and their slices.

        The chart's pods must be gone before their nodes go: the DaemonSet controller waits for
        the deletions it expects, and would hold a re-installed DaemonSet of the same name until
        they time out (minutes)."""
        for process in self.controllers:
            process.stop()
        for name in list(self.nodes):
            self.stop_plugin(name)
        self.cluster.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-",
                             input=yaml.safe_dump_all(self.rendered), check=False)
        wait_until(lambda: not self._chart_pods_left(), 90, "the chart's pods deleted")
        for spec in self.node_specs:
            self.cluster.nodes.remove(spec.name)
            for item in self.published(spec.name):
                try:
                    self.cluster.kube.delete(RESOURCE_SLICES, item["metadata"]["name"])
                except ApiError as exc:
                    if not exc.not_found:
                        raise
        wait_until(lambda: not self._chart_classes_left(), 60, "the chart's DeviceClasses deleted")

    def _chart_pods_left(self) -> list[str]:
        items = self.cluster.kube.list(PODS, NAMESPACE,
                                       label_selector=f"app.kubernetes.io/instance={RELEASE}").get("items") or []
        return [p["metadata"]["name"] for p in items]

    def _chart_classes_left(self) -> list[str]:
        names = {o["metadata"]["name"] for o in self.rendered if o["kind"] == "DeviceClass"}
        items = self.cluster.kube.list(DEVICE_CLASSES).get("items") or []
        return [i["metadata"]["name"] for i in items if i["metadata"]["name"] in names]


@contextmanager
def installed(cluster: RealCluster, allocator: str, values: Mapping[str, Any] | None = None) -> Iterator[Installation]:
    """An Installation (chart `values` on top of the allocator mode) for the duration of the block."""
    workdir = Path(tempfile.mkdtemp(prefix="vgpu-e2e-"))
    installation = Installation(cluster, allocator, workdir, extra_values=dict(values or {}))
    try:
        installation.install()
        yield installation
    except BaseException:
        sys.stderr.write(installation.logs())
        raise
    finally:
        installation.uninstall()
        if not os.environ.get("VGPU_KEEP_CLUSTER_LOGS"):
            shutil.rmtree(workdir, ignore_errors=True)
