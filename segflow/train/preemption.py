"""SIGTERM as a pre-emption: training stops at a safe point, and the next run continues it.

Kubernetes evicting a pod, ``docker stop``, ``systemctl stop`` and Slurm pre-empting a job all
end a process with SIGTERM, then SIGKILL after a grace period (30 s in Kubernetes, 10 s in
docker). Python's default is to die at once, and Ray's driver handler turns it into a failure;
either way the run was lost. The train stage instead installs :class:`SigtermStop` when it
starts. A SIGTERM then only sets a flag, read where stopping is safe:

- between two training steps of the local loop (``should_stop`` of
  :func:`segflow.train.loop.train_epochs`): never half-way through writing a checkpoint, so
  the last one is whole;
- by the stage, before it replaces its outputs: a stopped run never replaces models/*.

Under Ray the driver only waits in Ray Train's ``fit``; that wait is :meth:`interruptible`: the
signal ends it at once and the caller stops the Ray run. What the workers last reported is a
complete checkpoint in storage, and resuming starts after it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Preempted(KeyboardInterrupt):
    """A SIGTERM ended a wait. A KeyboardInterrupt because Ray's ``ray.get`` polls for signals
    but lets only KeyboardInterrupt (and SystemExit) through, re-raised as its own: whoever
    catches it tells a pre-emption by :attr:`SigtermStop.signal`, not by this type."""


class SigtermStop:
    """The stop request of this process: which signal asked (None: none yet)."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._raise_at_once = False

    @classmethod
    def install(cls) -> SigtermStop:
        """A stop request that SIGTERM sets, from now on (main thread only, as Python's signal
        handlers; elsewhere one that is never set)."""
        stop = cls()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, stop._on_signal)
        return stop

    def __call__(self) -> bool:
        """Whether to stop: the loop's ``should_stop``."""
        return self.signal is not None

    def check(self) -> None:
        """Raise :class:`Preempted` if a stop was requested."""
        if self.signal is not None:
            raise Preempted(self.signal)

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """A blocking wait (Ray Train's ``fit``) that a stop request ends at once."""
        self.check()
        self._raise_at_once = True
        try:
            yield
        finally:
            self._raise_at_once = False

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signal = signal.Signals(signum).name
        if self._raise_at_once:
            self._raise_at_once = False  # a second SIGTERM must not interrupt the clean-up
            raise Preempted(self.signal)
