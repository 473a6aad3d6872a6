"""The verdicts of `vgpu-dra doctor`: each check takes what was observed and says ok, warn or fail,
why, and what to do. Pure: the command gathers the data (API, files, NVML, sockets) and hands it
here, so every verdict is testable with plain data.
"""
from __future__ import annotations

import re
import struct
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from vgpu_dra.api.names import DRIVER_NAME

MIN_KUBERNETES = (1, 34)
"""DRA's resource.k8s.io/v1 API is served from Kubernetes 1.34 on."""
MIN_SHIM_GLIBC = (2, 17)
_SHT_GNU_VERNEED = 0x6FFFFFFE
SHIM_FILE_NAME = "libvgpu.so"


class Status(str, Enum):
    """How a check ended; ``fail`` makes doctor exit 1."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Verdict:
    """One check's answer: a short name, the outcome, what was found, and the fix (if any)."""

    check: str
    status: Status
    message: str
    fix: str = ""


def _ok(check: str, message: str) -> Verdict:
    return Verdict(check, Status.OK, message)


def _warn(check: str, message: str, fix: str) -> Verdict:
    return Verdict(check, Status.WARN, message, fix)


def _fail(check: str, message: str, fix: str) -> Verdict:
    return Verdict(check, Status.FAIL, message, fix)


# --- cluster ----------------------------------------------------------------------------------------

DRA_API = "dra-api"
CONSUMABLE_CAPACITY = "consumable-capacity"


def parse_server_version(version: Mapping[str, Any]) -> tuple[int, int] | None:
    """(major, minor) of a /version document; providers write minors like ``"34+"``."""
    try:
        major = int(re.sub(r"\D", "", str(version.get("major", ""))))
        minor = int(re.sub(r"\D", "", str(version.get("minor", ""))))
        return major, minor
    except ValueError:
        match = re.match(r"v?(\d+)\.(\d+)", str(version.get("gitVersion", "")))
        return (int(match[1]), int(match[2])) if match else None


def check_dra_api(version: Mapping[str, Any], resource_group: Mapping[str, Any] | None) -> Verdict:
    """The server is ≥ 1.34 and serves resource.k8s.io/v1 (``resource_group``: the /apis/resource.k8s.io
    discovery document, None when the group is not served at all)."""
    parsed = parse_server_version(version)
    shown = version.get("gitVersion") or (f"{parsed[0]}.{parsed[1]}" if parsed else "unknown")
    served = [entry.get("version") for entry in (resource_group or {}).get("versions") or []]
    upgrade = "upgrade the control plane to Kubernetes 1.34 or newer (DRA is GA and on by default there)"
    if parsed is None:
        return _fail(DRA_API, f"the API server's version ({shown}) cannot be read", upgrade)
    if parsed < MIN_KUBERNETES:
        return _fail(DRA_API, f"Kubernetes {shown} is older than 1.34", upgrade)
    if "v1" not in served:
        listed = ", ".join(str(v) for v in served) or "none"
        return _fail(DRA_API, f"Kubernetes {shown} does not serve resource.k8s.io/v1 (served: {listed})",
                     "enable the resource.k8s.io/v1 API (--runtime-config) and the DynamicResourceAllocation feature")
    return _ok(DRA_API, f"Kubernetes {shown} serves resource.k8s.io/v1")


def check_consumable_capacity(published_devices: Sequence[Mapping[str, Any]], probe: Mapping[str, Any] | None,
                              probe_error: str | None, scheduler_mode: bool) -> Verdict:
    """Whether the server keeps ``allowMultipleAllocations`` (DRAConsumableCapacity).

    Judged from our published devices when there are any (the plugin asked for the field on each),
    else from a dry-run create of a probe slice (``probe``: the object the server answered).
    Without it, shares still work through VgpuConfig in controller mode; scheduler mode needs it.
    """
    kind = _fail if scheduler_mode else _warn
    fix = ("enable the DRAConsumableCapacity feature gate on kube-apiserver, kube-scheduler and kube-controller-"
           "manager (beta, on by default from 1.36)")
    without = ("the API server drops allowMultipleAllocations (DRAConsumableCapacity off): "
               + ("kube-scheduler cannot give out GPU shares (allocator: scheduler)" if scheduler_mode else
                  "capacity requests in claims are ignored; sizes from VgpuConfig still work (allocator: controller)"))
    if published_devices:
        if any(device.get("allowMultipleAllocations") for device in published_devices):
            return _ok(CONSUMABLE_CAPACITY, "published GPUs allow multiple allocations (consumable capacity on)")
        return kind(CONSUMABLE_CAPACITY, without, fix)
    if probe is not None:
        devices = (probe.get("spec") or {}).get("devices") or []
        if devices and devices[0].get("allowMultipleAllocations"):
            return _ok(CONSUMABLE_CAPACITY, "the API server keeps allowMultipleAllocations (dry-run create)")
        return kind(CONSUMABLE_CAPACITY, without, fix)
    return _warn(CONSUMABLE_CAPACITY, f"cannot tell: no GPU published yet and the dry-run probe failed ({probe_error})",
                 "run doctor again once a node publishes its GPUs, or with a user allowed to create ResourceSlices")


HAMI_PODS = "hami-pods"
_HAMI_ONLY = ("nvidia.com/gpumem", "nvidia.com/gpumem-percentage", "nvidia.com/gpucores")


def asks_for_hami(pod: Mapping[str, Any]) -> bool:
    """The pod names a resource only HAMi serves, or HAMi's scheduler."""
    spec = pod.get("spec") or {}
    if spec.get("schedulerName") == "hami-scheduler":
        return True
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        resources = container.get("resources") or {}
        if any(name in (resources.get(section) or {}) for section in ("limits", "requests") for name in _HAMI_ONLY):
            return True
    return False


def check_hami_pods(pending_pods: Sequence[Mapping[str, Any]], webhook_installed: bool) -> Verdict:
    """Pending pods still written for HAMi: without vgpu-dra's HAMi webhook nothing serves their
    ``nvidia.com/gpumem``/``gpucores``, and with it only pods created afterwards are translated."""
    waiting = sorted(f"{(p.get('metadata') or {}).get('namespace', '')}/{(p.get('metadata') or {}).get('name', '')}"
                     for p in pending_pods if asks_for_hami(p))
    if not waiting:
        return _ok(HAMI_PODS, "no pending pod asks for HAMi resources (nvidia.com/gpumem, gpumem-percentage, "
                              "gpucores) or hami-scheduler")
    shown = ", ".join(waiting[:3]) + (f" and {len(waiting) - 3} more" if len(waiting) > 3 else "")
    if webhook_installed:
        return _warn(HAMI_PODS, f"{len(waiting)} pending pod(s) still ask for HAMi resources ({shown}) although the "
                                "HAMi webhook is installed: they were created before it",
                     "recreate them (kubectl rollout restart of their Deployment, or delete the pod) so the webhook "
                     "translates them at admission")
    return _warn(HAMI_PODS, f"{len(waiting)} pending pod(s) ask for HAMi resources that nothing here serves ({shown})",
                 "install vgpu-dra with --set hamiWebhook.enabled=true and recreate them, or translate their "
                 "manifests once with `vgpu-dra migrate` (docs/migrate-hami.md)")


# --- node -------------------------------------------------------------------------------------------

CDI = "cdi-runtime"
NVML = "nvidia-driver"
PLUGIN = "plugin-registered"
SHIM = "shim-installed"
PRELOAD = "ld-so-preload"
CDI_SPEC_DIR = "/var/run/cdi"


def _find_key(tree: Any, key: str) -> list[Any]:
    """Every value of ``key`` anywhere in a parsed TOML tree."""
    found = []
    if isinstance(tree, Mapping):
        for name, value in tree.items():
            if name == key:
                found.append(value)
            found.extend(_find_key(value, key))
    return found


def parse_containerd_version(text: str) -> tuple[int, int] | None:
    """``containerd github.com/containerd/containerd/v2 v2.0.2 <commit>`` → (2, 0)."""
    match = re.search(r"\sv?(\d+)\.(\d+)\.\d+", text or "")
    return (int(match[1]), int(match[2])) if match else None


def check_cdi_runtime(containerd_config: str | None, containerd_path: str, crio_configs: Sequence[str],
                      crio_present: bool, crio_path: str,
                      containerd_version: tuple[int, int] | None = None) -> Verdict:
    """CDI enabled in the container runtime: containerd (config text, None when absent; its version
    when the binary answered) or CRI-O."""
    if containerd_config is not None:
        try:
            tree = tomllib.loads(containerd_config)
        except tomllib.TOMLDecodeError as exc:
            return _fail(CDI, f"{containerd_path} is not valid TOML ({exc})", f"fix the syntax of {containerd_path}")
        enabled = _find_key(tree, "enable_cdi")
        spec_dirs = [d for dirs in _find_key(tree, "cdi_spec_dirs") if isinstance(dirs, list) for d in dirs]
        version = tree.get("version", 1)
        if False in enabled:
            return _fail(CDI, f"{containerd_path} sets enable_cdi = false",
                         f"set enable_cdi = true in the CRI plugin section of {containerd_path}, restart containerd")
        if spec_dirs and not any(d.rstrip("/") in (CDI_SPEC_DIR, "/run/cdi") for d in spec_dirs):
            return _fail(CDI, f"containerd reads CDI specs only from {', '.join(spec_dirs)}, not {CDI_SPEC_DIR}",
                         f"add {CDI_SPEC_DIR} to cdi_spec_dirs in {containerd_path}, restart containerd")
        if True in enabled:
            return _ok(CDI, f"containerd: enable_cdi = true in {containerd_path}")
        if isinstance(version, int) and version >= 3:
            return _ok(CDI, f"containerd 2.x config (version {version}): CDI is on by default")
        if containerd_version is not None and containerd_version >= (2, 0):
            shown = f"{containerd_version[0]}.{containerd_version[1]}"
            return _ok(CDI, f"containerd {shown}: CDI is on by default (config version {version} is migrated)")
        running = (f"containerd {containerd_version[0]}.{containerd_version[1]}" if containerd_version
                   else "containerd 1.x, as far as this config tells")
        return _fail(CDI, f"{containerd_path} (config version {version}, {running}) does not enable CDI",
                     "set enable_cdi = true under [plugins.\"io.containerd.grpc.v1.cri\"] (or upgrade to containerd "
                     "≥ 2.0, where CDI is on by default), then restart containerd")
    if crio_present:
        for text in crio_configs:
            try:
                tree = tomllib.loads(text)
            except tomllib.TOMLDecodeError:
                continue
            dirs = [d for found in _find_key(tree, "cdi_spec_dirs") if isinstance(found, list) for d in found]
            if dirs and not any(d.rstrip("/") in (CDI_SPEC_DIR, "/run/cdi") for d in dirs):
                return _fail(CDI, f"CRI-O reads CDI specs only from {', '.join(dirs)}, not {CDI_SPEC_DIR}",
                             f"add {CDI_SPEC_DIR} to cdi_spec_dirs in {crio_path}, restart CRI-O")
        return _ok(CDI, "CRI-O: CDI is on by default")
    return _warn(CDI, f"no containerd config at {containerd_path} and no CRI-O config at {crio_path}",
                 "point doctor at your runtime's config (--containerd-config / --crio-config); the runtime must be "
                 "containerd ≥ 2.0 (or 1.7 with enable_cdi = true) or CRI-O")


def check_nvidia_driver(gpus: Sequence[tuple[int, str, str]] | None, driver_version: str | None,
                        error: str | None) -> Verdict:
    """NVML answered (``gpus``: (index, uuid, product) each) or failed with ``error``."""
    if gpus is None:
        return _fail(NVML, error or "NVML did not answer",
                     "install the NVIDIA driver, check `nvidia-smi`, and run doctor where libnvidia-ml.so.1 is visible")
    listed = ", ".join(f"{index}: {product}" for index, _, product in gpus)
    return _ok(NVML, f"driver {driver_version}, {len(gpus)} GPU(s) ({listed})")


def check_plugin_registration(socket_paths: Sequence[str], info: Mapping[str, Any] | None, error: str | None,
                              endpoint_exists: bool) -> Verdict:
    """The plugin's registration socket exists and answers GetInfo as this driver."""
    start = ("check the kubelet-plugin DaemonSet's pod on this node (kubectl -n <namespace> get pods -o wide, "
             "its logs), and that the host path /var/lib/kubelet/plugins_registry is mounted")
    if not socket_paths:
        return _fail(PLUGIN, f"no registration socket of {DRIVER_NAME}: the kubelet plugin is not running here", start)
    if info is None:
        return _fail(PLUGIN, f"{socket_paths[0]} does not answer GetInfo ({error})", start)
    if info.get("name") != DRIVER_NAME or info.get("type") != "DRAPlugin":
        return _fail(PLUGIN, f"{socket_paths[0]} answers as {info.get('type')} {info.get('name')!r}, "
                             f"not DRAPlugin {DRIVER_NAME!r}", "remove the stale socket and restart the kubelet plugin")
    if not endpoint_exists:
        return _fail(PLUGIN, f"registered, but its DRA endpoint {info.get('endpoint')} does not exist", start)
    versions = ", ".join(info.get("supported_versions") or [])
    return _ok(PLUGIN, f"answers GetInfo; DRA endpoint {info.get('endpoint')} ({versions})")


class ElfError(ValueError):
    """Not a 64-bit little-endian ELF file with readable section headers."""


def glibc_versions_needed(library: bytes) -> list[tuple[int, ...]]:
    """The GLIBC_x.y[.z] versions an ELF64 library requires (its ``.gnu.version_r``), lowest first.

    Read from the version-needs table, not by scanning strings: the shim names newer versions
    in string literals (to look up ``dlsym`` by version) without requiring them.
    """
    if library[:4] != b"\x7fELF" or library[4] != 2 or library[5] != 1:
        raise ElfError("not a 64-bit little-endian ELF file")
    try:
        shoff, = struct.unpack_from("<Q", library, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", library, 0x3A)
        sections = [struct.unpack_from("<IIQQQQIIQQ", library, shoff + i * shentsize) for i in range(shnum)]
        needed: set[tuple[int, ...]] = set()
        for _name, kind, _flags, _addr, offset, _size, link, info, _align, _entsize in sections:
            if kind != _SHT_GNU_VERNEED:
                continue
            strtab = sections[link][4]
            entry = offset
            for _ in range(info):
                _version, count, _file, aux, following = struct.unpack_from("<HHIII", library, entry)
                at = entry + aux
                for _ in range(count):
                    _hash, _vflags, _other, name, next_aux = struct.unpack_from("<IHHII", library, at)
                    text = library[strtab + name: library.index(b"\0", strtab + name)].decode("ascii", "replace")
                    if text.startswith("GLIBC_") and re.fullmatch(r"GLIBC_\d+(\.\d+)+", text):
                        needed.add(tuple(int(part) for part in text[6:].split(".")))
                    at += next_aux
                    if not next_aux:
                        break
                entry += following
                if not following:
                    break
    except (struct.error, IndexError, ValueError) as exc:
        raise ElfError(f"malformed ELF file ({exc})") from None
    return sorted(needed)


def parse_glibc_version(text: str) -> tuple[int, int] | None:
    """``"glibc 2.36"`` (os.confstr CS_GNU_LIBC_VERSION) → (2, 36)."""
    match = re.search(r"(\d+)\.(\d+)", text or "")
    return (int(match[1]), int(match[2])) if match else None


def check_shim(installed: Sequence[str], library: bytes | None, load_error: str | None,
               host_glibc: tuple[int, int] | None, shim_dir: str) -> Verdict:
    """The plugin installed libvgpu.so in its versioned host directory, and it loads."""
    if not installed:
        return _fail(SHIM, f"no {SHIM_FILE_NAME} installed under {shim_dir}/<version>/",
                     "start the kubelet plugin (its init step installs the shim), or check its --state-dir")
    newest = installed[-1]
    if library is None:
        return _fail(SHIM, f"{newest} cannot be read", f"check the permissions of {shim_dir}")
    try:
        needed = glibc_versions_needed(library)
    except ElfError as exc:
        return _fail(SHIM, f"{newest} is not a shared library: {exc}",
                     "reinstall the kubelet plugin (its init step copies the shim again)")
    top = needed[-1] if needed else None
    if top and top > MIN_SHIM_GLIBC:
        shown = ".".join(str(part) for part in top)
        return _fail(SHIM, f"{newest} needs GLIBC_{shown}; containers with an older glibc cannot load it",
                     "install the release build of the shim (built against glibc 2.17), not a local build")
    if load_error:
        return _fail(SHIM, f"{newest} does not load: {load_error}",
                     "reinstall the kubelet plugin image matching this node's architecture")
    glibc = f"glibc {host_glibc[0]}.{host_glibc[1]}" if host_glibc else "this glibc"
    return _ok(SHIM, f"{newest} loads with {glibc} (needs ≤ GLIBC_{MIN_SHIM_GLIBC[0]}.{MIN_SHIM_GLIBC[1]})")


def check_ld_so_preload(content: str | None, path: str) -> Verdict:
    """A host-wide preload of the shim puts every process of the node under it: a misconfiguration
    (the shim belongs in containers, through the CDI spec's own ld.so.preload)."""
    if content is None:
        return _ok(PRELOAD, f"no {path} on the host")
    entries = [word for line in content.splitlines() if not line.lstrip().startswith("#") for word in line.split()]
    ours = [entry for entry in entries if SHIM_FILE_NAME in entry.rsplit("/", 1)[-1]]
    if ours:
        return _warn(PRELOAD, f"{path} preloads {', '.join(ours)} into every process on this node",
                     f"remove {', '.join(ours)} from {path}: vgpu-dra mounts its own ld.so.preload into the "
                     "containers of a claim only")
    if entries:
        return _ok(PRELOAD, f"{path} preloads {', '.join(entries)} (not libvgpu.so)")
    return _ok(PRELOAD, f"{path} is empty")


def exit_status(verdicts: Iterable[Verdict]) -> int:
    """0 when nothing failed (warnings included), 1 otherwise."""
    return 1 if any(v.status is Status.FAIL for v in verdicts) else 0
