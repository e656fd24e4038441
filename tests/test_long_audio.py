import itertools
import math

import numpy as np
import pytest

from nemo_stt.engine.long_audio import iter_windows, owned_words
from nemo_stt.results import Word

RATE = 100


def windows_of(total_seconds: float, chunk: float, context: float, block: int = 37):
    signal = np.arange(int(total_seconds * RATE), dtype=np.float32)
    blocks = (signal[i:i + block] for i in range(0, len(signal), block))
    return signal, list(iter_windows(blocks, RATE, chunk, context))


@pytest.mark.parametrize("total", [0.5, 3.0, 10.0, 10.4, 10.6, 47.3, 120.0])
def test_cores_tile_the_input_and_windows_carry_their_context(total):
    signal, windows = windows_of(total, chunk=4.0, context=1.0)
    assert windows[0].core_start == 0 and math.isinf(windows[-1].core_end)
    for before, after in itertools.pairwise(windows):
        assert before.core_end == after.core_start
        assert after.core_end - after.core_start == 4.0 or math.isinf(after.core_end)
    for window in windows:
        first = round(window.offset * RATE)
        np.testing.assert_array_equal(window.audio, signal[first:first + len(window.audio)])
        assert window.offset == max(0.0, window.core_start - 1.0)
        window_end = window.offset + len(window.audio) / RATE
        assert window_end == pytest.approx(min(total, window.core_end + 1.0), abs=0.011)
    if len(windows) > 1:
        last_core = total - windows[-1].core_start
        assert 2.0 <= last_core < 6.0


def test_memory_is_bounded_by_a_window():
    _, windows = windows_of(600.0, chunk=10.0, context=2.0)
    assert max(len(w.audio) for w in windows) <= 17 * RATE


def test_each_word_is_owned_by_exactly_one_window():
    _, windows = windows_of(20.0, chunk=4.0, context=1.0)
    # A word every 0.7 s; each window "hears" every word that lies inside it.
    words = [Word(f"w{i}", i * 0.7, i * 0.7 + 0.4, 0.9) for i in range(28)]
    kept = []
    for window in windows:
        end = window.offset + len(window.audio) / RATE
        heard = [Word(w.word, w.start - window.offset, w.end - window.offset, w.conf)
                 for w in words if w.start >= window.offset and w.end <= end]
        kept += owned_words(window, heard)
    assert [w.word for w in kept] == [w.word for w in words]
    assert all(a.start == pytest.approx(b.start) for a, b in zip(kept, words, strict=True))
