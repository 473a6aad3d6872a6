"""`vgpu-dra run`: run one command under libvgpu.so on this machine, no Kubernetes needed.

    vgpu-dra run --memory 2Gi --cores 25 -- python serve.py
    vgpu-dra run --memory 4Gi --gpu 1 --core-policy hard -- ./train.sh
    vgpu-dra run --memory 512Mi --gpu GPU-8f6e... -o json -- ./bench

The production library reads its limits only from the fixed claims root
/var/run/vgpu-dra/claims (never from an environment variable). So `run` writes a private claim
directory (config + region) and starts the command in a private mount namespace where that one
directory is bind-mounted onto the fixed root: the command and its children see exactly this
claim, other runs on the same machine see theirs, the host's /var/run is untouched. Without
root the namespace is a user namespace mapping only your own user (Linux ≥ 3.8 with
unprivileged user namespaces); the mount point /var/run/vgpu-dra/claims must then exist
(root creates it on first use).

Limits go to stderr at the start, final usage (peak, rejected allocations, throttled time) at the
end; the exit status is the command's (128 + N when it died of signal N), 2 on bad input.
SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to `run` are forwarded to the command; a Ctrl-C typed on
the terminal reaches the command directly. The command runs in its own PID namespace: nothing it
starts outlives it, and nothing outlives `run`, even when `run` is killed with SIGKILL. The claim
directory is removed at exit; one left by a killed `run` is removed by the next, but never while
any process still uses it (it holds the directory's owner lock, inherited by every process of the
command, or a process slot in its region).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from vgpu_dra.api.names import CONTAINER_CLAIMS_ROOT
from vgpu_dra.cli.run_claim import PrivateClaim, create_private_claim, remove_if_unused
from vgpu_dra.cli.share_arguments import add_limit_arguments
from vgpu_dra.cli.run_child import ChildStartError
from vgpu_dra.cli.run_child import start as start_child
from vgpu_dra.api.quantity import QuantityError, format_bytes, humanize_bytes, parse_bytes
from vgpu_dra.driver.claimconfig import ClaimConfigError, Policy
from vgpu_dra.driver.inventory import GpuInfo, InventoryError, NodeInventory, discover
from vgpu_dra.driver.region import RegionError, RegionSnapshot, read_region
from vgpu_dra.kubeletplugin.settings import DEFAULT_SHIM_SOURCE

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKOUT_SHIM = REPO_ROOT / "shim" / "out" / "libvgpu.so"
EXIT_BAD_INPUT = 2
EXIT_NOT_FOUND = 127
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_SI_KERNEL = 0x80  # si_code of a signal the kernel raised (a terminal's Ctrl-C, Ctrl-\)


class RunError(Exception):
    """Bad input or an environment `run` cannot work in; the message says what to change."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``run`` subcommand."""
    parser = subparsers.add_parser(
        "run", help="run a command under the GPU memory wall and SM cap, without Kubernetes",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_limit_arguments(parser, "the GPU to run on")
    parser.add_argument("--shim", type=Path, metavar="PATH",
                        help=f"libvgpu.so to load (default: {DEFAULT_SHIM_SOURCE}, else the checkout's "
                             "shim/out/libvgpu.so)")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table",
                        help="json: the start and end reports as one JSON object per line on stderr")
    parser.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ...", help="the command to run")
    parser.set_defaults(handler=run)


# --- input ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunRequest:
    """What to run and under which limits, validated."""

    memory_bytes: int
    cores: int
    core_policy: Policy
    gpu_selectors: tuple[str, ...]
    argv: tuple[str, ...]


def parse_request(args: argparse.Namespace) -> RunRequest:
    """Validate the command line; RunError names the bad option."""
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise RunError("no command given: vgpu-dra run --memory 2Gi -- CMD [ARGS...]")
    try:
        memory = parse_bytes(args.memory)
    except QuantityError as exc:
        raise RunError(f"--memory: {exc}") from None
    if memory <= 0:
        raise RunError("--memory must be more than 0 bytes")
    if not 0 <= args.cores <= 100:
        raise RunError(f"--cores {args.cores} must be 0-100 (percent of the GPU's SMs; 0 = no cap)")
    return RunRequest(memory_bytes=memory, cores=args.cores, core_policy=args.core_policy,
                      gpu_selectors=tuple(args.gpu or ("0",)), argv=tuple(argv))


def select_gpus(inventory: NodeInventory, selectors: Sequence[str], memory_bytes: int) -> tuple[GpuInfo, ...]:
    """The GPUs named by index or UUID, each with room for ``memory_bytes``; RunError otherwise."""
    chosen: list[GpuInfo] = []
    for selector in selectors:
        if selector.isdigit():
            match = [gpu for gpu in inventory.gpus if gpu.index == int(selector)]
        else:
            match = [gpu for gpu in inventory.gpus if gpu.uuid.lower() == selector.lower()]
        if not match:
            known = ", ".join(f"{gpu.index} ({gpu.uuid})" for gpu in inventory.gpus)
            raise RunError(f"--gpu {selector}: no such GPU on this machine; it has {known}")
        gpu = match[0]
        if gpu in chosen:
            raise RunError(f"--gpu {selector}: GPU {gpu.index} named twice")
        if memory_bytes > gpu.usable_memory_bytes:
            raise RunError(
                f"--memory {format_bytes(memory_bytes)} is more than GPU {gpu.index} ({gpu.product_name}) can give: "
                f"{format_bytes(gpu.usable_memory_bytes)} usable ({humanize_bytes(gpu.usable_memory_bytes)})")
        chosen.append(gpu)
    return tuple(chosen)


def find_shim(given: Path | None) -> Path:
    """The library to preload: --shim, else the installed one, else a checkout's build."""
    if given is not None:
        if not given.is_file():
            raise RunError(f"--shim {given}: no such file")
        return given.resolve()
    for candidate in (DEFAULT_SHIM_SOURCE, CHECKOUT_SHIM):
        if candidate.is_file():
            return candidate
    raise RunError(f"libvgpu.so not found at {DEFAULT_SHIM_SOURCE} or {CHECKOUT_SHIM}: "
                   "build it (make -C shim) or pass --shim PATH")


# --- the private claims root ------------------------------------------------------------------------

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUSER = 0x10000000
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def enter_private_claims_root(source: Path, target: Path, uid: int, gid: int) -> None:
    """In the calling (single-threaded, just forked) process — a multithreaded one cannot enter a
    user namespace, and grpc starts threads in forked children, so `run` must not load grpc: a new
    mount namespace where
    ``source`` is bind-mounted onto ``target``. Not root: inside a user namespace that maps only
    ``uid``/``gid`` onto themselves, so the command keeps its identity and gains nothing."""
    libc = _libc()
    as_root = os.geteuid() == 0
    _check(libc.unshare(_CLONE_NEWNS if as_root else _CLONE_NEWUSER | _CLONE_NEWNS), "unshare")
    if not as_root:
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    # Private propagation first, or the bind mount would leak back into the host's namespace.
    _check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "making / private")
    _check(libc.mount(bytes(source), bytes(target), None, _MS_BIND | _MS_REC, None),
           f"bind-mounting the claim onto {target}")


_CLONE_NEWPID = 0x20000000


def probe_private_claims_root(source: Path, target: Path) -> str | None:
    """Try :func:`enter_private_claims_root` and a new PID namespace (with a process in it) in a
    throw-away child; None when it works, else why."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report and leave without running any Python clean-up
        os.close(reader)
        try:
            enter_private_claims_root(source, target, os.getuid(), os.getgid())
            _check(_libc().unshare(_CLONE_NEWPID), "unshare(CLONE_NEWPID)")
            first = os.fork()  # PID 1 of the new namespace
            if first == 0:
                os._exit(0)
            os.waitpid(first, 0)
            os.write(writer, b"ok")
        except BaseException as exc:  # noqa: BLE001 - everything is reported to the parent
            os.write(writer, str(exc).encode()[:4000])
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        answer = pipe.read().decode(errors="replace")
    os.waitpid(pid, 0)
    return None if answer == "ok" else answer or "the probe died"


def _namespace_fix() -> str:
    if os.geteuid() == 0:
        return ("this process may not create mount and PID namespaces (a container without CAP_SYS_ADMIN, or a "
                "seccomp profile refusing unshare): run it on the host, or give the container CAP_SYS_ADMIN")
    return ("run as root, or enable unprivileged user namespaces (user.max_user_namespaces > 0; Debian/Ubuntu: "
            "kernel.unprivileged_userns_clone=1; Ubuntu 24.04: kernel.apparmor_restrict_unprivileged_userns=0)")


def claims_in_force(root: Path) -> list[str]:
    """Claim directories already under the fixed root: this process is inside a claimed container
    (or another `run`), whose limits a private root would replace."""
    try:
        return sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    except OSError:
        return []


def ensure_mount_point(target: Path) -> None:
    """The fixed claims root must exist to mount onto; root creates it (an empty dir is inert:
    the shim passes through when it finds no claim in it)."""
    if target.is_dir():
        return
    if os.geteuid() != 0:
        raise RunError(f"{target} does not exist, and only root can create it: run "
                       f"'sudo mkdir -p {target}' once (it is on a tmpfs, so again after a reboot), "
                       "or run vgpu-dra run as root")
    target.mkdir(parents=True, exist_ok=True)


# --- running ----------------------------------------------------------------------------------------

def child_environment(shim: Path, gpus: Sequence[GpuInfo], base: dict[str, str] | None = None) -> dict[str, str]:
    """The command's environment: the shim first in LD_PRELOAD; CUDA_VISIBLE_DEVICES naming the
    claim's GPUs unless the caller chose already (other GPUs would refuse every allocation)."""
    env = dict(os.environ if base is None else base)
    preload = [entry for entry in env.get("LD_PRELOAD", "").replace(":", " ").split() if entry != str(shim)]
    env["LD_PRELOAD"] = " ".join([str(shim), *preload])
    env.setdefault("CUDA_VISIBLE_DEVICES", ",".join(gpu.uuid for gpu in gpus))
    return env


def _start_child(request: RunRequest, env: dict[str, str], claim: PrivateClaim,
                 mask: set[signal.Signals]) -> int:
    target = Path(CONTAINER_CLAIMS_ROOT)
    uid, gid = os.getuid(), os.getgid()
    os.set_inheritable(claim.lock_fd, True)  # the command's processes hold the owner lock too
    return start_child(list(request.argv), env,
                       lambda: enter_private_claims_root(claim.claims_root, target, uid, gid),
                       mask, {*FORWARDED_SIGNALS, signal.SIGCHLD})


def _wait_forwarding(child: int) -> int:
    """Wait for the child; forward signals sent to us by other processes (a terminal's Ctrl-C
    already reached the command through the process group, so it is not sent twice). Returns
    the child's status as subprocess does: the exit code, or -N when it died of signal N."""
    watched = {*FORWARDED_SIGNALS, signal.SIGCHLD}
    while True:
        info = signal.sigtimedwait(watched, 1.0)
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.waitstatus_to_exitcode(status)
        if info is None or info.si_signo == signal.SIGCHLD:
            continue
        if info.si_code != _SI_KERNEL:
            try:
                os.kill(child, info.si_signo)
            except ProcessLookupError:
                pass


def run(args: argparse.Namespace, err: TextIO | None = None) -> int:
    """Run the command under the claim; returns its exit status (2 on bad input)."""
    err = err or sys.stderr
    claim: PrivateClaim | None = None
    try:
        request = parse_request(args)
        target = Path(CONTAINER_CLAIMS_ROOT)
        # First: under a claim, even NVML answers with the claim's view of the GPU.
        in_force = claims_in_force(target)
        if in_force:
            raise RunError(f"this process is already under vgpu-dra claim(s) {', '.join(in_force)} ({target}); "
                           "run would replace their limits, so it refuses: run it outside that container or run")
        shim = find_shim(args.shim)
        try:
            inventory = discover(socket.gethostname())
        except InventoryError as exc:
            raise RunError(f"cannot list this machine's GPUs: {exc}") from None
        gpus = select_gpus(inventory, request.gpu_selectors, request.memory_bytes)
        env = child_environment(shim, gpus)
        if shutil.which(request.argv[0], path=env.get("PATH")) is None:
            print(f"vgpu-dra run: error: {request.argv[0]}: command not found", file=err)
            return EXIT_NOT_FOUND
        ensure_mount_point(target)
        claim = create_private_claim(gpus, request.memory_bytes, request.cores, request.core_policy)
        problem = probe_private_claims_root(claim.claims_root, target)
        if problem is not None:
            raise RunError(f"cannot give the command a private {target} ({problem}): " + _namespace_fix())
        _report(err, args.output, _start_report(claim, gpus, shim, request))
        original_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {*FORWARDED_SIGNALS, signal.SIGCHLD})
        try:
            try:
                child = _start_child(request, env, claim, original_mask)
            except ChildStartError as exc:
                print(f"vgpu-dra run: error: {exc}", file=err)
                return exc.exit_status
            code = _wait_forwarding(child)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, original_mask)
        status = 128 - code if code < 0 else code
        _report(err, args.output, _end_report(claim, code, status))
        return status
    except (RunError, ClaimConfigError, RegionError) as exc:
        print(f"vgpu-dra run: error: {exc}", file=err)
        return EXIT_BAD_INPUT
    finally:
        if claim is not None:
            os.close(claim.lock_fd)
            remove_if_unused(claim.base)


# --- reports -----------------------------------------------------------------------------------------

def _start_report(claim: PrivateClaim, gpus: Sequence[GpuInfo], shim: Path, request: RunRequest) -> dict[str, Any]:
    return {
        "event": "start", "claim": claim.config.claim_uid, "claimDir": str(claim.claims_root / claim.config.claim_uid),
        "shim": str(shim), "command": list(request.argv),
        "gpus": [{"index": gpu.index, "uuid": gpu.uuid, "product": gpu.product_name,
                  "memoryLimitBytes": request.memory_bytes, "usableMemoryBytes": gpu.usable_memory_bytes,
                  "cores": request.cores, "corePolicy": request.core_policy} for gpu in gpus],
    }


def _end_report(claim: PrivateClaim, code: int, status: int) -> dict[str, Any]:
    report: dict[str, Any] = {"event": "exit", "claim": claim.config.claim_uid, "exitStatus": status,
                              "signal": signal.Signals(-code).name if code < 0 else None}
    try:
        snapshot: RegionSnapshot | None = read_region(claim.region)
    except RegionError as exc:
        snapshot = None
        report["error"] = str(exc)
    report["gpus"] = [] if snapshot is None else [{
        "uuid": gpu.uuid, "memoryLimitBytes": gpu.limit_bytes, "peakBytes": gpu.peak_bytes,
        "usedAtExitBytes": gpu.used_bytes, "rejectedAllocations": gpu.rejected_allocations,
        "coreCap": gpu.core_cap, "throttledSeconds": round(gpu.throttled_seconds, 3),
        "launchesDelayed": gpu.launches_delayed,
    } for gpu in snapshot.gpus]
    report["processes"] = 0 if snapshot is None else len(snapshot.processes)
    return report


def _report(err: TextIO, output: str, report: dict[str, Any]) -> None:
    if output == "json":
        print(json.dumps(report), file=err, flush=True)
        return
    if report["event"] == "start":
        for gpu in report["gpus"]:
            cap = f"{gpu['cores']} % SMs ({gpu['corePolicy']})" if gpu["cores"] else "no SM cap"
            print(f"vgpu-dra run: GPU {gpu['index']} {gpu['uuid']} ({gpu['product']}): memory wall "
                  f"{format_bytes(gpu['memoryLimitBytes'])} of {humanize_bytes(gpu['usableMemoryBytes'])}, {cap}",
                  file=err, flush=True)
        return
    ended = f"killed by {report['signal']}" if report["signal"] else f"exit status {report['exitStatus']}"
    if "error" in report:
        print(f"vgpu-dra run: {ended}; usage unknown: {report['error']}", file=err, flush=True)
    for gpu in report["gpus"]:
        throttled = f", throttled {gpu['throttledSeconds']:.1f} s" if gpu["coreCap"] else ""
        print(f"vgpu-dra run: {ended}; GPU {gpu['uuid']}: peak {humanize_bytes(gpu['peakBytes'])} of "
              f"{humanize_bytes(gpu['memoryLimitBytes'])}, {gpu['rejectedAllocations']} allocation(s) refused"
              f"{throttled}", file=err, flush=True)

