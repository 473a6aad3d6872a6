"""`vgpu-dra smi`: what the claims prepared on this node use right now, read from the shim's regions.

    vgpu-dra smi                  # one table: claim, pods, GPU, limit, used, peak, cap, throttling
    vgpu-dra smi --watch          # redraw every 2 s (--watch 0.5 for faster), Ctrl-C to stop
    vgpu-dra smi -o json          # for scripts (with --watch: one JSON document per line)

Runs on a node (or in the kubelet-plugin pod): the claims come from the plugin's checkpoint, the
usage from each claim's region, so it needs no API server and no GPU driver. Paths default to
the plugin's; --state-dir points elsewhere.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from vgpu_dra.api.quantity import humanize_bytes
from vgpu_dra.cli.table_format import format_table
from vgpu_dra.driver.cdi import REGION_FILE
from vgpu_dra.driver.checkpoint import CheckpointStore, CorruptCheckpoint, PreparedClaim
from vgpu_dra.driver.region import RegionError, RegionSnapshot, read_region
from vgpu_dra.kubeletplugin.settings import DEFAULT_STATE_DIR

EXIT_OK, EXIT_ERROR = 0, 1
DEFAULT_WATCH_SECONDS = 2.0
_CLEAR_SCREEN = "\x1b[H\x1b[2J"


class SmiError(Exception):
    """The node's state cannot be read; the message says where and why."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``smi`` subcommand."""
    parser = subparsers.add_parser("smi", help="per-claim GPU usage on this node (from the shim's regions)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                        help=f"the kubelet plugin's state directory (default: {DEFAULT_STATE_DIR})")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="the plugin's checkpoint (default: STATE_DIR/checkpoint.json)")
    parser.add_argument("--claims-dir", type=Path, default=None,
                        help="the claim directories (default: STATE_DIR/claims)")
    parser.add_argument("--watch", type=float, nargs="?", const=DEFAULT_WATCH_SECONDS, default=None,
                        metavar="SECONDS", help=f"redraw every SECONDS (default {DEFAULT_WATCH_SECONDS:g})")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.set_defaults(handler=run)


@dataclass(frozen=True)
class ClaimGpuUsage:
    """One row: a claim on one GPU, its limits from the checkpoint and its usage from the region."""

    namespace: str
    claim: str
    uid: str
    state: str
    pods: tuple[str, ...]
    device: str
    gpu_uuid: str
    memory_limit_bytes: int
    core_cap: int
    core_policy: str
    region_readable: bool
    memory_used_bytes: int
    memory_peak_bytes: int
    rejected_allocations: int
    measured_share_percent: float
    throttled_seconds: float
    live_processes: int


def usage_rows(claims: Mapping[str, PreparedClaim],
               snapshots: Mapping[str, RegionSnapshot | None]) -> list[ClaimGpuUsage]:
    """Join the checkpoint's claims with their regions: one row per claim and GPU, sorted."""
    rows = []
    for uid, claim in sorted(claims.items(), key=lambda item: (item[1].namespace, item[1].name, item[0])):
        snapshot = snapshots.get(uid)
        live = sum(1 for process in snapshot.processes if process.alive) if snapshot else 0
        for uuid in dict.fromkeys(device.gpu_uuid for device in claim.devices):
            mine = [device for device in claim.devices if device.gpu_uuid == uuid]
            usage = None
            if snapshot is not None:
                usage = next((gpu for gpu in snapshot.gpus if gpu.uuid == uuid), None)
            rows.append(ClaimGpuUsage(
                namespace=claim.namespace, claim=claim.name, uid=uid, state=claim.state, pods=claim.pods,
                device=mine[0].device, gpu_uuid=uuid,
                memory_limit_bytes=sum(device.memory_bytes for device in mine),
                core_cap=min(100, sum(device.cores for device in mine)), core_policy=mine[0].core_policy,
                region_readable=usage is not None,
                # Bytes still booked to kill -9'd processes are already freed by the driver.
                memory_used_bytes=usage.used_bytes - usage.dead_process_bytes if usage else 0,
                memory_peak_bytes=usage.peak_bytes if usage else 0,
                rejected_allocations=usage.rejected_allocations if usage else 0,
                measured_share_percent=usage.measured_share_percent if usage else 0.0,
                throttled_seconds=usage.throttled_seconds if usage else 0.0,
                live_processes=live))
    return rows


def read_node(checkpoint: Path, claims_dir: Path) -> list[ClaimGpuUsage]:
    """The rows of this node; SmiError when the checkpoint cannot be read."""
    try:
        stored = CheckpointStore(checkpoint).load()
    except PermissionError:
        raise SmiError(f"cannot read {checkpoint}: permission denied (run as root, or in the "
                       "kubelet-plugin pod)") from None
    except CorruptCheckpoint as exc:
        raise SmiError(f"{checkpoint} is corrupt ({exc}); the kubelet plugin rebuilds it from the API") from None
    except OSError as exc:
        raise SmiError(f"cannot read {checkpoint}: {exc.strerror}") from None
    if stored is None:
        if not checkpoint.parent.is_dir():
            raise SmiError(f"{checkpoint.parent} does not exist: is the vgpu-dra kubelet plugin running on this "
                           "node? (--state-dir names another place)")
        return []
    snapshots: dict[str, RegionSnapshot | None] = {}
    for uid in stored.claims:
        try:
            snapshots[uid] = read_region(claims_dir / uid / REGION_FILE)
        except (RegionError, OSError):
            snapshots[uid] = None  # shown as "-": prepared, but no readable region (yet)
    return usage_rows(stored.claims, snapshots)


def render_rows(rows: list[ClaimGpuUsage]) -> str:
    """The table shown on a terminal."""
    if not rows:
        return "No claims prepared on this node.\n"
    table = []
    for row in rows:
        known = row.region_readable
        cap = f"{row.core_cap} % {row.core_policy}" if row.core_cap else "none"
        table.append([
            f"{row.namespace}/{row.claim}" + ("" if row.state == "prepared" else f" ({row.state})"),
            ", ".join(row.pods) or "-", row.device, humanize_bytes(row.memory_limit_bytes),
            humanize_bytes(row.memory_used_bytes) if known else "-",
            humanize_bytes(row.memory_peak_bytes) if known else "-",
            str(row.rejected_allocations) if known else "-", cap,
            f"{row.measured_share_percent:.0f} %" if known else "-",
            f"{row.throttled_seconds:.1f} s" if known else "-",
            str(row.live_processes) if known else "-",
        ])
    return format_table(["CLAIM", "PODS", "GPU", "LIMIT", "USED", "PEAK", "REFUSED", "CORE CAP", "SM SHARE",
                         "THROTTLED", "PROCS"], table)


def rows_json(rows: list[ClaimGpuUsage]) -> dict[str, Any]:
    """The JSON document of ``-o json``."""
    return {"claims": [{
        "namespace": row.namespace, "claim": row.claim, "uid": row.uid, "state": row.state, "pods": list(row.pods),
        "device": row.device, "gpuUUID": row.gpu_uuid, "memoryLimitBytes": row.memory_limit_bytes,
        "coreCap": row.core_cap, "corePolicy": row.core_policy, "regionReadable": row.region_readable,
        "memoryUsedBytes": row.memory_used_bytes, "memoryPeakBytes": row.memory_peak_bytes,
        "rejectedAllocations": row.rejected_allocations, "measuredSharePercent": row.measured_share_percent,
        "throttledSeconds": row.throttled_seconds, "liveProcesses": row.live_processes,
    } for row in rows]}


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None,
        sleep: Callable[[float], None] = time.sleep) -> int:
    """Print once, or redraw until interrupted with --watch."""
    out = out or sys.stdout
    err = err or sys.stderr
    checkpoint = args.checkpoint or args.state_dir / "checkpoint.json"
    claims_dir = args.claims_dir or args.state_dir / "claims"
    if args.watch is not None and args.watch <= 0:
        print("vgpu-dra smi: error: --watch SECONDS must be more than 0", file=err)
        return EXIT_ERROR
    redraw = args.output == "table" and args.watch is not None and out.isatty()
    try:
        while True:
            rows = read_node(checkpoint, claims_dir)
            if args.output == "json":
                document = rows_json(rows)
                if args.watch is not None:
                    document["time"] = time.time()
                    out.write(json.dumps(document) + "\n")
                else:
                    out.write(json.dumps(document, indent=2) + "\n")
            else:
                if redraw:
                    out.write(_CLEAR_SCREEN + time.strftime("%H:%M:%S") + f"  every {args.watch:g} s\n\n")
                out.write(render_rows(rows))
            out.flush()
            if args.watch is None:
                return EXIT_OK
            if not redraw and args.output == "table":
                out.write("\n")
            sleep(args.watch)
    except SmiError as exc:
        print(f"vgpu-dra smi: error: {exc}", file=err)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK
