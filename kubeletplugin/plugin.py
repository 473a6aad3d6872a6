"""The kubelet plugin process: wires inventory, checkpoint, preparer, gRPC endpoints, slices and
metrics together and runs until SIGTERM.

Start order: read the boot ID and the GPU inventory, install the shim, load the checkpoint (a
corrupt one is set aside, logged, and rebuilt), bring the claim files in line with it, serve
metrics, serve DRA then registration, publish ResourceSlices. Stop order is the reverse for the
sockets (registration first) so the kubelet stops sending work before the DRA socket goes.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import structlog
from kubernetes import client
from kubernetes.client.rest import ApiException

from vgpu_dra.driver.allocation_limits import pod_refs
from vgpu_dra.driver.checkpoint import Checkpoint, CheckpointStore, CorruptCheckpoint, read_boot_id
from vgpu_dra.driver.devices import device_name, publishable_gpus
from vgpu_dra.driver.inventory import NodeInventory, discover
from vgpu_dra.kubeletplugin.claim_files import ClaimFiles
from vgpu_dra.kubeletplugin.claim_reader import ClaimReader, ClaimReadError
from vgpu_dra.kubeletplugin.claim_status_writer import (ClaimStatusWriter, RememberingClaimSource,
                                                        StatusReportingPreparer)
from vgpu_dra.kubeletplugin.endpoints import PluginEndpoints
from vgpu_dra.kubeletplugin.health_metrics import HealthMetrics
from vgpu_dra.kubeletplugin.metrics import NodeMetrics, NvmlSampler
from vgpu_dra.kubeletplugin.node_events import report_node_event
from vgpu_dra.kubeletplugin.node_health import NodeHealth
from vgpu_dra.kubeletplugin.node_object import read_node
from vgpu_dra.kubeletplugin.preparer import NodeGpus, NodePreparer
from vgpu_dra.kubeletplugin.settings import PluginSettings
from vgpu_dra.kubeletplugin.shim_install import install_shim
from vgpu_dra.kubeletplugin.slices import SlicePublisher
from vgpu_dra.kubeletplugin.watchdog import ProcessSource, UsageWatchdog
from vgpu_dra.kubeletplugin.watchdog_wiring import start_watchdog

log = structlog.get_logger(__name__)


class KubeletPlugin:
    """One running plugin; `start()` then `stop()` (or `run(stop)`)."""

    def __init__(self, settings: PluginSettings, api_client: client.ApiClient, *,
                 inventory_source: Callable[[], NodeInventory] | None = None,
                 sample_gpus: bool = True, publish_slices: bool = True,
                 process_source: ProcessSource | None = None):
        settings.check()
        self.settings = settings
        self.api_client = api_client
        self._discover = inventory_source or (lambda: discover(settings.node_name))
        self._sample_gpus = sample_gpus
        self._publish_slices = publish_slices
        self._inventory: NodeInventory | None = None
        self._gpus: NodeGpus | None = None
        self._labels: dict[str, str] | None = None
        self._stop = threading.Event()
        self._resync: threading.Thread | None = None
        self.reader = ClaimReader(api_client, settings.api_timeout_seconds)
        self.preparer: NodePreparer | None = None
        self.endpoints: PluginEndpoints | None = None
        self.metrics: NodeMetrics | None = None
        self.metrics_port: int | None = None
        self.slices: SlicePublisher | None = None
        self._sampler: NvmlSampler | None = None
        self._process_source = process_source
        self.watchdog: UsageWatchdog | None = None
        self.health: NodeHealth | None = None
        self.status_writer: ClaimStatusWriter | None = None

    # ---- node facts ----------------------------------------------------------------------------
    def _node_labels(self) -> dict[str, str]:
        if self._labels is None:
            try:
                node = read_node(self.api_client, self.settings.node_name, self.settings.api_timeout_seconds)
                self._labels = dict(node["metadata"].get("labels") or {})
            except (ApiException, OSError, ValueError) as exc:
                log.warning("cannot read the node's labels; label selectors of allocations will not match",
                            error=str(exc))
                return {}
        return self._labels

    def _current_gpus(self) -> NodeGpus:
        assert self._gpus is not None
        return self._gpus

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Bring the plugin up; raises when something essential is missing."""
        settings = self.settings
        boot_id = read_boot_id(settings.boot_id_path)
        self._inventory = self._discover()
        self._gpus = NodeGpus.from_inventory(self._inventory)
        log.info("gpu inventory", node=settings.node_name,
                 gpus=[f"{name}={gpu.uuid}" for name, gpu in self._gpus.by_device.items()])
        shim = install_shim(settings.shim_source, settings.shim_dir, settings.shim_container_path)
        store = CheckpointStore(settings.checkpoint_path)
        corrupt = False
        try:
            checkpoint = store.load() or Checkpoint(boot_id=boot_id)
        except CorruptCheckpoint as exc:
            moved = store.quarantine()
            log.error("checkpoint is corrupt; set aside and rebuilt from the API server",
                      path=str(settings.checkpoint_path), moved_to=str(moved), error=str(exc))
            checkpoint, corrupt = Checkpoint(boot_id=boot_id), True
            report_node_event(self.api_client, settings.node_name, "CheckpointCorrupt",
                              f"vgpu-dra checkpoint {settings.checkpoint_path} was unreadable ({exc}); set aside as "
                              f"{moved} and rebuilt from the API server", timeout=settings.api_timeout_seconds)
        files = ClaimFiles(settings.claims_dir, settings.cdi_dir)
        self._claim_source = RememberingClaimSource(self.reader)
        self.preparer = NodePreparer(
            settings, self._claim_source, self._current_gpus, files, store, checkpoint, shim, node_labels=self._node_labels,
            reinstall_shim=lambda: install_shim(settings.shim_source, settings.shim_dir, settings.shim_container_path))
        self.preparer.recover(boot_id, corrupt=corrupt, list_claims=self.reader.list_all)
        if self._sample_gpus:
            try:
                self._sampler = NvmlSampler({device_name(g): g.uuid for g in publishable_gpus(self._inventory)})
            except Exception as exc:  # noqa: BLE001 - metrics must not keep the plugin from serving
                log.warning("NVML sampling unavailable; per-GPU usage metrics are off", error=str(exc))
        self.metrics = NodeMetrics(settings.node_name, self.preparer.prepared_claims, settings.claims_dir,
                                   self._sampler.sample if self._sampler else None)
        self.preparer.observer = self.metrics
        if settings.metrics_port is not None:
            self.metrics_port = self.metrics.serve(settings.metrics_address, settings.metrics_port)
            log.info("serving metrics", address=settings.metrics_address, port=self.metrics_port)
        if settings.watchdog_seconds > 0:
            self.watchdog = start_watchdog(self, self._process_source)
        if self._publish_slices:
            self.slices = SlicePublisher(self.api_client, settings.node_name, settings.driver_name, self._inventory,
                                         max_devices_per_slice=settings.max_devices_per_slice)
        health_metrics = HealthMetrics(settings.node_name, self.metrics.registry)
        served: Any = self.preparer
        if settings.write_claim_status:
            self.status_writer = ClaimStatusWriter(self.api_client, settings.driver_name, settings.node_name,
                                                   on_failure=health_metrics.status_write_failed,
                                                   timeout=settings.api_timeout_seconds, recent=self._claim_source)
            self.status_writer.start()
            served = StatusReportingPreparer(self.preparer, self.status_writer)
        if settings.watch_health:
            self.health = NodeHealth(settings, self.api_client, dict(self._gpu_uuids()), self.slices, health_metrics)
            try:
                self.health.start()
            except Exception as exc:  # noqa: BLE001 - NVML served the inventory; this is a driver fault
                for device in self._gpu_uuids():
                    health_metrics.registration_failed(device)
                log.error("cannot watch gpu health: no device taints will be published for this node",
                          error=str(exc))
                self.health = None
        self.endpoints = PluginEndpoints(settings, served, on_registered=self._registered,
                                         health_source=self.health)
        self.endpoints.start()
        if self.slices is not None:
            self.slices.start()
        self._resync = threading.Thread(target=self._resync_loop, name="resync", daemon=True)
        self._resync.start()

    def _gpu_uuids(self) -> dict[str, str]:
        assert self._inventory is not None
        return {device_name(g): g.uuid for g in publishable_gpus(self._inventory)}

    def _registered(self) -> None:
        if self.slices is None:
            return
        try:
            self.slices.sync()
        except Exception as exc:  # noqa: BLE001 - the publisher's own loop retries
            log.warning("publishing slices after registration failed", error=str(exc))

    def _resync_loop(self) -> None:
        while not self._stop.wait(self.settings.resync_seconds):
            try:
                self.resync()
            except Exception as exc:  # noqa: BLE001 - retried next period
                log.warning("periodic resync failed", error=str(exc))

    def resync(self) -> None:
        """Re-read the inventory (republish on change) and the pods of prepared claims."""
        inventory = self._discover()
        if inventory != self._inventory:
            log.info("gpu inventory changed", node=self.settings.node_name)
            self._inventory = inventory
            self._gpus = NodeGpus.from_inventory(inventory)
            if self.slices is not None:
                self.slices.set_inventory(inventory)
                self.slices.sync()
            if self.health is not None:  # watch the GPUs the node has now
                self.health.restart(self._gpu_uuids())
        self.refresh_pods()

    def refresh_pods(self) -> None:
        """Re-read which pods reserve each prepared claim (names for metrics, UIDs for the watchdog)."""
        assert self.preparer is not None
        for uid, claim in self.preparer.prepared_claims().items():
            try:
                current = self.reader.get(claim.namespace, claim.name)
            except (ClaimReadError, LookupError):
                continue
            if (current.get("metadata") or {}).get("uid") == uid:
                refs = pod_refs(current)
                self.preparer.set_pods(uid, tuple(name for name, _ in refs), refs)

    def stop(self) -> None:
        """Stop serving: registration and DRA sockets removed, threads ended."""
        self._stop.set()
        if self.endpoints is not None:
            self.endpoints.stop()
        if self.health is not None:
            self.health.stop()
        if self.slices is not None:
            self.slices.stop()
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.status_writer is not None:
            self.status_writer.stop()
        if self.metrics is not None:
            self.metrics.stop()
        if self.preparer is not None:
            self.preparer.close()
        if self._sampler is not None:
            self._sampler.close()
        log.info("kubelet plugin stopped")

    def run(self, stop: threading.Event) -> None:
        """Start, serve until `stop` is set (cli: SIGTERM or SIGINT), stop."""
        self.start()
        log.info("kubelet plugin ready", node=self.settings.node_name)
        stop.wait()
        self.stop()
