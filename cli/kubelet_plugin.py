"""`vgpu-dra kubelet-plugin`: the node agent (run by the DaemonSet on every GPU node)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import structlog

from .kube_client import api_client
from .logging_setup import add_log_format_argument, configure_logging
from .stop_signals import run_until_stopped


def register(subparsers: Any) -> None:
    """Add the `kubelet-plugin` subcommand."""
    from vgpu_dra.kubeletplugin import settings as s

    parser = subparsers.add_parser(
        "kubelet-plugin", help="serve the kubelet's DRA plugin API on this node",
        description="Registers with the kubelet, prepares and unprepares fractional-GPU claims (CDI specs, "
                    "claim directories), publishes the node's GPUs as ResourceSlices and serves node metrics.")
    parser.add_argument("--node-name", default=os.environ.get("NODE_NAME", ""),
                        help="this node's name (default: $NODE_NAME)")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster config, then ~/.kube/config)")
    parser.add_argument("--registrar-dir", type=Path, default=s.DEFAULT_REGISTRAR_DIR,
                        help=f"kubelet plugin registration directory (default: {s.DEFAULT_REGISTRAR_DIR})")
    parser.add_argument("--plugin-dir", type=Path, default=s.DEFAULT_PLUGIN_DIR,
                        help=f"directory of the DRA socket and the serialization lock (default: {s.DEFAULT_PLUGIN_DIR})")
    parser.add_argument("--cdi-dir", type=Path, default=s.DEFAULT_CDI_DIR,
                        help=f"where claim CDI specs are written (default: {s.DEFAULT_CDI_DIR})")
    parser.add_argument("--nvidia-cdi-dir", type=Path, action="append", dest="nvidia_cdi_dirs",
                        help="directory searched for NVIDIA's generated CDI spec (repeatable; "
                             "default: /etc/cdi and /var/run/cdi)")
    parser.add_argument("--state-dir", type=Path, default=s.DEFAULT_STATE_DIR,
                        help=f"claim directories, installed shim, checkpoint (default: {s.DEFAULT_STATE_DIR})")
    parser.add_argument("--shim", type=Path, default=s.DEFAULT_SHIM_SOURCE,
                        help=f"libvgpu.so shipped in the image (default: {s.DEFAULT_SHIM_SOURCE})")
    parser.add_argument("--dev-dir", type=Path, default=s.DEFAULT_DEV_DIR,
                        help="host directory of the NVIDIA device nodes (default: /dev)")
    parser.add_argument("--boot-id-file", type=Path, default=s.DEFAULT_BOOT_ID_PATH,
                        help=f"boot ID source (default: {s.DEFAULT_BOOT_ID_PATH})")
    parser.add_argument("--pod-uid", default=os.environ.get("POD_UID") or None,
                        help="set during rolling updates so old and new plugin pods use distinct sockets")
    parser.add_argument("--metrics-address", default="0.0.0.0", help="address of /metrics (default: 0.0.0.0)")
    parser.add_argument("--metrics-port", type=int, default=s.DEFAULT_METRICS_PORT,
                        help=f"port of /metrics, -1 = off (default: {s.DEFAULT_METRICS_PORT})")
    parser.add_argument("--resync-seconds", type=float, default=60.0,
                        help="period of inventory and claim-pod refresh (default: 60)")
    parser.add_argument("--no-slices", action="store_true", help="do not publish ResourceSlices")
    parser.add_argument("--watchdog-seconds", type=float, default=5.0,
                        help="usage watchdog poll period, 0 = off (default: 5)")
    parser.add_argument("--watchdog-enforcement", choices=("report", "kill"), default="report",
                        help="report findings, or also SIGKILL the offending processes (default: report)")
    parser.add_argument("--watchdog-tolerance", default="64Mi",
                        help="per process: GPU memory NVML may measure above the wall or region (default: 64Mi)")
    parser.add_argument("--watchdog-tolerance-percent", type=float, default=5.0,
                        help="of the wall, added to the tolerance (default: 5)")
    parser.add_argument("--proc-root", type=Path, default=Path("/proc"),
                        help="the host's /proc, whose PIDs NVML reports (default: /proc)")
    parser.add_argument("--health-quiet-seconds", type=float, default=300.0,
                        help="a GPU's device taint is removed after this long without a new health signal "
                             "(default: 300)")
    parser.add_argument("--health-poll-seconds", type=float, default=5.0,
                        help="how often each GPU's health is polled besides NVML events (default: 5)")
    add_log_format_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the plugin until SIGTERM/SIGINT."""
    from vgpu_dra.api.quantity import parse_bytes
    from vgpu_dra.driver.inventory import InventoryError
    from vgpu_dra.kubeletplugin.plugin import KubeletPlugin
    from vgpu_dra.kubeletplugin.settings import DEFAULT_NVIDIA_CDI_DIRS, PluginSettings

    configure_logging(args.log_format)
    log = structlog.get_logger("vgpu_dra.kubeletplugin")
    try:
        settings = PluginSettings(
            node_name=args.node_name, registrar_dir=args.registrar_dir, plugin_dir=args.plugin_dir,
            cdi_dir=args.cdi_dir, nvidia_cdi_dirs=tuple(args.nvidia_cdi_dirs or DEFAULT_NVIDIA_CDI_DIRS),
            state_dir=args.state_dir, shim_source=args.shim, dev_dir=args.dev_dir, boot_id_path=args.boot_id_file,
            pod_uid=args.pod_uid, metrics_address=args.metrics_address,
            metrics_port=None if args.metrics_port < 0 else args.metrics_port, resync_seconds=args.resync_seconds,
            watchdog_seconds=args.watchdog_seconds, watchdog_enforcement=args.watchdog_enforcement,
            watchdog_tolerance_bytes=parse_bytes(args.watchdog_tolerance),
            watchdog_tolerance_percent=args.watchdog_tolerance_percent, proc_root=args.proc_root,
            health_quiet_seconds=args.health_quiet_seconds, health_poll_seconds=args.health_poll_seconds)
        plugin = KubeletPlugin(settings, api_client(args.kubeconfig, component="vgpu-dra-kubelet-plugin"),
                               publish_slices=not args.no_slices)
    except ValueError as exc:  # a flag or the cluster configuration: the message names it and the fix
        log.error("kubelet plugin cannot start", error=str(exc))
        return 2
    try:
        run_until_stopped(plugin.run, "kubelet-plugin")
        return 0
    except InventoryError as exc:  # no driver or no NVML on the node: the message says what to check
        log.error("kubelet plugin failed", error=str(exc))
        return 1
    except Exception as exc:  # noqa: BLE001 - unexpected: the traceback is for us, then a non-zero exit
        log.error("kubelet plugin failed", error=str(exc), exc_info=True)
        return 1
