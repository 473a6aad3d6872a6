"""The process tree of `vgpu-dra run`: nothing the command starts outlives `run`.

    run ─► supervisor (run's namespaces; dies with run: PR_SET_PDEATHSIG)
             └─► init (PID 1 of a new PID namespace; dies with the supervisor)
                   └─► the command, and everything it starts

When `run` dies, even by SIGKILL, the kernel kills the supervisor, then the init, and a PID
namespace whose init is gone is emptied by the kernel: no process of the command is left
running on a claim directory that a later `run` could remove. The command is not PID 1 itself,
so it keeps ordinary signal semantics (PID 1 ignores signals it has no handler for); the init
relays what the supervisor relays to it, reaps orphans and reports the command's exact wait
status back. When the command exits, the init exits and takes the command's leftovers with it.

Everything after the first fork runs in a single-threaded child and uses only os-level calls;
only the command's exec failure (or a failed set-up step) travels back to `run` on a pipe.
"""
from __future__ import annotations

import ctypes
import os
import resource
import select
import signal
import struct
from collections.abc import Callable, Mapping, Sequence

_PR_SET_PDEATHSIG = 1
_CLONE_NEWPID = 0x20000000
_SI_KERNEL = 0x80  # si_code of a signal the kernel raised (a terminal's Ctrl-C, Ctrl-\)
EXIT_NOT_FOUND = 127
EXIT_CANNOT_START = 126


class ChildStartError(Exception):
    """The command could not be started; ``exit_status`` is what a shell would answer."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _die_with_parent(libc: ctypes.CDLL) -> None:
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


def start(argv: Sequence[str], env: Mapping[str, str], enter_namespaces: Callable[[], None],
          original_mask: set[signal.Signals], watched: set[signal.Signals]) -> int:
    """Fork the supervisor, which enters the namespaces (``enter_namespaces``, then a new PID
    namespace) and starts the init and the command. Returns the supervisor's PID once the
    command is executing; ChildStartError when it could not be started. Signals in ``watched``
    must be blocked in the caller; the command gets ``original_mask``."""
    report_r, report_w = os.pipe()  # close-on-exec: EOF once the command has exec'd
    run_pid = os.getpid()
    pid = os.fork()
    if pid == 0:  # supervisor
        try:
            os.close(report_r)
            _supervisor(run_pid, list(argv), dict(env), enter_namespaces, original_mask, watched, report_w)
        except BaseException as exc:  # noqa: BLE001 - reported to run, never raised in a child
            _report(report_w, EXIT_CANNOT_START, f"cannot start the command: {exc}")
        finally:
            os._exit(EXIT_CANNOT_START)
    os.close(report_w)
    with os.fdopen(report_r, "rb") as pipe:
        answer = pipe.read()
    if answer:
        os.waitpid(pid, 0)
        status, message = struct.unpack("i", answer[:4])[0], answer[4:].decode(errors="replace")
        raise ChildStartError(message, status)
    return pid


def _report(fd: int, status: int, message: str) -> None:
    try:
        os.write(fd, struct.pack("i", status) + message.encode()[:4000])
    except OSError:
        pass


def _supervisor(run_pid: int, argv: list[str], env: dict[str, str], enter_namespaces: Callable[[], None],
                original_mask: set[signal.Signals], watched: set[signal.Signals], report_w: int) -> None:
    libc = _libc()
    _die_with_parent(libc)
    if os.getppid() != run_pid:  # run died before the line above took effect
        os._exit(EXIT_CANNOT_START)
    enter_namespaces()
    if libc.unshare(_CLONE_NEWPID) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"unshare(CLONE_NEWPID): {os.strerror(code)}")
    status_r, status_w = os.pipe()
    alive_r, alive_w = os.pipe()  # the init sees EOF here once the supervisor is gone
    init = os.fork()  # PID 1 of the new namespace
    if init == 0:
        try:
            os.close(status_r)
            os.close(alive_w)
            _init(libc, alive_r, status_w, argv, env, original_mask, watched, report_w)
        except BaseException as exc:  # noqa: BLE001
            _report(report_w, EXIT_CANNOT_START, f"cannot start the command: {exc}")
        finally:
            os._exit(EXIT_CANNOT_START)
    os.close(status_w)
    os.close(alive_r)
    os.close(report_w)
    while True:
        info = signal.sigtimedwait(watched, 1.0)
        if info is not None and info.si_signo != signal.SIGCHLD:
            if info.si_code != _SI_KERNEL:  # sent by run (or anyone): for the command
                _kill(init, info.si_signo)
            continue
        done, status = os.waitpid(init, os.WNOHANG)
        if done:
            _exit_as(_read_status(status_r, status))


def _init(libc: ctypes.CDLL, alive_r: int, status_w: int, argv: list[str], env: dict[str, str],
          original_mask: set[signal.Signals], watched: set[signal.Signals], report_w: int) -> None:
    _die_with_parent(libc)
    if select.select([alive_r], [], [], 0)[0]:  # EOF: the supervisor died before prctl took effect
        os._exit(EXIT_CANNOT_START)
    command = os.fork()
    if command == 0:
        os.close(status_w)
        os.close(alive_r)
        signal.pthread_sigmask(signal.SIG_SETMASK, original_mask)
        try:
            os.execvpe(argv[0], argv, env)
        except OSError as exc:
            missing = isinstance(exc, FileNotFoundError)
            _report(report_w, EXIT_NOT_FOUND if missing else EXIT_CANNOT_START,
                    f"{argv[0]}: command not found" if missing else f"cannot start {argv[0]}: {exc}")
        os._exit(EXIT_CANNOT_START)
    os.close(report_w)
    while True:
        info = signal.sigtimedwait(watched, 1.0)
        if info is not None and info.si_signo != signal.SIGCHLD:
            if info.si_code != _SI_KERNEL:
                _kill(command, info.si_signo)
            continue
        while True:  # PID 1 reaps every orphan of the namespace
            try:
                done, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if not done:
                break
            if done == command:
                os.write(status_w, struct.pack("i", status))
                os._exit(0)  # the kernel now ends whatever the command left running


def _kill(pid: int, signo: int) -> None:
    try:
        os.kill(pid, signo)
    except ProcessLookupError:
        pass


def _read_status(status_r: int, init_status: int) -> int:
    data = os.read(status_r, 4)
    return struct.unpack("i", data)[0] if len(data) == 4 else init_status


def _exit_as(status: int) -> None:
    """End the supervisor the way the command ended, so `run` sees its exact status."""
    if os.WIFSIGNALED(status):
        signo = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the command's core, not ours
        if signo not in (signal.SIGKILL, signal.SIGSTOP):  # those cannot be caught anyway
            signal.signal(signo, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signo})
        os.kill(os.getpid(), signo)
        os._exit(128 + signo)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else EXIT_CANNOT_START)
