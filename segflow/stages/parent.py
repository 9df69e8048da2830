"""A stage dies with the ``dvc`` that started it: no orphan writes outputs after DVC has gone."""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import threading
from pathlib import Path

#: prctl(2) option: the signal the kernel sends this process when its parent dies.
PR_SET_PDEATHSIG = 1
#: Set by DVC in the environment of every stage command it runs (dvc.stage.run).
DVC_STAGE_ENV = "DVC_STAGE"
#: Shells DVC may start a stage's command with (``$SHELL -c cmd``).
SHELLS = frozenset({"sh", "ash", "dash", "bash", "zsh", "ksh", "mksh", "fish", "busybox"})


def die_with_parent() -> None:
    """Have the kernel send this stage SIGTERM when the ``dvc`` that started it dies (Linux;
    only under DVC: a stage script run by hand keeps the usual rules, ``nohup`` included).

    Why: ``docker stop``, Kubernetes, systemd and Slurm often signal only the main process, and
    ``dvc`` itself dies on SIGTERM without passing it on. Its stage would go on orphaned: a
    training keeps running for hours, later replaces models/* behind a pipeline that has
    ended, and an immediate ``dvc repro`` trains a second copy beside it. With
    ``PR_SET_PDEATHSIG`` the stage gets the SIGTERM the parent got and stops the way it stops
    for any SIGTERM (the train stage: at its last checkpoint, resumable; the others: at once,
    their atomic writes leaving no partial output).

    DVC runs a stage's command as ``$SHELL -c cmd``; bash and zsh replace themselves with the
    command, but dash (``/bin/sh`` on Debian and Ubuntu) stays as the parent, and a shell does
    not die with dvc. Then the shell's parent is watched too: a thread waits on its pidfd and
    sends this process SIGTERM when it ends. (The kernel ties the signal to the thread that
    started the process; DVC starts stages from its main thread.)
    """
    if not sys.platform.startswith("linux") or DVC_STAGE_ENV not in os.environ:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return
    parent = os.getppid()
    if _is_shell(parent):
        _signal_when_gone(_parent_of(parent))


def _is_shell(pid: int) -> bool:
    """Whether ``pid`` is a shell running one command (``sh -c ...``)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return Path(argv[0].decode(errors="replace")).name in SHELLS and b"-c" in argv[1:]


def _parent_of(pid: int) -> int:
    try:
        # /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def _signal_when_gone(pid: int) -> None:
    if pid <= 1:  # no parent left to watch, or init
        return
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # gone already, or a kernel without pidfds (< 5.3)
        return

    def wait() -> None:
        select.select([fd], [], [])  # readable once the process has ended
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait, name="segflow-parent-watch", daemon=True).start()
