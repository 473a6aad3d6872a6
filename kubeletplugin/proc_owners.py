"""Which pod and container a host PID belongs to, from ``/proc/<pid>/cgroup``; and killing one.

The kubelet names every pod's cgroup after the pod's UID, with either cgroup driver:

    systemd:  /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, '_' for '-'>.slice/
              cri-containerd-<container id>.scope
    cgroupfs: /kubepods/burstable/pod<uid>/<container id>

A process in no such cgroup is a process of the host. The /proc root is configurable, so the
plugin can read the host's /proc mounted elsewhere and tests can point it at a tree they write.
"""
from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from vgpu_dra.driver.usage_audit import ProcessOwner

_POD_RE = re.compile(r"pod([0-9a-fA-F]{8}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{4}[-_][0-9a-fA-F]{12})")
_CONTAINER_RE = re.compile(r"^(?:cri-containerd-|crio-|docker-|containerd-)?([0-9a-fA-F]{64})(?:\.scope)?$")


class ProcReadError(OSError):
    """/proc/<pid> exists but cannot be read (permissions, a /proc that is not the host's)."""


def parse_cgroup(pid: int, text: str) -> ProcessOwner:
    """The owner named by the content of ``/proc/<pid>/cgroup`` (v1 or v2)."""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        match = _POD_RE.search(path)
        if match is None:
            continue
        container = ""
        for part in reversed(path.split("/")):
            found = _CONTAINER_RE.match(part)
            if found:
                container = found.group(1)
                break
        return ProcessOwner(pid=pid, pod_uid=match.group(1).replace("_", "-").lower(), container_id=container)
    return ProcessOwner(pid=pid, pod_uid=None)


def parse_ns_pid(text: str) -> int:
    """The innermost PID of the ``NSpid:`` line of ``/proc/<pid>/status`` (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("NSpid:"):
            fields = line.split()[1:]
            return int(fields[-1]) if fields and fields[-1].isdigit() else 0
    return 0


class ProcOwners:
    """Reads owners of host PIDs under a /proc root, caching each PID while it stays on a GPU.

    A PID listed by NVML in consecutive polls is taken to be the same process (its cgroup is read
    once); a PID that left the lists is forgotten, so a reused PID is read anew. Kills re-read.
    """

    def __init__(self, proc_root: Path = Path("/proc")):
        self.proc_root = proc_root
        self._cache: dict[int, ProcessOwner] = {}

    def read(self, pid: int) -> ProcessOwner | None:
        """The owner of ``pid`` read now; None when the process is gone. Raises ProcReadError."""
        base = self.proc_root / str(pid)
        try:
            cgroup = (base / "cgroup").read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ProcReadError(exc.errno, f"cannot read {base / 'cgroup'}: {exc.strerror}") from exc
        owner = parse_cgroup(pid, cgroup)
        try:
            ns_pid = parse_ns_pid((base / "status").read_text())
        except OSError:
            ns_pid = 0  # only sharpens the match with unlearned shim slots; the cgroup decided
        return ProcessOwner(pid=pid, pod_uid=owner.pod_uid, container_id=owner.container_id, ns_pid=ns_pid)

    def cached(self, pid: int) -> ProcessOwner | None:
        """The owner read for ``pid`` at the last poll, if it was listed then."""
        return self._cache.get(pid)

    def owners(self, pids: set[int]) -> tuple[dict[int, ProcessOwner], list[str]]:
        """Owners of ``pids`` (gone ones left out) and one message per PID that could not be read."""
        for gone in set(self._cache) - pids:
            del self._cache[gone]
        errors: list[str] = []
        for pid in pids - set(self._cache):
            try:
                owner = self.read(pid)
            except ProcReadError as exc:
                errors.append(str(exc))
                continue
            if owner is not None:
                self._cache[pid] = owner
        return {pid: self._cache[pid] for pid in pids if pid in self._cache}, errors


def kill_process(pid: int, expected: ProcessOwner, owners: ProcOwners) -> str:
    """SIGKILL ``pid`` if it is still the process ``expected`` describes; says what happened.

    The process is pinned with a pidfd first and its cgroup read again after, so a PID that was
    reused since the poll is never signalled.
    """
    if pid <= 1 or pid == os.getpid():
        return "refused"
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return "gone"
    except OSError as exc:
        return f"failed ({exc.strerror})"
    try:
        try:
            now = owners.read(pid)
        except ProcReadError as exc:
            return f"failed ({exc})"
        if now is None:
            return "gone"
        if now.pod_uid != expected.pod_uid or now.container_id != expected.container_id:
            return "reused"
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return "killed"
    except ProcessLookupError:
        return "gone"
    except OSError as exc:
        return f"failed ({exc.strerror})"
    finally:
        os.close(pidfd)
