"""Worker processes that die with their parent, and one-line endings for interrupts and full disks.

``ifkit reproduce --jobs N`` starts N ``ifkit reproduce ... --jobs 1`` workers (``run_workers``). However the
parent ends, no worker is left running and writing results:

* SIGINT (Ctrl-C) or SIGTERM to the parent: it forwards SIGTERM to each worker's process group (a worker's own
  children included), waits up to ``GRACE`` seconds, sends SIGKILL to what is left, then exits with one line
  and code 128 + signal (130 for Ctrl-C), no traceback.
* SIGKILL to the parent (nothing can be forwarded): each worker asked Linux to send it SIGTERM when its parent
  dies (``prctl(PR_SET_PDEATHSIG)``, through ctypes); elsewhere a thread polls the parent's pid twice a second.
* A worker turns SIGTERM into ``Stopped``, so ``finally`` blocks run (``ResultsTable`` removes its temp file)
  and it exits quietly with 143: the parent prints the one line.

``guarded`` wraps a command: Ctrl-C or SIGTERM end it with that one line; an OSError ENOSPC/EDQUOT (a full disk
while writing a result) with one line naming the file, code 1 (the table on disk is the previous, complete one).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

PARENT_ENV = "IFKIT_WORKER_OF"  # set in a worker's environment: its parent's pid
GRACE = 5.0  # seconds a worker gets between SIGTERM and SIGKILL
_PR_SET_PDEATHSIG = 1


class Stopped(BaseException):
    """SIGTERM or SIGINT arrived (a BaseException, like KeyboardInterrupt: ``except Exception`` lets it pass)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped(signum)


@contextlib.contextmanager
def _signals_raise(*signums: int):
    """Inside: these signals raise Stopped (only the main thread can set handlers; elsewhere, nothing changes)."""
    try:
        old = {s: signal.signal(s, _raise_stopped) for s in signums}
    except ValueError:  # not the main thread
        old = {}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def run_workers(cmds: Sequence[Sequence[str]], grace: float = GRACE) -> list[int]:
    """Run each command as a worker in a process group of its own; their exit codes, in order.

    Raises:
        Stopped: SIGINT/SIGTERM arrived; every worker has been stopped (SIGTERM, then SIGKILL after ``grace``).
    """
    env = {**os.environ, PARENT_ENV: str(os.getpid())}
    procs: list[subprocess.Popen] = []
    with _signals_raise(signal.SIGINT, signal.SIGTERM):
        try:
            for cmd in cmds:
                # a session, hence a process group, of its own (Python >= 3.10; process_group= needs 3.11)
                procs.append(subprocess.Popen(list(cmd), env=env, start_new_session=True))
            return [p.wait() for p in procs]
        except BaseException:
            _stop(procs, grace)
            raise


def _stop(procs: Sequence[subprocess.Popen], grace: float) -> None:
    """SIGTERM to each worker's group, SIGKILL to the groups still there after ``grace`` s; reaps them. A second
    Ctrl-C meanwhile is ignored, so that the clean-up itself is never cut short."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
            for p in procs:
                if p.poll() is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(p.pid, sig)
            deadline = time.monotonic() + wait
            for p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(max(0.0, deadline - time.monotonic()))
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def die_with_parent(parent: int) -> None:
    """Get SIGTERM when process ``parent`` ends (PR_SET_PDEATHSIG on Linux, else a thread polling getppid)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
        if armed:
            if os.getppid() != parent:  # it died before prctl: the signal will never come
                os.kill(os.getpid(), signal.SIGTERM)
            return
    threading.Thread(target=_watch, args=(parent,), name="ifkit-parent-watch", daemon=True).start()


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)


def guarded(command: Callable[[], int], name: str) -> int:
    """Run ``command``; end an interrupt or a full disk with one line on stderr instead of a traceback.

    In a worker (``PARENT_ENV`` set) it first arranges to die with the parent, and ends quietly when stopped.
    Returns the command's code, 128 + signal when stopped (130: Ctrl-C, 143: SIGTERM), 1 when the disk is full.
    """
    worker = os.environ.get(PARENT_ENV)
    if worker:
        os.environ.pop(PARENT_ENV)  # not inherited by the worker's own children
        die_with_parent(int(worker))
    try:
        with _signals_raise(signal.SIGTERM):
            return command()
    except (Stopped, KeyboardInterrupt) as err:
        signum = err.signum if isinstance(err, Stopped) else int(signal.SIGINT)
        if not worker:
            print(f"{name}: stopped by {signal.Signals(signum).name}; finished rows are kept, run the same command "
                  "again to resume", file=sys.stderr, flush=True)
        return 128 + signum
    except OSError as err:
        if err.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise
        print(f"{name}: no space left on the device while writing {err.filename or 'a result'}; the table there "
              "keeps its previous rows and no temp file is left: free some space, then run the same command again",
              file=sys.stderr, flush=True)
        return 1


__all__ = ["GRACE", "PARENT_ENV", "Stopped", "die_with_parent", "guarded", "run_workers"]
