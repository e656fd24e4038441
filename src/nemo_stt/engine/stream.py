"""What every streaming engine shares: the audio a stream has received, the pause rule that closes finals,
and the assembly of finals from words.

A stream decodes its audio in units of a fixed length (a cache-aware chunk, a buffered decode's
`min_chunk`), one unit per step, however fast the audio arrives. Finals are decided on the audio's
own time line, so that a client that streams a file faster than real time (or flushes a backlog after
reconnecting) gets the same finals as one that streams it in real time:

- two decoded words with `pause_for_final` seconds or more between them end a final at the first one;
- decoded audio that holds no word for `pause_for_final` seconds after the last word ends one;
- so does received audio, before it is decoded, when it stays quiet (see `SpeechEnergy`) from where
  the decoded words are settled to `pause_for_final` seconds after the last word: a final then does not
  wait for the decoding of its last unit.
"""

from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..results import Word
from .speech_energy import SpeechEnergy


@dataclass(frozen=True)
class StreamingParams:
    engine: str = "auto"
    """`auto` (cache-aware when the model allows it), `cache_aware` or `buffered`."""
    lookahead_ms: float | None = None
    """Cache-aware: chunk length in ms (the closest the model was trained with); None, the model's default."""
    max_batch: int = 64
    """Cache-aware: most streams encoded in one batched step."""
    min_chunk: float = 0.5
    """Buffered: seconds of new audio per decode."""
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


class AudioQueue:
    """Received audio not yet taken by the decoder, as the arrays it came in (no copy until taken)."""

    def __init__(self):
        self._blocks: deque[np.ndarray] = deque()
        self.samples = 0

    def push(self, audio: np.ndarray) -> None:
        if len(audio):
            self._blocks.append(audio)
            self.samples += len(audio)

    def take(self, samples: int) -> np.ndarray:
        """The first `samples` samples (or all there is), removed from the queue."""
        taken, count = [], 0
        while self._blocks and count < samples:
            block = self._blocks.popleft()
            if count + len(block) > samples:
                block, rest = block[: samples - count], block[samples - count :]
                self._blocks.appendleft(rest)
            taken.append(block)
            count += len(block)
        self.samples -= count
        if not taken:
            return np.zeros(0, dtype=np.float32)
        return taken[0] if len(taken) == 1 else np.concatenate(taken)


class Stream(ABC):
    """One connection's stream. Not thread-safe: one caller pushes, steps and finishes it."""

    def __init__(self, sample_rate: int, pause_for_final: float, unsettled_seconds: float):
        self.rate = sample_rate
        self.pause_for_final = pause_for_final
        self.unsettled_seconds = unsettled_seconds
        """The end of the decoded audio whose words may still come with the next unit."""
        self._queue = AudioQueue()
        self._received = 0
        self._energy = SpeechEnergy(sample_rate)

    # What the front end calls -------------------------------------------------------------------------

    def push(self, audio: np.ndarray) -> None:
        """Add received audio (mono float32 at the engine's rate)."""
        self._queue.push(audio)
        self._received += len(audio)
        self._energy.push(audio)

    @property
    def backlog_seconds(self) -> float:
        """Received audio that the decoder has not taken yet."""
        return self._queue.samples / self.rate

    @property
    @abstractmethod
    def decoded_seconds(self) -> float:
        """Seconds of the stream covered by the decoding so far."""

    @abstractmethod
    def ready(self) -> bool:
        """Whether a whole unit of audio waits for a step."""

    async def step(self) -> list[Segment]:
        """Decode one unit; the finals that closed."""
        await self._decode_unit()
        return self.pause_finals()

    def pause_finals(self) -> list[Segment]:
        """The finals that the pause rule closes now (see the module's docstring)."""
        finals = []
        while True:
            words = self._pending_words()
            if not words:
                return finals
            gap = next((i for i in range(len(words) - 1)
                        if words[i + 1].start - words[i].end >= self.pause_for_final), None)
            if gap is not None:
                finals.append(self._close(gap + 1))
                continue
            last_end = words[-1].end
            pause_end = last_end + self.pause_for_final
            settled = self.decoded_seconds - self.unsettled_seconds
            if self.decoded_seconds >= pause_end or not self._energy.loud_between(settled, pause_end):
                finals.append(self._close(len(words)))
                continue
            return finals

    def partial_text(self) -> str:
        return " ".join(word.word for word in self._pending_words())

    async def finish(self) -> list[Segment]:
        """Decode everything received; the finals it closes, the last one always (possibly empty)."""
        finals = []
        while self.ready():
            finals += await self.step()
        await self._decode_rest()
        finals += self.pause_finals()
        words = self._pending_words()
        if words or not finals:
            finals.append(self._close(len(words)))
        return finals

    # What each engine provides ------------------------------------------------------------------------

    @abstractmethod
    async def _decode_unit(self) -> None:
        """Decode the next unit of queued audio."""

    @abstractmethod
    async def _decode_rest(self) -> None:
        """Decode whatever audio is left, the stream having ended."""

    @abstractmethod
    def _pending_words(self) -> list[Word]:
        """The decoded words since the last final, times from the start of the stream."""

    @abstractmethod
    def _close(self, count: int) -> Segment:
        """A final of the first `count` pending words, which are then no longer pending."""
