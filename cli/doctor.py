"""`vgpu-dra doctor`: preflight a node and the cluster; one verdict per check, with the fix.

    vgpu-dra doctor                   # on a GPU node, with a kubeconfig: everything
    vgpu-dra doctor --node-only       # no API access needed
    vgpu-dra doctor --cluster-only -o json

Cluster: the DRA API (resource.k8s.io/v1, Kubernetes ≥ 1.34); consumable capacity
(allowMultipleAllocations kept by the API server). Node: CDI enabled in the container runtime
(containerd or CRI-O config); the NVIDIA driver through NVML; the kubelet plugin registered (its
registration socket answers GetInfo); libvgpu.so installed at its versioned host path and
loadable (glibc); /etc/ld.so.preload not preloading the shim node-wide.

Exit status: 0 when no check failed (warnings allowed), 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from vgpu_dra.api.names import ALLOCATOR_LABEL, ALLOCATOR_SCHEDULER, DRIVER_NAME
from vgpu_dra.cli.hami_check import hami_verdict
from vgpu_dra.cli.status import root_cause
from vgpu_dra.controller.kubeapi import KubeApi
from vgpu_dra.driver import doctor_checks as checks
from vgpu_dra.driver.doctor_checks import Status, Verdict
from vgpu_dra.kubeletplugin.settings import DEFAULT_REGISTRAR_DIR, DEFAULT_STATE_DIR

DEFAULT_CONTAINERD_CONFIG = Path("/etc/containerd/config.toml")
DEFAULT_CRIO_CONFIG = Path("/etc/crio/crio.conf")
DEFAULT_LD_SO_PRELOAD = Path("/etc/ld.so.preload")
GRPC_TIMEOUT_S = 5.0
_MARKS = {Status.OK: "ok", Status.WARN: "WARN", Status.FAIL: "FAIL"}


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``doctor`` subcommand."""
    parser = subparsers.add_parser("doctor", help="preflight checks of a node and the cluster, each with its fix",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--node-only", action="store_true", help="only the checks of this node (no API access)")
    scope.add_argument("--cluster-only", action="store_true", help="only the checks against the API server")
    parser.add_argument("--kubeconfig", default=None,
                        help="kubeconfig file (default: in-cluster, else $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                        help=f"the kubelet plugin's state directory (default: {DEFAULT_STATE_DIR})")
    parser.add_argument("--registrar-dir", type=Path, default=DEFAULT_REGISTRAR_DIR,
                        help=f"the kubelet's plugin registration directory (default: {DEFAULT_REGISTRAR_DIR})")
    parser.add_argument("--containerd-config", type=Path, default=DEFAULT_CONTAINERD_CONFIG)
    parser.add_argument("--containerd-binary", default="containerd",
                        help="asked for its version when the config alone does not tell (default: containerd on PATH)")
    parser.add_argument("--crio-config", type=Path, default=DEFAULT_CRIO_CONFIG,
                        help="CRI-O's config file; its crio.conf.d/ drop-ins are read too")
    parser.add_argument("--ld-so-preload", type=Path, default=DEFAULT_LD_SO_PRELOAD)
    parser.add_argument("--host-root", type=Path, default=Path("/"),
                        help="where the host's / is mounted (e.g. /host in a pod): the runtime configs and "
                             "ld.so.preload above are read under it")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.set_defaults(handler=run)


def on_host(host_root: Path, path: Path) -> Path:
    """``path`` of the host as this process sees it when the host's / is at ``host_root``."""
    return host_root / path.relative_to(path.anchor) if path.is_absolute() else path


# --- cluster checks ---------------------------------------------------------------------------------

def _get_json(api_client: Any, path: str, *, method: str = "GET", body: Any = None,
              query: list[tuple[str, str]] | None = None) -> tuple[int, Any]:
    """(HTTP status, parsed body) of one request; status 0 when the server did not answer."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    method_, url, header_params, body_, post_params = api_client.param_serialize(
        method=method, resource_path=path, query_params=query or [], header_params=headers, body=body,
        auth_settings=["BearerToken"])
    try:
        response = api_client.call_api(method_, url, header_params=header_params, body=body_,
                                       post_params=post_params, _request_timeout=15)
    except Exception as exc:  # noqa: BLE001 - connection refused, TLS, timeout: no answer
        return 0, str(exc)
    data = response.read()
    try:
        return response.status, json.loads(data) if data else {}
    except ValueError:
        return response.status, data.decode(errors="replace")


def _probe_slice() -> dict[str, Any]:
    """A ResourceSlice that is only ever dry-run created: does the server keep the field?"""
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
            "metadata": {"name": "vgpu-dra-doctor-probe"},
            "spec": {"driver": DRIVER_NAME, "nodeName": "vgpu-dra-doctor-probe",
                     "pool": {"name": "vgpu-dra-doctor-probe", "generation": 1, "resourceSliceCount": 1},
                     "devices": [{"name": "probe", "allowMultipleAllocations": True,
                                  "capacity": {"memory": {"value": "1Gi"}}}]}}


def cluster_verdicts(api_client: Any) -> Iterator[Verdict]:
    """The checks that need only the API server."""
    status, version = _get_json(api_client, "/version")
    if status != 200:
        detail = f"HTTP {status}" if status else f"no answer ({root_cause(str(version))})"
        yield Verdict(checks.DRA_API, Status.FAIL, f"cannot read the API server's version: {detail}",
                      "check the kubeconfig (--kubeconfig) and that the API server is reachable from here")
        return
    status, group = _get_json(api_client, "/apis/resource.k8s.io")
    dra = checks.check_dra_api(version, group if status == 200 else None)
    yield dra
    if dra.status is Status.FAIL:
        return
    yield hami_verdict(KubeApi(api_client))
    _, slices = _get_json(api_client, "/apis/resource.k8s.io/v1/resourceslices")
    devices = [device for item in (slices.get("items") or [] if isinstance(slices, dict) else [])
               if (item.get("spec") or {}).get("driver") == DRIVER_NAME
               for device in (item.get("spec") or {}).get("devices") or []]
    _, classes = _get_json(api_client, "/apis/resource.k8s.io/v1/deviceclasses")
    scheduler_mode = any((item.get("metadata", {}).get("labels") or {}).get(ALLOCATOR_LABEL) == ALLOCATOR_SCHEDULER
                         for item in (classes.get("items") or [] if isinstance(classes, dict) else []))
    probe: dict[str, Any] | None = None
    probe_error: str | None = None
    if not devices:
        status, answer = _get_json(api_client, "/apis/resource.k8s.io/v1/resourceslices", method="POST",
                                   body=_probe_slice(), query=[("dryRun", "All")])
        if status in (200, 201):
            probe = answer
        else:
            probe_error = f"HTTP {status}: {answer.get('message') if isinstance(answer, dict) else answer}"
    yield checks.check_consumable_capacity(devices, probe, probe_error, scheduler_mode)


# --- node checks ------------------------------------------------------------------------------------

def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def containerd_version(binary: str) -> tuple[int, int] | None:
    """The version `containerd --version` reports, None when it is not here (e.g. in a pod)."""
    path = shutil.which(binary)
    if path is None:
        return None
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return checks.parse_containerd_version(proc.stdout)


def cdi_verdict(containerd_config: Path, crio_config: Path, containerd_binary: str = "containerd") -> Verdict:
    """Read the runtime configs (and containerd's version, when its binary is here) and judge them."""
    crio_dropins = sorted((crio_config.parent / "crio.conf.d").glob("*.conf")) if crio_config.parent.is_dir() else []
    crio_texts = [text for text in (_read_text(p) for p in [crio_config, *crio_dropins]) if text is not None]
    crio_present = crio_config.is_file() or bool(crio_dropins)
    try:
        containerd_text = _read_text(containerd_config)
    except OSError as exc:
        return Verdict(checks.CDI, Status.FAIL, f"cannot read {containerd_config}: {exc.strerror}",
                       "run doctor as root")
    version = containerd_version(containerd_binary) if containerd_text is not None else None
    return checks.check_cdi_runtime(containerd_text, str(containerd_config), crio_texts, crio_present,
                                    str(crio_config), version)


def nvml_verdict() -> Verdict:
    """List the GPUs through NVML, as the kubelet plugin does."""
    from vgpu_dra.driver.inventory import InventoryError, discover

    try:
        inventory = discover(socket.gethostname())
    except InventoryError as exc:
        return checks.check_nvidia_driver(None, None, str(exc))
    gpus = [(gpu.index, gpu.uuid, gpu.product_name) for gpu in inventory.gpus]
    return checks.check_nvidia_driver(gpus, inventory.gpus[0].driver_version if inventory.gpus else None, None)


def registration_verdict(registrar_dir: Path) -> Verdict:
    """Dial the plugin's registration socket as the kubelet's plugin watcher does."""
    import grpc

    from vgpu_dra.kubeletplugin.proto import pluginregistration_pb2 as pb
    from vgpu_dra.kubeletplugin.proto import pluginregistration_pb2_grpc as pb_grpc

    sockets = sorted(str(p) for p in registrar_dir.glob(f"{DRIVER_NAME}*-reg.sock"))
    if not sockets:
        return checks.check_plugin_registration([], None, None, False)
    try:
        with grpc.insecure_channel(f"unix://{sockets[0]}") as channel:
            answer = pb_grpc.RegistrationStub(channel).GetInfo(pb.InfoRequest(), timeout=GRPC_TIMEOUT_S)
    except grpc.RpcError as exc:
        detail = exc.details() if hasattr(exc, "details") else str(exc)
        return checks.check_plugin_registration(sockets, None, detail, False)
    info = {"type": answer.type, "name": answer.name, "endpoint": answer.endpoint,
            "supported_versions": list(answer.supported_versions)}
    return checks.check_plugin_registration(sockets, info, None, Path(answer.endpoint).exists())


def _load_error(library: Path) -> str | None:
    """dlopen the library in a fresh process (whatever it does at load time stays there)."""
    proc = subprocess.run([sys.executable, "-c", "import ctypes, sys; ctypes.CDLL(sys.argv[1])", str(library)],
                          capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode == 0:
        return None
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}"


def shim_verdict(state_dir: Path) -> Verdict:
    """The newest shim the plugin installed under STATE_DIR/shim/<version>/."""
    shim_dir = state_dir / "shim"
    installed = sorted((p for p in shim_dir.glob(f"*/{checks.SHIM_FILE_NAME}") if not p.parent.name.startswith(".")),
                       key=lambda p: p.stat().st_mtime_ns) if shim_dir.is_dir() else []
    if not installed:
        return checks.check_shim([], None, None, None, str(shim_dir))
    newest = installed[-1]
    try:
        library: bytes | None = newest.read_bytes()
    except OSError:
        library = None
    host = checks.parse_glibc_version(os.confstr("CS_GNU_LIBC_VERSION") or "")
    load_error = _load_error(newest) if library is not None else None
    return checks.check_shim([str(p) for p in installed], library, load_error, host, str(shim_dir))


def node_verdicts(args: argparse.Namespace) -> Iterator[Verdict]:
    """The checks of this node."""
    yield cdi_verdict(on_host(args.host_root, args.containerd_config), on_host(args.host_root, args.crio_config),
                      args.containerd_binary)
    preload_path = on_host(args.host_root, args.ld_so_preload)
    yield nvml_verdict()
    yield registration_verdict(args.registrar_dir)
    yield shim_verdict(args.state_dir)
    try:
        preload = _read_text(preload_path)
    except OSError as exc:
        yield Verdict(checks.PRELOAD, Status.WARN, f"cannot read {preload_path}: {exc.strerror}",
                      "run doctor as root")
    else:
        yield checks.check_ld_so_preload(preload, str(preload_path))


# --- output -----------------------------------------------------------------------------------------

def _print_verdict(verdict: Verdict, out: TextIO) -> None:
    out.write(f"{_MARKS[verdict.status]:<5} {verdict.check:<20} {verdict.message}\n")
    if verdict.fix:
        out.write(f"{'':<5} {'':<20} fix: {verdict.fix}\n")
    out.flush()


def _cluster(args: argparse.Namespace) -> Iterator[Verdict]:
    from vgpu_dra.cli.kube_client import ClusterConfigError, api_client

    try:
        client = api_client(args.kubeconfig, component="vgpu-dra-doctor")
    except ClusterConfigError as exc:
        yield Verdict(checks.DRA_API, Status.FAIL, f"no usable kubeconfig: {exc.reason}",
                      "pass --kubeconfig, set KUBECONFIG, or run with --node-only")
        return
    with client:
        yield from cluster_verdicts(client)


def run(args: argparse.Namespace, out: TextIO | None = None,
        node: Callable[[argparse.Namespace], Iterator[Verdict]] = node_verdicts) -> int:
    """Run the selected checks, print each as it ends; returns 0 (no failure) or 1."""
    out = out or sys.stdout
    verdicts: list[Verdict] = []
    sources: list[Iterator[Verdict]] = []
    if not args.node_only:
        sources.append(_cluster(args))
    if not args.cluster_only:
        sources.append(node(args))
    for source in sources:
        for verdict in source:
            verdicts.append(verdict)
            if args.output == "table":
                _print_verdict(verdict, out)
    status = checks.exit_status(verdicts)
    if args.output == "json":
        out.write(json.dumps({"checks": [{"check": v.check, "status": v.status.value, "message": v.message,
                                          "fix": v.fix} for v in verdicts],
                              "failed": sum(v.status is Status.FAIL for v in verdicts)}, indent=2) + "\n")
    else:
        counts = {s: sum(v.status is s for v in verdicts) for s in Status}
        out.write(f"\n{len(verdicts)} checks: {counts[Status.OK]} ok, {counts[Status.WARN]} warning(s), "
                  f"{counts[Status.FAIL]} failed\n")
    return status
