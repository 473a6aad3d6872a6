"""NodePrepareResources / NodeUnprepareResources: the node side of a claim's life.

Prepare, per claim: GET the claim (raw JSON), check UID, node and driver, resolve each device's
limits, then — recorded in the checkpoint as ``preparing`` first, so a crash can be rolled back —
write the claim directory (config + region) and the CDI spec, and mark the claim ``prepared``.
A repeat answers from the checkpoint without an API call. Each claim fails on its own: its
``error`` says why, the rest of the batch goes on.

Unprepare: remove spec and claim directory, drop the checkpoint entry. No API call, so it works
when the API server is unreachable or the claim is already deleted; an unknown claim is a success.

Both are serialized by a mutex and an flock on ``<plugin dir>/serialize.lock``, so two plugin
instances overlapping during a rolling update never interleave; under the lock the checkpoint is
re-read when another instance replaced it, so neither overwrites the other's claims.
"""
from __future__ import annotations

import fcntl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import structlog

from vgpu_dra.driver import cdi
from vgpu_dra.driver.allocation_limits import (ClaimNotAllocated, ClaimOnOtherNode, ClaimRejected, ClaimUidMismatch,
                                               InvalidClaimConfig, claim_allocation)
from vgpu_dra.driver.checkpoint import Checkpoint, CheckpointStore, CorruptCheckpoint, PreparedClaim
from vgpu_dra.driver.checkpoint import PreparedDevice as CheckpointDevice
from vgpu_dra.driver.claimconfig import ClaimConfig, ClaimConfigError, GpuLimit
from vgpu_dra.driver.devices import device_name, publishable_gpus, publishable_memory_bytes
from vgpu_dra.driver.inventory import GpuInfo, NodeInventory
from vgpu_dra.kubeletplugin.claim_files import ClaimFiles, InvalidClaimUid, check_uid, nvidia_gpu_device_names
from vgpu_dra.kubeletplugin.claim_reader import ClaimNotFound, ClaimReadError
from vgpu_dra.kubeletplugin.prepared import ClaimOutcome, ClaimRef, PreparedDevice
from vgpu_dra.kubeletplugin.shim_install import InstalledShim, preload_path_for, remove_unused_versions
from vgpu_dra.kubeletplugin.settings import PluginSettings

log = structlog.get_logger(__name__)


class ClaimSource(Protocol):
    """Where claims come from (the API server, through ClaimReader)."""

    def get(self, namespace: str, name: str) -> dict[str, Any]: ...


class PrepareObserver(Protocol):
    """Receives timings and failures (the node metrics)."""

    def prepare_done(self, seconds: float, claims: int) -> None: ...
    def unprepare_done(self, seconds: float, claims: int) -> None: ...
    def prepare_failed(self, reason: str) -> None: ...
    def unprepare_failed(self, reason: str) -> None: ...


class _NoObserver:
    def prepare_done(self, seconds: float, claims: int) -> None: ...
    def unprepare_done(self, seconds: float, claims: int) -> None: ...
    def prepare_failed(self, reason: str) -> None: ...
    def unprepare_failed(self, reason: str) -> None: ...


@dataclass(frozen=True)
class NodeGpus:
    """The GPUs this node publishes, by device name."""

    by_device: Mapping[str, GpuInfo]

    @classmethod
    def from_inventory(cls, inventory: NodeInventory) -> NodeGpus:
        """Index the publishable GPUs of an inventory by their device name."""
        return cls({device_name(gpu): gpu for gpu in publishable_gpus(inventory)})

    @property
    def usable_memory(self) -> dict[str, int]:
        """Usable bytes per device, as published in the `memory` capacity."""
        return {name: publishable_memory_bytes(gpu) for name, gpu in self.by_device.items()}


_REASONS: dict[type[Exception], str] = {
    ClaimUidMismatch: "uid_mismatch", ClaimNotAllocated: "not_allocated", ClaimOnOtherNode: "other_node",
    InvalidClaimConfig: "invalid_config", ClaimNotFound: "not_found", ClaimReadError: "api_error",
}


def failure_reason(exc: Exception) -> str:
    """A short metric label for why a claim failed."""
    for kind, reason in _REASONS.items():
        if isinstance(exc, kind):
            return reason
    return "internal"


def claim_config_of(claim: PreparedClaim) -> ClaimConfig:
    """The shim's view of a prepared claim: one limit per GPU (shares of one GPU add up)."""
    per_gpu: dict[str, GpuLimit] = {}
    for device in claim.devices:
        seen = per_gpu.get(device.gpu_uuid)
        if seen is None:
            per_gpu[device.gpu_uuid] = GpuLimit(device.gpu_uuid, device.memory_bytes, device.cores,
                                                "hard" if device.core_policy == "hard" else "soft")
        else:
            per_gpu[device.gpu_uuid] = GpuLimit(
                device.gpu_uuid, seen.memory_bytes + device.memory_bytes, min(100, seen.cores + device.cores),
                "hard" if "hard" in (seen.policy, device.core_policy) else "soft")
    return ClaimConfig(claim_uid=claim.uid, gpus=tuple(per_gpu.values()))


def cdi_request_of(claim: PreparedClaim, settings: PluginSettings) -> cdi.ClaimCdiRequest:
    """The CDI spec inputs of a prepared claim (deterministic: a repeat writes the same spec)."""
    shim_path = Path(claim.shim_host_path)
    return cdi.ClaimCdiRequest(
        claim_uid=claim.uid,
        gpus=tuple(cdi.CdiGpu(d.device, d.gpu_minor, d.nvidia_cdi_device) for d in claim.devices),
        shim_host_path=str(shim_path), shim_container_path=settings.shim_container_path,
        preload_host_path=str(preload_path_for(shim_path)),
        claim_dir_host_path=str(settings.claims_dir / claim.uid), host_dev_dir=str(settings.dev_dir))


def outcome_of(claim: PreparedClaim) -> ClaimOutcome:
    """What the kubelet gets for a prepared claim."""
    return ClaimOutcome(devices=tuple(
        PreparedDevice(request_names=(d.request.split("/", 1)[0],), pool_name=d.pool, device_name=d.device,
                       cdi_device_ids=d.cdi_device_ids, share_id=d.share_id)
        for d in claim.devices))


class NodePreparer:
    """Prepares and unprepares claims on this node; implements dra_service.ClaimPreparer."""

    def __init__(self, settings: PluginSettings, claims: ClaimSource, gpus: Callable[[], NodeGpus],
                 files: ClaimFiles, store: CheckpointStore, checkpoint: Checkpoint, shim: InstalledShim, *,
                 node_labels: Callable[[], Mapping[str, str]] = dict, observer: PrepareObserver | None = None,
                 reinstall_shim: Callable[[], InstalledShim] | None = None, fetch_workers: int = 8):
        self.settings = settings
        self._claims = claims
        self._gpus = gpus
        self.files = files
        self._store = store
        self._checkpoint = checkpoint
        self._checkpoint_identity = store.identity()
        self._shim = shim
        self._reinstall_shim = reinstall_shim
        self._node_labels = node_labels
        self.observer: PrepareObserver = observer or _NoObserver()
        self._mutex = threading.Lock()
        self._fetch_pool = ThreadPoolExecutor(max_workers=fetch_workers, thread_name_prefix="claim-get")
        self._pods: dict[str, tuple[str, ...]] = {uid: c.pods for uid, c in checkpoint.claims.items()}
        # (name, uid) of the reserving pods as last read; the checkpoint's until then.
        self._pod_refs: dict[str, tuple[tuple[str, str], ...]] = {}
        self._pods_lock = threading.Lock()

    # ---- serialization -------------------------------------------------------------------------
    @contextmanager
    def _serialized(self) -> Iterator[None]:
        with self._mutex:
            self.settings.serialize_lock.parent.mkdir(parents=True, exist_ok=True)
            with open(self.settings.serialize_lock, "a+") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    self._reload_if_replaced()
                    yield
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)

    def _reload_if_replaced(self) -> None:
        identity = self._store.identity()
        if identity is None or identity == self._checkpoint_identity:
            return
        try:
            loaded = self._store.load()
        except CorruptCheckpoint as exc:
            log.error("checkpoint written by another instance is unreadable; keeping ours", error=str(exc))
            return
        if loaded is not None:
            self._checkpoint = Checkpoint(boot_id=self._checkpoint.boot_id, claims=loaded.claims)
            self._checkpoint_identity = identity
            with self._pods_lock:
                for uid, claim in loaded.claims.items():
                    self._pods.setdefault(uid, claim.pods)

    # ---- read-only views (metrics, tests) ------------------------------------------------------
    def prepared_claims(self) -> dict[str, PreparedClaim]:
        """Claims prepared now, with the latest known pod names."""
        claims = dict(self._checkpoint.claims)
        with self._pods_lock:
            return {uid: replace(c, pods=self._pods.get(uid, c.pods), pod_refs=self._pod_refs.get(uid, c.pod_refs))
                    for uid, c in claims.items() if c.state == "prepared"}

    def set_pods(self, uid: str, pods: tuple[str, ...], refs: tuple[tuple[str, str], ...] | None = None) -> None:
        """Record the pods that currently reserve a prepared claim (metric labels; with ``refs``,
        their (name, uid) pairs, by which the usage watchdog knows their processes)."""
        with self._pods_lock:
            if uid in self._pods or uid in self._checkpoint.claims:
                self._pods[uid] = pods
                if refs is not None:
                    self._pod_refs[uid] = refs

    # ---- prepare -------------------------------------------------------------------------------
    def prepare(self, claims: list[ClaimRef]) -> dict[str, ClaimOutcome]:
        """Prepare a batch of claims; one outcome per claim UID.

        The claims are read from the API server outside the lock, so a slow or unreachable API
        server never holds up an Unprepare; under the lock, claims prepared meanwhile (by another
        call or instance) are answered from the checkpoint.
        """
        started = time.perf_counter()
        outcomes: dict[str, ClaimOutcome] = {}
        with self._serialized():
            pending = self._answer_known(claims, outcomes)
        fetched = dict(zip((r.uid for r in pending), self._fetch_pool.map(self._fetch, pending)))
        if pending:
            labels = self._node_labels()  # may read the Node: outside the lock too
            with self._serialized():
                self._ensure_shim()
                planned = self._plan(self._answer_known(pending, outcomes), fetched, labels, outcomes)
                if planned:
                    self._commit(planned, outcomes)
        self.observer.prepare_done(time.perf_counter() - started, len(claims))
        return outcomes

    def _ensure_shim(self) -> None:
        # Another instance (a newer plugin pod during a rolling update) may have removed our shim
        # version as unused; a spec must never name a file that is not there.
        if not self._shim.shim_path.is_file() and self._reinstall_shim is not None:
            self._shim = self._reinstall_shim()
            log.info("re-installed the shim removed by another instance", path=str(self._shim.shim_path))

    def _answer_known(self, claims: list[ClaimRef], outcomes: dict[str, ClaimOutcome]) -> list[ClaimRef]:
        """Answer invalid and already prepared claims; return the others, each once."""
        pending: dict[str, ClaimRef] = {}
        for ref in claims:
            if ref.uid in outcomes or ref.uid in pending:
                continue
            try:
                check_uid(ref.uid)
            except InvalidClaimUid as exc:
                self._fail(ref, outcomes, exc, reason="invalid_uid")
                continue
            done = self._checkpoint.claims.get(ref.uid)
            if done is None or done.state != "prepared":
                pending[ref.uid] = ref
                continue
            try:
                if not self.files.is_complete(ref.uid):
                    self._write_files(done, fresh_region=False)
            except Exception as exc:  # noqa: BLE001 - this claim fails, the batch goes on
                self._fail(ref, outcomes, RuntimeError(f"cannot re-create the files of claim {ref}: {exc}"),
                           reason="write_failed")
                continue
            outcomes[ref.uid] = outcome_of(done)
        return list(pending.values())

    def _plan(self, refs: list[ClaimRef], fetched: Mapping[str, tuple[dict[str, Any] | None, Exception | None]],
              labels: Mapping[str, str], outcomes: dict[str, ClaimOutcome]) -> list[PreparedClaim]:
        if not refs:
            return []
        gpus = self._gpus()
        nvidia_names = nvidia_gpu_device_names(self.settings.nvidia_cdi_dirs)
        planned: list[PreparedClaim] = []
        for ref in refs:
            claim, error = fetched[ref.uid]
            if error is not None:
                self._fail(ref, outcomes, error)
                continue
            try:
                planned.append(self._plan_one(ref, claim or {}, gpus, labels, nvidia_names))
            except (ClaimRejected, ClaimConfigError, cdi.CdiError) as exc:
                self._fail(ref, outcomes, exc)
            except Exception as exc:  # noqa: BLE001 - a bug with one claim must not fail the batch
                log.exception("unexpected error while preparing a claim", uid=ref.uid)
                self._fail(ref, outcomes, RuntimeError(f"internal error in the vgpu-dra plugin: {exc!r}"),
                           reason="internal")
        return planned

    def _fetch(self, ref: ClaimRef) -> tuple[dict[str, Any] | None, Exception | None]:
        try:
            return self._claims.get(ref.namespace, ref.name), None
        except (ClaimNotFound, ClaimReadError) as exc:
            return None, exc
        except Exception as exc:  # noqa: BLE001 - reported per claim, like any read failure
            return None, ClaimReadError(f"cannot read claim {ref.namespace}/{ref.name}: {exc!r}")

    def _plan_one(self, ref: ClaimRef, claim: Mapping[str, Any], gpus: NodeGpus, labels: Mapping[str, str],
                  nvidia_names: frozenset[str]) -> PreparedClaim:
        allocation = claim_allocation(claim, expected_uid=ref.uid, node_name=self.settings.node_name,
                                      usable_memory=gpus.usable_memory, node_labels=labels,
                                      driver=self.settings.driver_name)
        devices = []
        for device in allocation.devices:
            gpu = gpus.by_device[device.device]
            nvidia = cdi.nvidia_device_for(gpu.uuid, gpu.index, nvidia_names)
            ours = cdi.qualified_id(cdi.device_name(ref.uid, device.device))
            devices.append(CheckpointDevice(
                request=device.request, pool=device.pool, device=device.device, share_id=device.share_id,
                gpu_uuid=gpu.uuid, gpu_index=gpu.index, gpu_minor=gpu.minor_number,
                memory_bytes=device.share.memory_bytes, cores=device.share.cores,
                core_policy=device.share.core_policy, nvidia_cdi_device=nvidia,
                cdi_device_ids=(nvidia, ours) if nvidia else (ours,)))
        prepared = PreparedClaim(uid=ref.uid, namespace=allocation.namespace, name=allocation.name,
                                 state="preparing", devices=tuple(devices),
                                 shim_host_path=str(self._shim.shim_path), pods=allocation.reserved_for_pods,
                                 pod_refs=allocation.reserved_for_pod_refs)
        claim_config_of(prepared)  # validate now: a claim the shim would refuse fails here, clearly
        return prepared

    def _commit(self, planned: list[PreparedClaim], outcomes: dict[str, ClaimOutcome]) -> None:
        claims = dict(self._checkpoint.claims)
        claims.update({c.uid: c for c in planned})
        # "preparing": a crash from here on is rolled back at start. Not fsynced: a power loss
        # reboots, and files not in the (durable) checkpoint are swept at start anyway.
        self._save(claims, durable=False)
        for claim in planned:
            try:
                self._write_files(claim, fresh_region=False)
            except Exception as exc:  # noqa: BLE001 - disk full, region layout mismatch, …: this claim only
                self.files.remove(claim.uid)
                del claims[claim.uid]
                self._fail(ClaimRef(claim.namespace, claim.uid, claim.name), outcomes,
                           RuntimeError(f"cannot write the files of claim {claim.namespace}/{claim.name}: {exc}"),
                           reason="write_failed")
                continue
            done = replace(claim, state="prepared")
            claims[claim.uid] = done
            outcomes[claim.uid] = outcome_of(done)
            with self._pods_lock:
                self._pods[claim.uid] = done.pods
                self._pod_refs[claim.uid] = done.pod_refs
            log.info("prepared claim", claim=f"{claim.namespace}/{claim.name}", uid=claim.uid,
                     devices=[d.device for d in claim.devices],
                     limits=[f"{d.memory_bytes}B/{d.cores}%" for d in claim.devices])
        self._save(claims)

    def _write_files(self, claim: PreparedClaim, *, fresh_region: bool) -> None:
        self.files.write_claim_dir(claim_config_of(claim), fresh_region=fresh_region)
        self.files.write_spec(claim.uid, cdi.build_claim_spec(cdi_request_of(claim, self.settings)))

    def _fail(self, ref: ClaimRef, outcomes: dict[str, ClaimOutcome], exc: Exception,
              reason: str | None = None) -> None:
        reason = reason or failure_reason(exc)
        outcomes[ref.uid] = ClaimOutcome.failed(str(exc))
        self.observer.prepare_failed(reason)
        log.warning("claim not prepared", claim=f"{ref.namespace}/{ref.name}", uid=ref.uid, reason=reason,
                    error=str(exc))

    def _save(self, claims: dict[str, PreparedClaim], *, durable: bool = True) -> None:
        checkpoint = self._checkpoint.with_claims(claims)
        self._store.save(checkpoint, durable=durable)
        self._checkpoint = checkpoint
        self._checkpoint_identity = self._store.identity()

    # ---- unprepare -----------------------------------------------------------------------------
    def unprepare(self, claims: list[ClaimRef]) -> dict[str, str]:
        """Unprepare a batch; per claim UID an error message ('' on success)."""
        started = time.perf_counter()
        errors: dict[str, str] = {}
        with self._serialized():
            remaining = dict(self._checkpoint.claims)
            for ref in claims:
                try:
                    self.files.remove(ref.uid)
                    errors[ref.uid] = ""
                except InvalidClaimUid as exc:
                    errors[ref.uid] = str(exc)
                    self.observer.unprepare_failed("invalid_uid")
                    continue
                except OSError as exc:
                    errors[ref.uid] = f"cannot remove the files of claim {ref}: {exc}"
                    self.observer.unprepare_failed("remove_failed")
                    continue
                if remaining.pop(ref.uid, None) is not None:
                    log.info("unprepared claim", claim=f"{ref.namespace}/{ref.name}", uid=ref.uid)
                with self._pods_lock:
                    self._pods.pop(ref.uid, None)
                    self._pod_refs.pop(ref.uid, None)
            if len(remaining) != len(self._checkpoint.claims):
                try:
                    self._save(remaining)
                except OSError as exc:
                    for ref in claims:
                        errors[ref.uid] = f"cannot update the checkpoint: {exc}"
                    self.observer.unprepare_failed("checkpoint")
        self.observer.unprepare_done(time.perf_counter() - started, len(claims))
        return errors

    def close(self) -> None:
        """Stop the claim-fetching threads."""
        self._fetch_pool.shutdown(wait=False, cancel_futures=True)

    # ---- start-up ------------------------------------------------------------------------------
    def recover(self, boot_id: str, *, corrupt: bool = False,
                list_claims: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        """Bring the disk in line with the checkpoint after a restart, a crash or a reboot.

        * ``preparing`` entries (a prepare cut short): files removed, entry dropped — the
          kubelet's retry prepares them again;
        * ``prepared`` entries: missing specs and claim directories re-created (after a reboot
          /var/run is empty; regions are re-initialised since no process survived);
        * files of claims the checkpoint does not know, and temp files, removed;
        * `corrupt`: the checkpoint was unreadable, so claims allocated to this node whose
          directory is still on disk are re-prepared from the API (`list_claims`); if that
          fails, files are left alone (they may be in use) and the kubelet's retries re-prepare.
        """
        with self._serialized():
            rebooted = self._checkpoint.boot_id != boot_id
            claims = dict(self._checkpoint.claims)
            for uid, claim in list(claims.items()):
                if claim.state != "prepared":
                    self.files.remove(uid)
                    del claims[uid]
                    log.info("rolled back an interrupted prepare", uid=uid)
                    continue
                shim_gone = not Path(claim.shim_host_path).is_file()
                if shim_gone:
                    # Its shim version was deleted (state dir partly wiped): a spec naming it would
                    # make every container of the claim fail to start; use the installed one.
                    claim = replace(claim, shim_host_path=str(self._shim.shim_path))
                    claims[uid] = claim
                if rebooted or shim_gone or not self.files.is_complete(uid):
                    try:
                        self._write_files(claim, fresh_region=rebooted)
                        log.info("re-created claim files", uid=uid, rebooted=rebooted)
                    except (OSError, RuntimeError, ClaimConfigError, cdi.CdiError) as exc:
                        log.error("cannot re-create claim files", uid=uid, error=str(exc))
            sweep = True
            if corrupt:
                sweep = self._rebuild(claims, list_claims)
            if sweep:
                self.files.remove_strays(claims)
                # Under the lock, so an overlapping instance never loses the shim it is writing into specs.
                in_use = {self._shim.shim_path.parent.resolve()} | {
                    Path(c.shim_host_path).parent.resolve() for c in claims.values()}
                remove_unused_versions(self.settings.shim_dir, in_use)
            self._checkpoint = Checkpoint(boot_id=boot_id, claims=claims)
            self._store.save(self._checkpoint)
            self._checkpoint_identity = self._store.identity()
            with self._pods_lock:
                self._pods = {uid: c.pods for uid, c in claims.items()}
                self._pod_refs = {}

    def _rebuild(self, claims: dict[str, PreparedClaim],
                 list_claims: Callable[[], list[dict[str, Any]]] | None) -> bool:
        on_disk = self.files.prepared_uids_on_disk()
        if list_claims is None:
            return False
        try:
            listed = list_claims()
        except (ClaimReadError, OSError) as exc:
            log.error("cannot rebuild the checkpoint from the API; leaving claim files alone", error=str(exc))
            return False
        gpus, labels = self._gpus(), self._node_labels()
        nvidia_names = nvidia_gpu_device_names(self.settings.nvidia_cdi_dirs)
        for claim in listed:
            meta = claim.get("metadata") or {}
            uid = meta.get("uid", "")
            if uid not in on_disk:
                continue
            ref = ClaimRef(meta.get("namespace", ""), uid, meta.get("name", ""))
            try:
                planned = replace(self._plan_one(ref, claim, gpus, labels, nvidia_names), state="prepared")
                self._write_files(planned, fresh_region=False)
            except (ClaimRejected, ClaimConfigError, cdi.CdiError, OSError, RuntimeError) as exc:
                log.info("claim on disk is not prepared here any more", uid=uid, reason=str(exc))
                continue
            claims[uid] = planned
            log.info("rebuilt checkpoint entry from the API", claim=f"{ref.namespace}/{ref.name}", uid=uid)
        return True
