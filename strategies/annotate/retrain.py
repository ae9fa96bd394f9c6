"""When to retrain: every N saved labels, every M minutes, never two at once.

MONAI Label has no built-in trigger; its endoscopy sample runs ``schedule`` + ``Timeloop`` from
``on_init_complete``. ``RetrainTriggers`` keeps that loop and the label count in one place and
funnels both (and nothing else) through :meth:`trigger`, which refuses while a training is running
(checked by the caller's ``is_training``, plus a local flag that covers the moment between starting
a training and its process being visible). The trainer's own file lock is the last guard.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

log = logging.getLogger(__name__)


class RetrainTriggers:
    """Count- and time-based retraining triggers around a ``start_training(reason)`` callable."""

    def __init__(
        self,
        start_training: Callable[[str], Any],
        is_training: Callable[[], bool],
        every_labels: int = 0,
        interval_minutes: float = 0.0,
        labels_since_train: Callable[[], int] | None = None,
        reset_count: Callable[[], None] | None = None,
    ) -> None:
        self.start_training = start_training
        self.is_training = is_training
        self.every_labels = int(every_labels)
        self.interval_minutes = float(interval_minutes)
        self.labels_since_train = labels_since_train or (lambda: 0)
        self.reset_count = reset_count or (lambda: None)
        self._lock = threading.Lock()
        self._starting = False
        self._loop = None
        self.started: list[str] = []  # reasons of the trainings this object started (for status/tests)

    def trigger(self, reason: str) -> bool:
        """Start a training unless one is running or being started; True if this call started one."""
        with self._lock:
            if self._starting:
                log.info("retrain (%s) skipped: a training is being started", reason)
                return False
            if self.is_training():
                log.info("retrain (%s) skipped: a training is running", reason)
                return False
            self._starting = True
        try:
            self.reset_count()
            result = self.start_training(reason)
            ok = result is not None and result is not False
            if ok:
                self.started.append(reason)
            log.info("retrain (%s): %s", reason, "started" if ok else f"not started ({result})")
            return ok
        finally:
            with self._lock:
                self._starting = False

    def on_label_saved(self) -> bool:
        """Call after each accepted label: triggers once the count since the last training reaches N."""
        if self.every_labels <= 0:
            return False
        n = self.labels_since_train()
        if n >= self.every_labels:
            return self.trigger(f"{n} new labels (retrain_every_labels={self.every_labels})")
        return False

    def on_schedule(self) -> bool:
        """The scheduled tick: retrain when labels arrived since the last training."""
        n = self.labels_since_train()
        if n <= 0:
            log.debug("scheduled retrain skipped: no new labels")
            return False
        return self.trigger(f"schedule every {self.interval_minutes:g} min ({n} new labels)")

    def start(self, tick_seconds: float = 30.0) -> bool:
        """Start the ``schedule`` + ``Timeloop`` loop (MONAI Label endoscopy pattern); False if disabled."""
        if self.interval_minutes <= 0 or self._loop is not None:
            return False
        import schedule
        from timeloop import Timeloop

        self._job = schedule.every(self.interval_minutes * 60).seconds.do(self.on_schedule)
        loop = Timeloop()

        @loop.job(interval=timedelta(seconds=tick_seconds))
        def _run_pending() -> None:
            schedule.run_pending()

        loop.start(block=False)
        self._loop = loop
        return True

    def stop(self) -> None:
        if self._loop is not None:
            import schedule

            schedule.cancel_job(self._job)
            self._loop.stop()
            self._loop = None
