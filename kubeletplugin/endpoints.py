"""The plugin's two unix-socket gRPC servers: DRA (with gRPC health) first, then registration.

Order matters: the kubelet dials the DRA endpoint as soon as it sees the registration socket, so
the DRA socket must already answer. Stale sockets (from a crashed predecessor) are removed before
binding, and both sockets are removed on stop so the kubelet notices the plugin is gone.
"""
from __future__ import annotations

import socket
import stat
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from vgpu_dra.kubeletplugin.dra_service import ClaimPreparer, DraV1beta1Service, DraV1Service
from vgpu_dra.kubeletplugin.health_service import HEALTH_VERSION, DraHealthService, HealthSource
from vgpu_dra.kubeletplugin.proto import dra_health_v1alpha1_pb2_grpc
from vgpu_dra.kubeletplugin.proto import dra_v1_pb2, dra_v1_pb2_grpc, dra_v1beta1_pb2, dra_v1beta1_pb2_grpc
from vgpu_dra.kubeletplugin.proto import pluginregistration_pb2_grpc
from vgpu_dra.kubeletplugin.registration import RegistrationService
from vgpu_dra.kubeletplugin.settings import PluginSettings

log = structlog.get_logger(__name__)

DRA_SERVICE_NAMES = (
    dra_v1_pb2.DESCRIPTOR.services_by_name["DRAPlugin"].full_name,
    dra_v1beta1_pb2.DESCRIPTOR.services_by_name["DRAPlugin"].full_name,
)


def remove_stale_socket(path: Path) -> None:
    """Remove a leftover socket at `path`; refuse to delete anything that is not a socket."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise RuntimeError(f"{path} exists and is not a socket; refusing to replace it")
    path.unlink(missing_ok=True)
    log.info("removed stale socket", path=str(path))


def _has_listener(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
        return True
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True  # unsure (e.g. timeout): leave it alone
    finally:
        probe.close()


def remove_abandoned_sockets(directory: Path, pattern: str) -> list[Path]:
    """Remove sockets matching `pattern` that nothing listens on any more.

    With per-pod socket names (rolling updates), a plugin pod killed without cleanup (kill -9,
    node reboot) leaves sockets under names no later pod reuses; the kubelet would keep dialling
    them. A socket whose connect() is refused has no listener and is safe to delete.
    """
    removed = []
    if not directory.is_dir():
        return removed
    for path in directory.glob(pattern):
        try:
            if stat.S_ISSOCK(path.lstat().st_mode) and not _has_listener(path):
                path.unlink(missing_ok=True)
                removed.append(path)
        except OSError:
            continue
    if removed:
        log.info("removed abandoned sockets", sockets=[str(p) for p in removed])
    return removed


def _serve_unix(path: Path, server: grpc.Server) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_socket(path)
    if server.add_insecure_port(f"unix://{path}") == 0:
        raise RuntimeError(f"cannot listen on unix socket {path}")


class PluginEndpoints:
    """Owns the DRA and registration servers of one plugin process."""

    def __init__(self, settings: PluginSettings, preparer: ClaimPreparer, *, max_workers: int = 8,
                 on_registered: Callable[[], None] | None = None, health_source: HealthSource | None = None):
        """``health_source``: the GPU health loop; with it the DRAResourceHealth stream is served and
        advertised."""
        self.settings = settings
        self.registration = RegistrationService(settings.driver_name, str(settings.dra_socket), on_registered,
                                                extra_versions=(HEALTH_VERSION,) if health_source else ())
        self.health = health.HealthServicer()
        self._dra = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="dra"))
        dra_v1_pb2_grpc.add_DRAPluginServicer_to_server(DraV1Service(preparer), self._dra)
        dra_v1beta1_pb2_grpc.add_DRAPluginServicer_to_server(DraV1beta1Service(preparer), self._dra)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._dra)
        if health_source is not None:
            dra_health_v1alpha1_pb2_grpc.add_DRAResourceHealthServicer_to_server(
                DraHealthService(health_source, settings.node_name), self._dra)
        self._reg = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="registration"))
        pluginregistration_pb2_grpc.add_RegistrationServicer_to_server(self.registration, self._reg)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._reg)
        self._started = False

    def start(self) -> None:
        """Serve DRA, then registration."""
        remove_abandoned_sockets(self.settings.plugin_dir, "dra*.sock")
        remove_abandoned_sockets(self.settings.registrar_dir, f"{self.settings.driver_name}*-reg.sock")
        _serve_unix(self.settings.dra_socket, self._dra)
        self._dra.start()
        for name in ("", *DRA_SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving DRA", socket=str(self.settings.dra_socket))
        _serve_unix(self.settings.registration_socket, self._reg)
        self._reg.start()
        self._started = True
        log.info("serving registration", socket=str(self.settings.registration_socket))

    def stop(self, grace: float = 5.0) -> None:
        """Stop both servers (registration first) and remove their sockets."""
        self.health.enter_graceful_shutdown()
        self._reg.stop(grace).wait()
        self._dra.stop(grace).wait()
        for path in (self.settings.registration_socket, self.settings.dra_socket):
            try:
                remove_stale_socket(path)
            except (OSError, RuntimeError) as exc:
                log.warning("could not remove socket", path=str(path), error=str(exc))
        self._started = False
        log.info("sockets closed")

