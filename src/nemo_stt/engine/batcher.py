"""Dynamic batching of transcription requests from every front end.

Contract:
- `submit(audio)` puts a piece of work into one queue and returns a `concurrent.futures.Future` at
  once. The queue is bounded by the engine's admission of whole requests (see `admission`), not here:
  every piece of an admitted request must run.
- A piece whose future was cancelled (its client left) before its forward is dropped, and counted
  in the log.
- `workers` inference loops each take the oldest waiting request, add the waiting requests closest
  to it in length (to limit padding) until `max_batch_items` or `max_batch_seconds` of padded audio,
  waiting for more while they arrive at most `max_wait` apart, run one forward and resolve each
  caller's future.
  One loop forms a batch at a time (as a scheduler thread would), so that loops freed together do
  not split the requests arriving together between them.
- A batch whose forward fails is retried one request at a time, so that a bad request fails alone.
"""

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


_IDLE: list = []  # what `_take_batch` returns when the loops have been idle for `release_after_idle`


@dataclass(slots=True)
class _Request:
    audio: np.ndarray
    future: Future
    enqueued: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class BatchPolicy:
    workers: int = 1
    """Inference loops running in parallel (each with its own torch threads on CPU)."""
    max_batch_items: int = 1
    max_batch_seconds: float = 60.0
    """Padded audio per batch: longest item x items."""
    max_wait: float = 0.005
    """Seconds a forming batch waits for the next request (see `Batcher._collect`)."""
    release_after_idle: float = 10.0
    """Seconds without requests after which the loops' free memory goes back to the system (`on_idle`)."""


class Batcher:
    def __init__(self, run_batch: Callable[[list[np.ndarray]], Sequence], sample_rate: int, policy: BatchPolicy,
                 on_idle: Callable[[], None] | None = None):
        self._run_batch = run_batch
        self._on_idle = on_idle
        self._idle_handled = True  # nothing to release before the first batch
        self._rate = sample_rate
        self.policy = policy
        self._pending: list[_Request] = []
        self._cond = threading.Condition()
        self._closed = False
        self._collecting = False  # a loop is forming a batch
        self._dropped = 0  # cancelled pieces taken out of the queue, not yet logged
        self._seconds_per_audio_second = 0.05  # running estimate, for Retry-After
        # Called after each successful forward with (items, forward seconds, audio seconds): for metrics.
        self.on_batch: Callable[[int, float, float], None] | None = None
        self._threads = [
            threading.Thread(target=self._loop, name=f"inference-{i}", daemon=True) for i in range(policy.workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, audio: np.ndarray) -> Future:
        """Queue `audio` for a forward; the future gives its output."""
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is shut down")
            self._pending.append(_Request(audio, future))
            self._cond.notify_all()
        return future

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._pending)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for request in self._pending:
                request.future.cancel()
            self._pending.clear()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=60)

    def seconds_of_work(self) -> float:
        """Estimated seconds until the loops have run what is queued now."""
        with self._cond:
            waiting = sum(len(r.audio) for r in self._pending) / self._rate
        return waiting * self._seconds_per_audio_second / max(1, self.policy.workers)

    def _take_batch(self) -> list[_Request] | None:
        with self._cond:
            # One loop forms a batch at a time (see the module's contract).
            while (self._collecting or not self._pending) and not self._closed:
                if self._collecting or self._idle_handled or self._on_idle is None:
                    self._cond.wait()
                elif not self._cond.wait(self.policy.release_after_idle) and not (self._pending or self._idle_handled):
                    self._idle_handled = True  # one loop handles it, once per idle spell
                    return _IDLE
            if self._closed:
                return None
            self._drop_cancelled()
            if not self._pending:
                return []
            self._idle_handled = False
            self._collecting = True
            try:
                return self._collect()
            finally:
                self._collecting = False
                self._cond.notify_all()  # the next free loop may form a batch; room for blocked submitters

    def _drop_cancelled(self) -> None:
        kept = [r for r in self._pending if not r.future.cancelled()]
        self._dropped += len(self._pending) - len(kept)
        self._pending = kept

    def _collect(self) -> list[_Request]:
        """The oldest request and those closest to it in length, waiting for more while they keep coming.

        The wait ends `max_wait` after the last arrival: a lone request waits `max_wait`, a batch at
        most `max_wait x (max_batch_items - 1)`. The answers of one batch come back as a group of
        requests spread over the clients' round trips, which a fixed wait from the first would cut.
        """
        first = self._pending.pop(0)
        batch = [first]
        deadline = time.monotonic() + self.policy.max_wait
        while len(batch) < self.policy.max_batch_items and not self._closed:
            if not self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)  # woken by a submission, or by anything else: look again
                continue
            candidate = self._closest(first, batch)
            if candidate is None:
                break
            batch.append(candidate)
            deadline = time.monotonic() + self.policy.max_wait
        return batch

    def _closest(self, first: _Request, batch: list[_Request]) -> _Request | None:
        """The waiting request nearest in length to `first` that keeps the batch within its padded-audio cap."""
        target = len(first.audio)
        best_index = min(range(len(self._pending)), key=lambda i: abs(len(self._pending[i].audio) - target))
        candidate = self._pending[best_index]
        longest = max(len(candidate.audio), *(len(r.audio) for r in batch))
        if longest * (len(batch) + 1) > self.policy.max_batch_seconds * self._rate:
            return None
        return self._pending.pop(best_index)

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if batch is _IDLE:
                self._on_idle()
                continue
            live = [r for r in batch if r.future.set_running_or_notify_cancel()]
            with self._cond:
                dropped, self._dropped = self._dropped + len(batch) - len(live), 0
            if dropped:
                log.info("skipped %d queued piece(s) of cancelled requests (their clients left)", dropped)
            if live:
                self._run(live)

    def _run(self, batch: list[_Request]) -> None:
        started = time.monotonic()
        try:
            outputs = self._run_batch([r.audio for r in batch])
        except Exception as error:
            if len(batch) == 1:
                batch[0].future.set_exception(error)
                return
            log.warning("a batch of %d failed (%s); retrying one by one", len(batch), error)
            for request in batch:
                self._run([request])
            return
        audio_seconds = sum(len(r.audio) for r in batch) / self._rate
        elapsed = time.monotonic() - started
        if self.on_batch is not None:
            self.on_batch(len(batch), elapsed, audio_seconds)
        if audio_seconds > 0:
            observed = elapsed / audio_seconds
            self._seconds_per_audio_second = 0.8 * self._seconds_per_audio_second + 0.2 * observed
        for request, output in zip(batch, outputs, strict=True):
            request.future.set_result(output)
