"""`vgpu-dra plan`: where would these workloads land, and what would not fit? No cluster needed.

    vgpu-dra plan                                  # the seed's two workers on the built-in RTX 3080
    vgpu-dra plan my-app/ --inventory nodes/       # your manifests on your nodes
    vgpu-dra plan my-app/ -o json --node-policy spread

Exit status: 0 when every pod fits, 1 when some pod is refused (the reasons are printed), 2 on
bad input (the message names the file and the object).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from vgpu_dra.api.quantity import format_bytes, humanize_bytes
from vgpu_dra.cli.table_format import format_table
from vgpu_dra.driver.inventory import InventoryError, NodeInventory
from vgpu_dra.driver.inventory_file import load_inventories, parse_inventory
from vgpu_dra.driver.manifests import MANIFEST_SUFFIXES, ManifestError, Manifests, load_manifests, path_problem
from vgpu_dra.driver.placement_policy import PlacementPolicy, Policy
from vgpu_dra.driver.planner import Plan, PlanInputError, plan

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples"
BUILTIN_INVENTORY = EXAMPLES / "inventory" / "rtx3080.yaml"
BUILTIN_DEVICE_CLASSES = EXAMPLES / "deviceclasses"
# Without PATHs: the seed's two workers. The other examples (multi-GPU, sized classes, the sharing
# demo …) are scenarios of their own that together would not fit the one built-in GPU.
DEMO_PATHS = (EXAMPLES / "claims", EXAMPLES / "workloads")

EXIT_FITS, EXIT_REFUSED, EXIT_BAD_INPUT = 0, 1, 2


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``plan`` subcommand."""
    parser = subparsers.add_parser(
        "plan", help="plan workloads on GPU inventories without a cluster",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, metavar="PATH",
                        help="Kubernetes YAML files or folders: DeviceClasses, ResourceClaimTemplates, "
                             "ResourceClaims, Pods, Deployments, StatefulSets, Jobs (default: examples/claims and "
                             "examples/workloads, the seed's two workers)")
    parser.add_argument("--inventory", action="append", type=Path, metavar="FILE",
                        help="a NodeInventory file, or a folder of them (repeatable; default: NodeInventory "
                             "documents among PATHs, else the built-in RTX 3080 node)")
    policies = [policy.value for policy in Policy]
    parser.add_argument("--node-policy", choices=policies, default=Policy.BINPACK.value,
                        help="which node first among those that fit (default: binpack)")
    parser.add_argument("--gpu-policy", choices=policies, default=Policy.BINPACK.value,
                        help="which GPU first among those that fit (default: binpack)")
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Plan and print; returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    if not args.paths and not EXAMPLES.is_dir():
        print(f"vgpu-dra plan: error: no PATH given and the built-in examples are not here ({EXAMPLES}); "
              "run it from a source checkout or name your manifests", file=err)
        return EXIT_BAD_INPUT
    try:
        manifests = load_manifests(args.paths or list(DEMO_PATHS))
        inventories = _inventories(args.inventory, manifests)
        default_classes = _builtin_classes()
        result = plan(manifests, inventories, PlacementPolicy.parse(args.node_policy, args.gpu_policy),
                      default_classes=default_classes)
    except (ManifestError, PlanInputError, InventoryError) as exc:
        print(f"vgpu-dra plan: error: {exc}", file=err)
        return EXIT_BAD_INPUT
    if args.output == "json":
        json.dump(plan_json(result), out, indent=2)
        out.write("\n")
    else:
        out.write(render_table(result, inventories))
    return EXIT_REFUSED if result.refused else EXIT_FITS


def _inventories(given: Sequence[Path] | None, manifests: Manifests) -> list[NodeInventory]:
    if given:
        nodes: list[NodeInventory] = []
        for path in given:
            problem = path_problem(path)
            if problem == "no such file or folder":
                raise InventoryError(f"{path}: no such inventory file or folder")
            if problem is not None:
                raise InventoryError(f"{path}: {problem} (--inventory takes a NodeInventory file or a folder of them)")
            if path.is_dir():
                files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in MANIFEST_SUFFIXES)
                if not files:
                    raise InventoryError(f"{path}: no inventory files (*.yaml, *.yml, *.json) in the folder")
            else:
                files = [path]
            for file in files:
                nodes.extend(load_inventories(file))
        return nodes
    if manifests.inventories:
        return [parse_inventory(document, source=str(source)) for document, source in manifests.inventories]
    return load_inventories(BUILTIN_INVENTORY)


def _builtin_classes() -> list[dict[str, Any]]:
    """The example DeviceClasses, used for claims naming a class the given files do not define."""
    if not BUILTIN_DEVICE_CLASSES.is_dir():
        return []
    return [record.raw for record in load_manifests([BUILTIN_DEVICE_CLASSES]).device_classes]


# --- output ------------------------------------------------------------------------------------

def plan_json(result: Plan) -> dict[str, Any]:
    """The plan as JSON-ready data (``--output json``)."""
    return {
        "policy": {"node": result.policy.node.value, "gpu": result.policy.gpu.value},
        "placed": sum(1 for pod in result.pods if pod.placed),
        "refused": len(result.refused),
        "gpus": [{
            "node": gpu.node, "device": gpu.device, "uuid": gpu.uuid, "product": gpu.product,
            "memory": {"capacityBytes": gpu.memory_bytes, "usedBytes": gpu.memory_used_bytes,
                       "freeBytes": gpu.memory_free_bytes},
            "cores": {"capacity": gpu.cores, "used": gpu.cores_used, "free": gpu.cores_free},
            "shares": [{"claim": share.claim, "request": share.request, "memoryBytes": share.memory_bytes,
                        "cores": share.cores, "pods": list(share.pods), "workloads": list(share.workloads)}
                       for share in gpu.shares],
        } for gpu in result.gpus],
        "pods": [{
            "namespace": pod.namespace, "name": pod.name, "workload": pod.workload, "claims": list(pod.claims),
            "placed": pod.placed, "node": pod.node,
            "refusal": None if pod.refusal is None else {"reason": pod.refusal.reason, "kind": pod.refusal.kind.value},
        } for pod in result.pods],
        "skipped": list(result.skipped),
    }


def _percent(part: int, whole: int) -> str:
    return f"{100 * part // whole} %" if whole else "-"


def render_table(result: Plan, inventories: Sequence[NodeInventory]) -> str:
    """The human form: GPUs, shares, refusals, and a summary line."""
    sections = []
    gpu_rows = []
    for gpu in result.gpus:
        pods = sorted({pod.split("/", 1)[-1] for share in gpu.shares for pod in share.pods})
        gpu_rows.append([gpu.node, gpu.device, gpu.product,
                         f"{humanize_bytes(gpu.memory_used_bytes)} ({_percent(gpu.memory_used_bytes, gpu.memory_bytes)})",
                         f"{humanize_bytes(gpu.memory_free_bytes)} of {humanize_bytes(gpu.memory_bytes)}",
                         f"{gpu.cores_used} %", f"{gpu.cores_free} %", ", ".join(pods) or "-"])
    sections.append(f"GPUs (node policy {result.policy.node.value}, GPU policy {result.policy.gpu.value})\n"
                    + format_table(["NODE", "GPU", "PRODUCT", "MEMORY USED", "MEMORY FREE", "CORES USED", "CORES FREE",
                              "PODS"], gpu_rows))
    share_rows = []
    for gpu in result.gpus:
        for share in gpu.shares:
            share_rows.append([", ".join(pod.split("/", 1)[-1] for pod in share.pods), ", ".join(share.workloads),
                               share.claim, share.request, gpu.node, gpu.device, format_bytes(share.memory_bytes),
                               f"{share.cores} %" if share.cores else "no cap"])
    if share_rows:
        sections.append("Shares\n" + format_table(["PODS", "WORKLOAD", "CLAIM", "REQUEST", "NODE", "GPU", "MEMORY", "CORES"],
                                            share_rows))
    refused = result.refused
    if refused:
        sections.append("Refused\n" + format_table(["POD", "WORKLOAD", "WHY"],
                                             [[pod.name, pod.workload, pod.refusal.reason if pod.refusal else ""]
                                              for pod in refused]))
    placed = len(result.pods) - len(refused)
    memory_used = sum(gpu.memory_used_bytes for gpu in result.gpus)
    memory_total = sum(gpu.memory_bytes for gpu in result.gpus)
    cores_used = sum(gpu.cores_used for gpu in result.gpus)
    cores_total = sum(gpu.cores for gpu in result.gpus)
    sections.append(
        f"{placed} of {len(result.pods)} pods placed on {len(inventories)} node(s) with {len(result.gpus)} GPU(s); "
        f"allocated {humanize_bytes(memory_used)} of {humanize_bytes(memory_total)} GPU memory "
        f"({_percent(memory_used, memory_total)}) and {_percent(cores_used, cores_total)} of the cores.\n")
    return "\n".join(sections)
