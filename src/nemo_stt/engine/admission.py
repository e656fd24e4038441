"""Admission of whole requests: at most `limit` requests are in the engine at once.

A request (an upload, a task, a streaming decode) is admitted or refused as a whole, before any of
its work is queued; once admitted, all of its pieces (VAD segments, long-file windows) run to the end
whatever their number. So a file with hundreds of pauses needs one place, not one per pause, and a
refusal only ever means that the server is busy: the same request is accepted once others finish.
"""

import threading
from collections.abc import Callable


class QueueFull(RuntimeError):
    """The engine holds as many requests as it admits; the caller should retry later."""

    def __init__(self, retry_after: float):
        super().__init__(f"the server is busy with other transcriptions; retry in {retry_after:.0f} s")
        self.retry_after = retry_after


class Ticket:
    """An admitted request's place; `release` (or leaving the `with` block) gives it back, once."""

    def __init__(self, admission: "Admission"):
        self._admission = admission
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._admission._leave()

    def hand_over(self) -> "Ticket":
        """The same place under a new ticket (for work that outlives its caller); this one is then spent."""
        with self._lock:
            if self._released:
                raise RuntimeError("this place was already given back")
            self._released = True
        return Ticket(self._admission)

    def __enter__(self) -> "Ticket":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Admission:
    def __init__(self, limit: int, retry_after: Callable[[], float]):
        """`retry_after`: seconds until the work already admitted is likely done (for QueueFull)."""
        self.limit = limit
        self._retry_after = retry_after
        self._active = 0
        self._cond = threading.Condition()

    @property
    def active(self) -> int:
        return self._active

    def try_enter(self) -> Ticket:
        """A place for one request now, or QueueFull when every place is taken."""
        with self._cond:
            if self._active >= self.limit:
                raise QueueFull(max(1.0, self._retry_after()))
            self._active += 1
        return Ticket(self)

    def enter(self) -> Ticket:
        """A place for one request, waiting for one to be free (callers that queue rather than refuse)."""
        with self._cond:
            while self._active >= self.limit:
                self._cond.wait()
            self._active += 1
        return Ticket(self)

    def _leave(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify()
