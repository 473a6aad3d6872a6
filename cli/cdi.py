"""`vgpu-dra cdi`: named GPU shares for Docker and Podman on a host, no Kubernetes.

    vgpu-dra cdi create worker-a --memory 2Gi --cores 25 --gpu 0
    docker run --device vgpu.dra.dev/claim=worker-a IMAGE ...      # Docker 25+ with CDI
    podman run --device vgpu.dra.dev/claim=worker-a IMAGE ...
    vgpu-dra cdi list
    vgpu-dra cdi delete worker-a

`create` writes a CDI spec (kind vgpu.dra.dev/claim, one device named after the share) with the
kubelet plugin's own spec builder: the share's config and region mounted at
/var/run/vgpu-dra/claims/NAME/, libvgpu.so mounted read-only with /etc/ld.so.preload naming it,
and the GPU's device nodes. When the host has NVIDIA's generated CDI spec (nvidia-ctk cdi
generate), that spec supplies the GPU and its driver libraries, and `create` prints both IDs to
pass. Every container started with one share shares its one wall. A share lives until `delete`
(reboots included); `delete` refuses while a container still uses it, unless --force.
"""
from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import structlog
from vgpu_dra.api.names import HOST_CDI_KIND
from vgpu_dra.api.quantity import QuantityError, format_bytes, humanize_bytes, parse_bytes
from vgpu_dra.cli.cdi_store import DEFAULT_HOST_STATE_DIR, ShareStore, writable_dir
from vgpu_dra.cli.run import RunError, find_shim, select_gpus
from vgpu_dra.cli.share_arguments import add_limit_arguments
from vgpu_dra.cli.table_format import format_table
from vgpu_dra.driver import cdi
from vgpu_dra.driver.claimconfig import ClaimConfigError
from vgpu_dra.driver.host_share import HostShare, ShareError, ShareGpu, check_fits, check_request, check_share_name
from vgpu_dra.driver.inventory import InventoryError, discover
from vgpu_dra.driver.region import RegionError, RegionSnapshot, read_region
from vgpu_dra.kubeletplugin.claim_files import nvidia_gpu_device_names
from vgpu_dra.kubeletplugin.settings import DEFAULT_DEV_DIR, DEFAULT_NVIDIA_CDI_DIRS, SHIM_CONTAINER_PATH
from vgpu_dra.kubeletplugin.shim_install import install_shim

DEFAULT_CDI_DIR = Path("/etc/cdi")
EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``cdi`` subcommand and its ``create``, ``list`` and ``delete``."""
    parser = subparsers.add_parser(
        "cdi", help="GPU shares with a memory wall for Docker and Podman (CDI), without Kubernetes",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", type=Path, default=DEFAULT_HOST_STATE_DIR, metavar="DIR",
                        help=f"where the shares are kept (default {DEFAULT_HOST_STATE_DIR})")
    common.add_argument("-o", "--output", choices=("table", "json"), default="table")

    create = actions.add_parser("create", parents=[common], help="write the CDI spec of a new share")
    create.add_argument("name", metavar="NAME", help="the share's name: the CDI device vgpu.dra.dev/claim=NAME")
    add_limit_arguments(create, "the GPU")
    create.add_argument("--cdi-dir", type=Path, default=DEFAULT_CDI_DIR, metavar="DIR",
                        help=f"where to write the spec; Docker and Podman read /etc/cdi and /var/run/cdi "
                             f"(default {DEFAULT_CDI_DIR})")
    create.add_argument("--shim", type=Path, metavar="PATH",
                        help="libvgpu.so to install (default: the installed one, else the checkout's build)")
    create.add_argument("--dev-dir", type=Path, default=DEFAULT_DEV_DIR, metavar="DIR",
                        help=f"where the GPU device nodes are on this host (default {DEFAULT_DEV_DIR})")
    create.set_defaults(handler=create_share)

    listing = actions.add_parser("list", parents=[common], help="the shares, their limits and their use")
    listing.set_defaults(handler=list_shares)

    delete = actions.add_parser("delete", parents=[common], help="remove a share's spec and files")
    delete.add_argument("name", metavar="NAME")
    delete.add_argument("--force", action="store_true",
                        help="delete even while containers use it (they keep their wall until they exit)")
    delete.add_argument("--cdi-dir", type=Path, default=DEFAULT_CDI_DIR, metavar="DIR",
                        help="where the spec is, for a share whose record is damaged")
    delete.set_defaults(handler=delete_share)


def _quiet_logs(err: TextIO) -> None:
    """The shared code logs as a daemon would (e.g. "installed shim"); a command prints only its
    answer, with warnings on stderr."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                        logger_factory=structlog.PrintLoggerFactory(err))


def _fail(err: TextIO, message: str, code: int = EXIT_BAD_INPUT) -> int:
    print(f"vgpu-dra cdi: error: {message}", file=err)
    return code


# --- create -------------------------------------------------------------------------------------------

def _existing_spec(name: str, cdi_dirs: Sequence[Path]) -> Path | None:
    file_name = cdi.spec_file_name(name, HOST_CDI_KIND)
    return next((d / file_name for d in cdi_dirs if (d / file_name).exists()), None)


def _missing_device_nodes(spec: dict[str, Any]) -> list[str]:
    """Host device nodes the spec names that do not exist: a runtime refuses to start the container."""
    edits = [spec.get("containerEdits") or {}, *((d.get("containerEdits") or {}) for d in spec["devices"])]
    paths = [n.get("hostPath") or n["path"] for e in edits for n in e.get("deviceNodes") or ()]
    return [p for p in paths if not Path(p).exists()]


def create_share(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Write a share's claim directory, CDI spec and record; 2 on bad input."""
    out, err = out or sys.stdout, err or sys.stderr
    _quiet_logs(err)
    try:
        name = check_share_name(args.name)
        try:
            memory = parse_bytes(args.memory)
        except QuantityError as exc:
            raise ShareError(f"--memory {args.memory}: {exc}") from None
        check_request(memory, args.cores)
        store = ShareStore(args.state_dir)
        cdi_dir = writable_dir(args.cdi_dir, "--cdi-dir")
        with store.locked():
            known = store.load(name)
            if known is not None:
                raise ShareError(f"share {name} exists already ({format_bytes(known.memory_bytes)} on GPU "
                                 f"{', '.join(str(g.index) for g in known.gpus)}, spec {known.spec_path}): delete it "
                                 f"first (vgpu-dra cdi delete {name}) or pick another name")
            lookup = list(dict.fromkeys([cdi_dir, *DEFAULT_NVIDIA_CDI_DIRS]))
            other = _existing_spec(name, lookup)
            if other is not None:
                raise ShareError(f"{other} already defines {HOST_CDI_KIND}={name} (not a share of {args.state_dir}): "
                                 "remove that file or pick another name")
            shim_source = find_shim(args.shim)
            try:
                inventory = discover(socket.gethostname())
            except InventoryError as exc:
                raise ShareError(f"cannot list this machine's GPUs: {exc}") from None
            gpus = select_gpus(inventory, args.gpu or ("0",), memory)
            nvidia = nvidia_gpu_device_names(lookup)
            shim = install_shim(shim_source, store.shim_dir, SHIM_CONTAINER_PATH)
            files = store.files(cdi_dir)
            share = HostShare(
                name=name, memory_bytes=memory, cores=args.cores, core_policy=args.core_policy,
                gpus=tuple(ShareGpu.of(g, cdi.nvidia_device_for(g.uuid, g.index, nvidia)) for g in gpus),
                shim_host_path=str(shim.shim_path), preload_host_path=str(shim.preload_path),
                shim_container_path=SHIM_CONTAINER_PATH, claim_dir=str(files.claim_dir(name)),
                spec_path=str(files.spec_path(name)), dev_dir=str(args.dev_dir))
            existing, _ = store.all()
            check_fits(share, existing)
            spec = share.spec()
            try:
                files.write_claim_dir(share.claim_config(), fresh_region=True)
                files.write_spec(name, spec)
                store.save(share)
            except BaseException:
                store.remove(name, cdi_dir)
                raise
    except (ShareError, RunError, ClaimConfigError, cdi.CdiError, RegionError) as exc:
        return _fail(err, str(exc))
    except OSError as exc:
        return _fail(err, f"cannot write the share's files ({exc.filename}: {exc.strerror}): run as root, "
                          "or pass --cdi-dir and --state-dir that you can write", EXIT_ERROR)
    missing = _missing_device_nodes(spec)
    if missing:
        print(f"vgpu-dra cdi: warning: {', '.join(missing)} missing on this host: containers with this share will "
              "not start until they exist (nvidia-modprobe -u -c=0 creates them), or generate NVIDIA's CDI spec "
              "(nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml) and create the share again", file=err)
    if args.output == "json":
        print(json.dumps(_describe(share, None)), file=out)
        return EXIT_OK
    for gpu in share.gpus:
        cap = f"{share.cores} % SMs ({share.core_policy})" if share.cores else "no SM cap"
        print(f"share {name}: GPU {gpu.index} {gpu.uuid} ({gpu.product_name}): memory wall "
              f"{format_bytes(memory)} of {humanize_bytes(gpu.usable_memory_bytes)}, {cap}", file=out)
    devices = " ".join(f"--device {i}" for i in share.device_ids())
    print(f"spec: {share.spec_path}", file=out)
    print(f"run:  docker run {devices} IMAGE ...   (or podman run {devices} IMAGE ...)", file=out)
    return EXIT_OK


# --- list ---------------------------------------------------------------------------------------------

def _usage(share: HostShare) -> RegionSnapshot | None:
    try:
        return read_region(Path(share.claim_dir) / cdi.REGION_FILE)
    except RegionError:
        return None


def _describe(share: HostShare, snapshot: RegionSnapshot | None) -> dict[str, Any]:
    report: dict[str, Any] = {
        "name": share.name, "deviceIds": list(share.device_ids()), "spec": share.spec_path,
        "memoryLimitBytes": share.memory_bytes, "cores": share.cores, "corePolicy": share.core_policy,
        "gpus": [{"index": g.index, "uuid": g.uuid, "product": g.product_name} for g in share.gpus],
    }
    if snapshot is not None:
        report["processes"] = sum(1 for p in snapshot.processes if p.alive)
        report["usage"] = [{"uuid": g.uuid, "usedBytes": g.used_bytes, "peakBytes": g.peak_bytes,
                            "rejectedAllocations": g.rejected_allocations} for g in snapshot.gpus]
    return report


def list_shares(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print the shares with their limits and what their containers use now."""
    out, err = out or sys.stdout, err or sys.stderr
    store = ShareStore(args.state_dir)
    try:
        shares, broken = store.all()
    except ShareError as exc:
        return _fail(err, str(exc), EXIT_ERROR)
    described = [_describe(share, _usage(share)) for share in shares]
    for record in broken:
        print(f"vgpu-dra cdi: warning: {record.error}", file=err)
    if args.output == "json":
        print(json.dumps({"shares": described}), file=out)
        return EXIT_OK
    if not described:
        print(f"no shares in {args.state_dir} (vgpu-dra cdi create NAME --memory 2Gi makes one)", file=out)
        return EXIT_OK
    rows = []
    for share in described:
        usage = {u["uuid"]: u for u in share.get("usage", [])}
        for gpu in share["gpus"]:
            used = usage.get(gpu["uuid"])
            rows.append([
                share["name"], f"{gpu['index']} ({gpu['product']})", humanize_bytes(share["memoryLimitBytes"]),
                f"{share['cores']} % {share['corePolicy']}" if share["cores"] else "-",
                share.get("processes", "?"),
                humanize_bytes(used["usedBytes"]) if used else "?", humanize_bytes(used["peakBytes"]) if used else "?",
                used["rejectedAllocations"] if used else "?", share["deviceIds"][-1]])
    print(format_table(["NAME", "GPU", "MEMORY", "CORES", "PROCESSES", "USED", "PEAK", "REFUSED", "CDI DEVICE"], rows),
          end="", file=out)
    return EXIT_OK


# --- delete -------------------------------------------------------------------------------------------

def delete_share(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Remove a share; refuses while a process of a container still uses it, unless --force."""
    out, err = out or sys.stdout, err or sys.stderr
    _quiet_logs(err)
    try:
        name = check_share_name(args.name)
        store = ShareStore(args.state_dir)
        with store.locked():
            try:
                share = store.load(name)
            except ShareError:
                if not args.force:
                    raise
                share = None
            if share is None and not args.force:
                names = ", ".join(s.name for s in store.all()[0]) or "none"
                raise ShareError(f"no share {name} in {args.state_dir} (shares: {names})")
            if share is not None and not args.force:
                snapshot = _usage(share)
                alive = [p for p in snapshot.processes if p.alive] if snapshot else []
                if alive:
                    raise ShareError(f"share {name} is in use by {len(alive)} process(es) (pid "
                                     f"{', '.join(str(p.host_pid or p.pid) for p in alive)}): stop the containers started with "
                                     "it first, or pass --force (they keep their wall until they exit)")
            store.remove(name, Path(share.spec_path).parent if share else args.cdi_dir)
    except ShareError as exc:
        return _fail(err, str(exc))
    except OSError as exc:
        return _fail(err, f"cannot remove the share's files ({exc.filename}: {exc.strerror}): run as root",
                     EXIT_ERROR)
    if args.output == "json":
        print(json.dumps({"deleted": name}), file=out)
    else:
        print(f"deleted share {name}", file=out)
    return EXIT_OK
