"""Streaming with any model: a trimmed audio buffer re-decoded as it grows, words confirmed by agreement.

Each decode goes through the engine's batcher, so the decodes of all connections are batched
together. A word is confirmed when two successive decodes agree on it (or when more than
`max_words_in_buffer` words wait behind it); the buffer is trimmed after confirmed words once it
is longer than `buffer_trimming_sec`; a final is sent when nothing new was said for
`pause_for_final` seconds.
"""

import asyncio
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from ..results import Transcript, Word
from .admission import QueueFull
from .speech_energy import SpeechEnergy

# The end of a decoded buffer whose words may still change with more audio.
UNSETTLED_SECONDS = 0.3


@dataclass(frozen=True)
class StreamingParams:
    min_chunk: float = 0.5
    buffer_trimming_sec: float = 8.0
    pause_for_final: float = 1.5
    max_words_in_buffer: int = 4


@dataclass(frozen=True)
class Segment:
    """A final: its text and words, times in seconds from the start of the stream."""

    text: str
    words: tuple[Word, ...]

    @property
    def start(self) -> float:
        return self.words[0].start if self.words else 0.0

    @property
    def end(self) -> float:
        return self.words[-1].end if self.words else 0.0


class BufferedStream:
    def __init__(self, decode: Callable[[np.ndarray], Future], sample_rate: int, params: StreamingParams):
        self._decode = decode
        self.rate = sample_rate
        self.params = params
        self._chunks: list[np.ndarray] = []
        self._buffer = np.zeros(0, dtype=np.float32)
        self._buffer_start = 0.0  # stream time of the buffer's first sample
        self._received = 0  # samples since the start of the stream
        self._energy = SpeechEnergy(sample_rate)
        self._decoded_up_to = 0  # samples of the stream covered by the last decode
        self._confirmed: list[Word] = []  # confirmed, not yet sent in a final
        self._tentative: list[Word] = []  # the last decode's words after the confirmed ones

    @property
    def decoded_seconds(self) -> float:
        """Seconds of the stream covered by the last decode."""
        return self._decoded_up_to / self.rate

    def push(self, audio: np.ndarray) -> None:
        self._chunks.append(audio)
        self._received += len(audio)
        self._energy.push(audio)

    def ready(self) -> bool:
        return (self._received - self._decoded_up_to) / self.rate >= self.params.min_chunk

    def partial_text(self) -> str:
        return " ".join(w.word for w in self._confirmed + self._tentative)

    async def step(self) -> Segment | None:
        """Decode the buffer with the new audio; return a final when a pause closed one."""
        await self._decode_buffer()
        words = self._confirmed + self._tentative
        silence = self._buffer_start + len(self._buffer) / self.rate - (words[-1].end if words else 0.0)
        if words and silence >= self.params.pause_for_final:
            return self._close_segment(keep_from=words[-1].end)
        if not words and len(self._buffer) / self.rate > self.params.pause_for_final + 1.0:
            self._trim(self._buffer_start + len(self._buffer) / self.rate - 1.0)  # silence: keep the last second
        elif len(self._buffer) / self.rate > self.params.buffer_trimming_sec and self._confirmed:
            self._trim(self._confirmed[-1].end)
        return None

    def pause_final(self) -> Segment | None:
        """The words since the last final, once `pause_for_final` seconds of received audio follow them
        and the audio not yet decoded is quiet: no need to wait for the next decode."""
        words = self._confirmed + self._tentative
        if not words:
            return None
        settled = self.decoded_seconds - UNSETTLED_SECONDS
        if self._received / self.rate - words[-1].end >= self.params.pause_for_final \
                and self._energy.last_loud_seconds <= settled:
            return self._close_segment(keep_from=words[-1].end)
        return None

    async def finish(self) -> Segment:
        """The last final, with everything said since the previous one."""
        if self._received > self._decoded_up_to or self._chunks:
            await self._decode_buffer(final=True)
        return self._close_segment(keep_from=None)

    async def _decode_buffer(self, final: bool = False) -> None:
        if self._chunks:
            self._buffer = np.concatenate([self._buffer, *self._chunks])
            self._chunks = []
        if not len(self._buffer):
            self._decoded_up_to = self._received
            return
        while True:
            try:
                future = self._decode(self._buffer)
                break
            except QueueFull as full:
                # The engine is saturated: wait, then decode with whatever audio has arrived by then.
                await asyncio.sleep(min(full.retry_after, 0.2))
                if not final:
                    return
        self._decoded_up_to = self._received
        transcript: Transcript = await asyncio.wrap_future(future)
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

    def _close_segment(self, keep_from: float | None) -> Segment:
        words = tuple(self._confirmed + self._tentative)
        self._confirmed, self._tentative = [], []
        if keep_from is not None:
            self._trim(keep_from)
        return Segment(" ".join(w.word for w in words), words)

    def _trim(self, at: float) -> None:
        cut = int((at - self._buffer_start) * self.rate)
        if cut > 0:
            self._buffer = self._buffer[cut:]
            self._buffer_start += cut / self.rate
