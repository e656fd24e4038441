"""Long files: cutting a stream of audio into overlapping windows and merging their words by ownership.

Cores of `chunk` seconds lie back to back over the input; each window adds up to `context`
seconds on both sides of its core, so that words near a cut are heard whole. A word belongs to
the window whose core holds its centre, so no word is duplicated or dropped at a seam.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from ..results import Word


@dataclass(frozen=True, slots=True)
class Window:
    index: int
    offset: float
    """Seconds from the start of the input to the window's first sample."""
    core_start: float
    core_end: float
    """Seconds of the input the window owns; the last window's core_end is infinite."""
    audio: np.ndarray


def iter_windows(blocks: Iterable[np.ndarray], sample_rate: int, chunk: float, context: float) -> Iterator[Window]:
    """Windows over a stream of audio blocks, yielded as soon as their audio has arrived.

    Only the samples from the next window's start onwards are kept, so memory is bounded by about
    one window whatever the stream's length. The last core is between half a chunk and one and a
    half chunks long, so that no window is a sliver.
    """
    core = max(1, round(chunk * sample_rate))
    margin = round(context * sample_rate)
    tail = core // 2
    pieces: list[np.ndarray] = []
    buffered = 0
    buffer_start = 0  # input sample index of the first buffered sample
    index = 0

    def cut(end: int | None) -> Window:
        nonlocal pieces, buffered, buffer_start
        buffer = np.concatenate(pieces) if len(pieces) != 1 else pieces[0]
        start = max(0, index * core - margin)
        stop = len(buffer) if end is None else min(len(buffer), end - buffer_start)
        window = Window(index, start / sample_rate, index * core / sample_rate,
                        float("inf") if end is None else (index + 1) * core / sample_rate,
                        buffer[start - buffer_start:stop].copy())
        next_start = max(0, (index + 1) * core - margin)
        pieces = [buffer[next_start - buffer_start:]]
        buffered = len(pieces[0])
        buffer_start = next_start
        return window

    for block in blocks:
        pieces.append(block)
        buffered += len(block)
        while buffer_start + buffered >= (index + 1) * core + max(margin, tail):
            yield cut((index + 1) * core + margin)
            index += 1
    total = buffer_start + buffered
    if total == 0:
        return
    while total >= (index + 1) * core + tail:
        yield cut((index + 1) * core + margin)
        index += 1
    yield cut(None)


def owned_words(window: Window, words: Iterable[Word]) -> list[Word]:
    """The words of a window's transcript (times relative to the window) that its core owns, in input time."""
    kept = []
    for word in words:
        start, end = word.start + window.offset, word.end + window.offset
        centre = (start + end) / 2
        if window.core_start <= centre < window.core_end:
            kept.append(Word(word.word, start, end, word.conf))
    return kept
