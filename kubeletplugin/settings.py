"""Every path and knob of the kubelet plugin, with the defaults of a real node.

Tests build a PluginSettings whose paths all sit in a temporary directory.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vgpu_dra.api.names import DRIVER_NAME

DEFAULT_REGISTRAR_DIR = Path("/var/lib/kubelet/plugins_registry")
DEFAULT_PLUGIN_DIR = Path("/var/lib/kubelet/plugins") / DRIVER_NAME
DEFAULT_CDI_DIR = Path("/var/run/cdi")
DEFAULT_NVIDIA_CDI_DIRS = (Path("/etc/cdi"), Path("/var/run/cdi"))
DEFAULT_STATE_DIR = Path("/var/lib/vgpu-dra")
DEFAULT_SHIM_SOURCE = Path("/usr/local/lib/vgpu-dra/libvgpu.so")
DEFAULT_BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
DEFAULT_DEV_DIR = Path("/dev")
SHIM_CONTAINER_PATH = "/usr/lib/vgpu-dra/libvgpu.so"
"""Where libvgpu.so appears inside containers; /etc/ld.so.preload names this path."""
DEFAULT_METRICS_PORT = 9471
# AF_UNIX paths are limited to 107 bytes plus the terminating NUL.
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class PluginSettings:
    """Configuration of one kubelet-plugin process."""

    node_name: str
    driver_name: str = DRIVER_NAME
    registrar_dir: Path = DEFAULT_REGISTRAR_DIR
    plugin_dir: Path = DEFAULT_PLUGIN_DIR
    cdi_dir: Path = DEFAULT_CDI_DIR
    nvidia_cdi_dirs: tuple[Path, ...] = DEFAULT_NVIDIA_CDI_DIRS
    state_dir: Path = DEFAULT_STATE_DIR
    shim_source: Path = DEFAULT_SHIM_SOURCE
    shim_container_path: str = SHIM_CONTAINER_PATH
    boot_id_path: Path = DEFAULT_BOOT_ID_PATH
    dev_dir: Path = DEFAULT_DEV_DIR
    """Where the GPU device nodes live on the host (paths written into CDI specs)."""
    pod_uid: str | None = None
    """Set during rolling updates so two plugin pods use different socket names."""
    metrics_address: str = "0.0.0.0"
    metrics_port: int | None = DEFAULT_METRICS_PORT
    """None disables the metrics endpoint; 0 picks a free port."""
    max_devices_per_slice: int = 128
    resync_seconds: float = 60.0
    """How often ResourceSlices and the pod names of prepared claims are refreshed."""
    api_timeout_seconds: float = 10.0
    watchdog_seconds: float = 5.0
    """How often the usage watchdog compares NVML's processes with the claims; 0 turns it off."""
    watchdog_enforcement: str = "report"
    """report: Events, metrics, logs; kill: also SIGKILL to the offending processes."""
    watchdog_tolerance_bytes: int = 64 << 20
    """Per process: what NVML may measure above the wall or the region (page rounding, context)."""
    watchdog_tolerance_percent: float = 5.0
    """Of the wall, added to the per-process tolerance."""
    proc_root: Path = Path("/proc")
    """The host's /proc (PIDs as NVML reports them); the plugin pod needs hostPID to see them."""
    health_quiet_seconds: float = 300.0
    """How long a GPU taint stays after the last signal that caused it (XID, ECC, lost, pages)."""
    health_poll_seconds: float = 5.0
    """How often the health loop polls each GPU (off the bus, pending pages, ECC counts)."""
    watch_health: bool = True
    """Run the NVML health loop (device taints); off only for tests without NVML."""
    write_claim_status: bool = True
    """Write the limits in force into prepared claims' status.devices."""

    @property
    def registration_socket(self) -> Path:
        """The socket the kubelet's plugin watcher discovers."""
        suffix = f"-{self.pod_uid}" if self.pod_uid else ""
        return self.registrar_dir / f"{self.driver_name}{suffix}-reg.sock"

    @property
    def dra_socket(self) -> Path:
        """The socket serving the DRA services (advertised as the registration endpoint)."""
        suffix = f"-{self.pod_uid}" if self.pod_uid else ""
        return self.plugin_dir / f"dra{suffix}.sock"

    @property
    def serialize_lock(self) -> Path:
        """Lock file that serializes Prepare/Unprepare across overlapping plugin instances."""
        return self.plugin_dir / "serialize.lock"

    @property
    def claims_dir(self) -> Path:
        """Host directory holding one state directory per prepared claim."""
        return self.state_dir / "claims"

    @property
    def shim_dir(self) -> Path:
        """Host directory holding immutable, versioned copies of libvgpu.so."""
        return self.state_dir / "shim"

    @property
    def checkpoint_path(self) -> Path:
        """The plugin's checkpoint of prepared claims."""
        return self.state_dir / "checkpoint.json"

    @property
    def taint_state_path(self) -> Path:
        """The GPU taints in force, kept across restarts (kubeletplugin/taint_store.py)."""
        return self.state_dir / "gpu-taints.json"

    def check(self) -> None:
        """Raise ValueError when a setting cannot work (e.g. a socket path too long for AF_UNIX)."""
        if not self.node_name:
            raise ValueError("node name is empty: pass --node-name or set NODE_NAME")
        for sock in (self.registration_socket, self.dra_socket):
            if len(str(sock).encode()) > MAX_SOCKET_PATH:
                raise ValueError(f"socket path {sock} is longer than {MAX_SOCKET_PATH} bytes (AF_UNIX limit)")
        if self.resync_seconds <= 0:
            raise ValueError(f"the resync period {self.resync_seconds:g} s must be positive seconds (--resync-seconds)")
        if self.health_quiet_seconds <= 0 or self.health_poll_seconds <= 0:
            raise ValueError("the health quiet period and poll interval must be positive seconds")
        if not 1 <= self.max_devices_per_slice <= 128:
            raise ValueError("max devices per slice must be 1..128")
        if self.watchdog_enforcement not in ("report", "kill"):
            raise ValueError(f"watchdog enforcement {self.watchdog_enforcement!r} is not report or kill")
        if self.watchdog_seconds < 0 or self.watchdog_tolerance_bytes < 0 or self.watchdog_tolerance_percent < 0:
            raise ValueError("watchdog interval and tolerances must not be negative (interval 0 turns it off)")
