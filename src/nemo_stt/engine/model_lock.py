"""Who may run the model at a time: offline batches together, a streaming step alone.

The inference loops' forwards may overlap (CONCURRENCY > 0: measured faster on CPU, each loop with
its own threads). A cache-aware streaming step may switch the encoder's attention context to the
look-ahead it streams with and uses the model's shared decoding objects, so it runs alone; a step
that waits goes before forwards that arrive after it, so that streams keep their latency under load.
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ModelLock:
    def __init__(self):
        self._cond = threading.Condition()
        self._sharing = 0
        self._exclusive = False
        self._exclusive_waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._exclusive_waiting:
                self._cond.wait()
            self._sharing += 1
        try:
            yield
        finally:
            with self._cond:
                self._sharing -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._exclusive_waiting += 1
            while self._exclusive or self._sharing:
                self._cond.wait()
            self._exclusive_waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()
