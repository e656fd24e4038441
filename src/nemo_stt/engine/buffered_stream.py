"""Streaming with any model: a trimmed audio buffer re-decoded as it grows, words confirmed by agreement.

Each decode goes through the engine's batcher, so the decodes of all connections are batched
together. The buffer grows by `min_chunk` seconds per decode, whatever the arrival speed. A word is
confirmed when two successive decodes agree on it (or when more than `max_words_in_buffer` words wait
behind it); the buffer is trimmed after confirmed words once it is longer than `buffer_trimming_sec`,
and after each final.
"""

import asyncio
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from ..results import Transcript, Word
from .admission import QueueFull
from .stream import Segment, Stream, StreamingParams

# The end of a decoded buffer whose words may still change with more audio.
UNSETTLED_SECONDS = 0.3


class BufferedStream(Stream):
    def __init__(self, decode: Callable[[np.ndarray], Future], sample_rate: int, params: StreamingParams):
        super().__init__(sample_rate, params.pause_for_final, UNSETTLED_SECONDS)
        self._decode = decode
        self.params = params
        self._unit = max(1, round(params.min_chunk * sample_rate))
        self._buffer = np.zeros(0, dtype=np.float32)
        self._buffer_start = 0.0  # stream time of the buffer's first sample
        self._decoded_up_to = 0  # samples of the stream covered by the last decode
        self._confirmed: list[Word] = []  # confirmed, not yet sent in a final
        self._tentative: list[Word] = []  # the last decode's words after the confirmed ones

    @property
    def decoded_seconds(self) -> float:
        return self._decoded_up_to / self.rate

    def ready(self) -> bool:
        return self._queue.samples >= self._unit

    def _pending_words(self) -> list[Word]:
        return self._confirmed + self._tentative

    async def _decode_unit(self) -> None:
        self._buffer = np.concatenate([self._buffer, self._queue.take(self._unit)])
        await self._decode_buffer()
        words = self._pending_words()
        buffered = len(self._buffer) / self.rate
        if not words and buffered > self.params.pause_for_final + 1.0:
            self._trim(self._buffer_start + buffered - 1.0)  # silence: keep the last second
        elif buffered > self.params.buffer_trimming_sec and self._confirmed:
            self._trim(self._confirmed[-1].end)

    async def _decode_rest(self) -> None:
        self._buffer = np.concatenate([self._buffer, self._queue.take(self._queue.samples)])
        if self._buffer_start + len(self._buffer) / self.rate > self.decoded_seconds or self._tentative:
            await self._decode_buffer(final=True)

    async def _decode_buffer(self, final: bool = False) -> None:
        end = round(self._buffer_start * self.rate) + len(self._buffer)
        if not len(self._buffer):
            self._decoded_up_to = end
            return
        while True:
            try:
                future = self._decode(self._buffer)
                break
            except QueueFull as full:
                await asyncio.sleep(min(full.retry_after, 0.2))  # the engine is saturated: this unit waits
        transcript: Transcript = await asyncio.wrap_future(future)
        self._decoded_up_to = end
        offset = self._buffer_start
        confirmed_end = self._confirmed[-1].end if self._confirmed else self._buffer_start
        fresh = [Word(w.word, w.start + offset, w.end + offset, w.conf) for w in transcript.words
                 if w.start + offset >= confirmed_end - 0.05]
        if final:
            self._confirmed += fresh
            self._tentative = []
            return
        agreed = 0
        while (agreed < len(fresh) and agreed < len(self._tentative)
               and fresh[agreed].word == self._tentative[agreed].word):
            agreed += 1
        self._confirmed += fresh[:agreed]
        pending = fresh[agreed:]
        overflow = max(0, len(pending) - self.params.max_words_in_buffer)
        self._confirmed += pending[:overflow]
        self._tentative = pending[overflow:]

    def _close(self, count: int) -> Segment:
        closed = self._pending_words()[:count]
        from_tentative = max(0, count - len(self._confirmed))
        self._confirmed = self._confirmed[count:]
        self._tentative = self._tentative[from_tentative:]
        if closed:
            self._trim(closed[-1].end)
        return Segment(" ".join(w.word for w in closed), tuple(closed))

    def _trim(self, at: float) -> None:
        cut = int((at - self._buffer_start) * self.rate)
        if cut > 0:
            self._buffer = self._buffer[cut:]
            self._buffer_start += cut / self.rate
