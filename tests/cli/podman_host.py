"""Podman as a real CDI consumer for the tests, isolated from the machine's own containers.

Everything Podman keeps (storage, run state, locks, events) lives in a temporary directory, with
the vfs driver (no mounts to leak). Podman 4 reads CDI specs only from /etc/cdi and /var/run/cdi,
so its commands run in a private mount namespace, held open by one helper process, where the
test's CDI directory is bind-mounted over /var/run/cdi and an empty one over /etc/cdi: the
host's directories are never written. That needs root (mount, and mknod for the device nodes
the CDI library insists on).
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

RUN_CDI = Path("/var/run/cdi")
ETC_CDI = Path("/etc/cdi")


def required() -> bool:
    """In CI the podman tests must run: a missing tool is a failure there, not a skip."""
    return os.environ.get("VGPU_REQUIRE_CLUSTER") == "1" or bool(os.environ.get("CI"))


def missing() -> str | None:
    """Why Podman cannot be driven here (None: it can)."""
    for tool in ("podman", "runc", "unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install -y podman runc)"
    if os.geteuid() != 0:
        return "the podman tests need root (a private /var/run/cdi and device nodes made with mknod)"
    return None


def make_char_device(path: Path, major: int, minor: int) -> None:
    """A character device node (the CDI library reads type and numbers from the host path)."""
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))


def shared_objects(*programs: Path, env: dict[str, str] | None = None) -> list[Path]:
    """The programs' shared libraries (and the loader) as ldd resolves them."""
    found: list[Path] = []
    for program in programs:
        out = subprocess.run(["ldd", str(program)], capture_output=True, text=True, check=True, env=env).stdout
        for line in out.splitlines():
            path = next((word for word in line.split() if word.startswith("/")), None)
            if path and Path(path) not in found:
                found.append(Path(path))
    return found


def rootfs_tarball(dest: Path, files: dict[str, Path]) -> Path:
    """A tarball of a minimal root file system: ``files`` maps image paths to host files."""
    with tarfile.open(dest, "w") as tar:
        for image_path, host_path in files.items():
            info = tar.gettarinfo(str(host_path.resolve()), arcname=image_path.lstrip("/"))
            with open(host_path.resolve(), "rb") as handle:
                tar.addfile(info, handle)
    return dest


class Podman:
    """`podman` with its own storage, in a private mount namespace whose CDI dirs are the test's."""

    def __init__(self, base: Path, cdi_dir: Path):
        self.base = base
        self.cdi_dir = cdi_dir
        for sub in ("root", "runroot", "tmp", "empty-cdi", "image-tmp"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        conf = base / "containers.conf"
        conf.write_text(
            "[containers]\nnetns = \"none\"\n"
            "[engine]\n"
            f"lock_type = \"file\"\ntmp_dir = \"{base / 'tmp'}\"\nvolume_path = \"{base / 'volumes'}\"\n"
            f"events_logger = \"file\"\nevents_logfile_path = \"{base / 'events.log'}\"\n"
            "cgroup_manager = \"cgroupfs\"\nruntime = \"runc\"\n")
        self.env = dict(os.environ, CONTAINERS_CONF=str(conf), TMPDIR=str(base / "image-tmp"))
        self.created_run_cdi = not RUN_CDI.exists()
        if self.created_run_cdi:
            RUN_CDI.mkdir(parents=True)
        binds = [f"mount --bind {cdi_dir} {RUN_CDI}"]
        if ETC_CDI.is_dir():
            binds.append(f"mount --bind {base / 'empty-cdi'} {ETC_CDI}")
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             " && ".join(binds) + " && echo ready && exec sleep 3600"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.holder.stdout is not None
        if self.holder.stdout.readline().strip() != "ready":
            self.holder.wait(timeout=10)
            raise RuntimeError(f"cannot set up podman's private CDI directories: {self.holder.stderr.read()}")

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        command = ["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", "podman",
                   "--root", str(self.base / "root"), "--runroot", str(self.base / "runroot"),
                   "--storage-driver", "vfs", "--tmpdir", str(self.base / "tmp"), "--events-backend", "file",
                   "--cgroup-manager", "cgroupfs", "--runtime", "runc", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=self.env, check=False)

    def ok(self, *args: str, timeout: float = 120) -> str:
        """Run podman; its stdout, or an AssertionError with its stderr."""
        result = self(*args, timeout=timeout)
        assert result.returncode == 0, f"podman {' '.join(args)} failed ({result.returncode}): {result.stderr}"
        return result.stdout

    def oci_config(self, container: str) -> dict[str, Any]:
        """The OCI config.json Podman wrote for a container (with the CDI edits applied)."""
        inspected = json.loads(self.ok("container", "inspect", container))[0]
        return json.loads((Path(inspected["StaticDir"]) / "config.json").read_text())

    @staticmethod
    def ulimits() -> list[str]:
        """--ulimit for open files at this machine's hard limit, and for processes at Podman's own
        default (32768): Podman's default for open files (1048576) is above what a CI machine's
        container may set, runc then fails on setrlimit before the container's process starts,
        and once one --ulimit is given Podman 4 raises the other to 1048576 too."""
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        files = str(min(hard, 1048576)) if hard != resource.RLIM_INFINITY else "1048576"
        processes = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        procs = str(min(processes, 32768)) if processes != resource.RLIM_INFINITY else "32768"
        return ["--ulimit", f"nofile={files}:{files}", "--ulimit", f"nproc={procs}:{procs}"]

    def close(self) -> None:
        """Remove every container (ending any runtime process), leave the namespace, drop storage."""
        self("rm", "--all", "--force", "--time", "0", timeout=120)
        self.holder.send_signal(signal.SIGTERM)
        try:
            self.holder.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.holder.kill()
            self.holder.wait()
        if self.created_run_cdi:
            try:
                RUN_CDI.rmdir()
            except OSError:
                pass
        # conmon runs `podman container cleanup` when a container exits, asynchronously; it would
        # re-create the storage after the removal, so wait until no process names it.
        deadline = time.monotonic() + 30
        while self._processes_using_base() and time.monotonic() < deadline:
            time.sleep(0.2)
        shutil.rmtree(self.base, ignore_errors=True)

    def _processes_using_base(self) -> list[int]:
        marker = str(self.base).encode()
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and int(proc.name) != os.getpid():
                try:
                    if marker in (proc / "cmdline").read_bytes():
                        found.append(int(proc.name))
                except OSError:
                    continue
        return found
