"""Stopping a run: on request (:class:`TrainingStopped`), by a signal that lets the step
under way finish and be checkpointed (:class:`StopOnSignal`, :class:`TrainingInterrupted`),
or at once on a second signal (:class:`StoppedAtOnce`)."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class TrainingStopped(Exception):
    """Raised by :func:`fit` (on every rank) when its ``stop`` callback asked to stop."""

    def __init__(self, step: int) -> None:
        super().__init__(f"training stopped on request after step {step}")
        self.step = step


class TrainingInterrupted(TrainingStopped):
    """Raised by :func:`fit` after SIGINT / SIGTERM: the step under way was finished and
    checkpointed (``checkpoint``; None when no step had been done), so running again with
    ``resume`` continues from it."""

    def __init__(self, step: int, signum: int, checkpoint: Path | None,
                 before_step: bool = False) -> None:
        name = signal.Signals(signum).name
        if checkpoint is None:
            text = f"{name} received before the first step: nothing to checkpoint"
        elif before_step:
            text = f"{name} received before step {step + 1} began: the run stays at {checkpoint}"
        else:
            text = f"{name} received: stopped after step {step}, checkpointed in {checkpoint}"
        Exception.__init__(self, text)
        self.step, self.signum, self.checkpoint = step, signum, checkpoint


class StoppedAtOnce(KeyboardInterrupt):
    """A second SIGINT / SIGTERM: the run stops where it is (``signum`` says which)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"{signal.Signals(signum).name} received again: stopped at once")
        self.signum = signum


class StopOnSignal:
    """While active (``with``), SIGINT and SIGTERM ask the run to stop after the step under
    way instead of killing it mid-step (``received`` holds the signal; the loop acts on it).
    A second signal stops at once (:class:`StoppedAtOnce`), except while ``busy()`` names
    work that cannot be cut without losing more than the step (an update, a checkpoint
    being written): that is finished first, and only a third signal forces the stop. Only
    the main thread may handle signals: elsewhere (a run inside a worker thread) this does
    nothing and the signals keep their handlers."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, say: Callable[[str], None] | None = None,
                 action: str = "checkpointing it", busy: Callable[[], str | None] | None = None
                 ) -> None:
        self.received: int | None = None
        self._say = say or (lambda text: log.warning("%s", text))
        self._action, self._busy = action, busy
        self._count = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        self._count += 1
        name = signal.Signals(signum).name
        if self._count == 1:
            self.received = signum
            self._say(f"{name} received: finishing the step under way, {self._action}, then "
                      "stopping (send it again to stop at once)")
            return
        busy = self._busy() if self._busy is not None and self._count == 2 else None
        if busy:
            self._say(f"{name} received again: {busy} is under way, and cutting it would lose "
                      "everything since the last checkpoint; finishing it first (a third "
                      "signal forces the stop)")
            return
        self._restore()
        raise StoppedAtOnce(signum)

    def __enter__(self) -> StopOnSignal:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __exit__(self, *exc) -> None:
        self._restore()
