"""The threads an NSDB client owns: one notification thread and one per leadership term.

Both backends deliver every watch callback on a single thread per client, in the order
the changes were observed, so a subscriber never sees an object go back in time. The
leader thread runs a participant's `on_elected` for as long as it leads; losing
leadership sets the event it was given, and the function is expected to return.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

_STOP = object()


class Notifier:
    """A FIFO of tasks run on one daemon thread; a failing task is logged, never fatal."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stopped = False
        self._thread.start()

    def submit(self, task: Callable[[], None]) -> None:
        if not self._stopped:
            self._queue.put(task)

    def in_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def run_sync(self, task: Callable[[], None], timeout: float) -> bool:
        """Run `task` on the notification thread and wait for it (inline when already
        there); False if it did not finish within `timeout`. The task's exception, if
        any, is re-raised here."""
        if self.in_thread():
            task()
            return True
        done = threading.Event()
        failure: list[BaseException] = []

        def wrapped() -> None:
            try:
                task()
            except BaseException as exc:  # handed back to the waiting caller
                failure.append(exc)
            finally:
                done.set()

        self.submit(wrapped)
        if not done.wait(timeout):
            return False
        if failure:
            raise failure[0]
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the queued tasks, then end the thread."""
        if self._stopped:
            return
        self._stopped = True
        self._queue.put(_STOP)
        if not self.in_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            task = self._queue.get()
            if task is _STOP:
                return
            try:
                task()  # type: ignore[operator]
            except Exception:
                log.exception("NSDB notification task failed")


class LeaderRunner:
    """Runs `on_elected(step_down_event)` on its own thread during one leadership term.

    `on_term_end(voluntary)` is called on that thread after the function returns;
    `voluntary` is True when the function returned without being asked to, which the
    election treats as resigning.
    """

    def __init__(self, name: str, on_term_end: Callable[[bool], None]) -> None:
        self._name = name
        self._on_term_end = on_term_end
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._event: threading.Event | None = None

    @property
    def leading(self) -> bool:
        with self._lock:
            return self._event is not None and not self._event.is_set()

    @property
    def running(self) -> bool:
        with self._lock:
            return self._thread is not None

    def elect(self, on_elected: Callable[[object], None]) -> None:
        """Start a term unless one is still running (a term that was asked to end
        must finish before the next starts, so two never overlap)."""
        with self._lock:
            if self._thread is not None:
                return
            event = threading.Event()
            thread = threading.Thread(
                target=self._term, args=(on_elected, event), name=self._name, daemon=True
            )
            self._event, self._thread = event, thread
            thread.start()  # under the lock: step_down() must never see it unstarted

    def step_down(self, wait: float | None = None) -> None:
        """Ask the current term to end; with `wait`, wait that long for it."""
        with self._lock:
            event, thread = self._event, self._thread
        if event is not None:
            event.set()
        if wait is not None and thread is not None and thread is not threading.current_thread():
            thread.join(wait)

    def _term(self, on_elected: Callable[[object], None], event: threading.Event) -> None:
        try:
            on_elected(event)
        except Exception:
            log.exception("leader function of %s failed", self._name)
        voluntary = not event.is_set()
        event.set()
        with self._lock:
            self._thread = None
            self._event = None
        try:
            self._on_term_end(voluntary)
        except Exception:
            log.exception("ending the leadership term of %s failed", self._name)
