"""Long files in windows and VAD on the demo model: every word once, in order, at the time it was spoken."""

import io
import itertools
import wave

import jiwer
import numpy as np
import pytest

from nemo_stt.audio import decode_audio
from nemo_stt.engine import Engine, EngineConfig, VadConfig

from .conftest import FIXTURES

RATE = 16000


def as_wav(audio: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def utterances(demo_engine, fixture_texts):
    """Each fixture's audio with the words and times the model gives it alone."""
    result = []
    for name in fixture_texts:
        audio = decode_audio(FIXTURES / name, RATE)
        result.append((audio, demo_engine.transcribe(audio).words))
    return result


def compose(utterances, gaps: list[float]) -> tuple[np.ndarray, list[tuple[str, float]]]:
    """Utterances placed after the given silences; returns the audio and each word with where it was placed."""
    pieces, placed, cursor = [], [], 0.0
    for (audio, words), gap in zip(utterances, gaps, strict=True):
        pieces += [np.zeros(int(gap * RATE), dtype=np.float32), audio]
        cursor += gap
        placed += [(w.word, cursor + w.start) for w in words]
        cursor += len(audio) / RATE
    return np.concatenate(pieces), placed


def assert_words_where_placed(transcript, placed, tolerance=0.3):
    """Every placed word comes out once, in order, at its time.

    The small demo model hears a few words differently with other audio around them (a substitution,
    a merged word), so the words are aligned rather than compared one to one: the words that align
    must be at their time, and there is no room for the words a seam would drop or repeat.
    """
    got, expected = [w.word for w in transcript.words], [word for word, _ in placed]
    starts = [w.start for w in transcript.words]
    assert starts == sorted(starts)
    # The alignment with the fewest edits (a word error rate's alignment).
    alignment = jiwer.process_words(" ".join(expected), " ".join(got)).alignments[0]
    matched = 0
    for chunk in alignment:
        if chunk.type != "equal":
            continue
        for offset in range(chunk.ref_end_idx - chunk.ref_start_idx):
            word, start = transcript.words[chunk.hyp_start_idx + offset], placed[chunk.ref_start_idx + offset][1]
            assert abs(word.start - start) <= tolerance, (word, start)
        matched += chunk.ref_end_idx - chunk.ref_start_idx
    # What the model alone gets wrong: about 15 % of these words, chunked or not (mostly a "the" lost
    # after a silence, a word merged with the next). A seam repeating words would add some.
    assert matched >= 0.8 * len(expected), (got, expected)
    assert 0.85 * len(expected) <= len(got) <= len(expected) + 1, (got, expected)
    repeats = [(a, b) for a, b in itertools.pairwise(transcript.words) if a.word == b.word]
    assert not repeats, repeats


def test_a_long_file_has_every_word_once_in_order_at_its_time(utterances):
    engine = Engine(EngineConfig(device="cpu", num_threads=2, long_file_threshold=10, long_file_chunk=7,
                                 long_file_context=2))
    sequence = utterances * 2
    audio, placed = compose(sequence, [0.7, 1.3, 0.4, 2.0, 0.9, 0.5, 1.1] * 2)
    progress = []
    transcript = engine.transcribe_source(as_wav(audio), progress=progress.append)
    assert len(audio) / RATE > 50  # several seams: about eight windows of 7 s
    assert_words_where_placed(transcript, placed)
    assert transcript.text == " ".join(word.word for word in transcript.words)
    assert transcript.duration == pytest.approx(len(audio) / RATE)
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(progress) > 5
    engine.close()


@pytest.mark.parametrize("method", ["auditok", "silero"])
def test_vad_keeps_the_times_of_the_original_audio(utterances, method):
    engine = Engine(EngineConfig(device="cpu", num_threads=2, vad=VadConfig(method=method)))
    audio, placed = compose(utterances[:3], [5.0, 8.0, 3.5])
    audio = np.concatenate([audio, np.zeros(4 * RATE, dtype=np.float32)])
    segments = engine.vad.segments(audio)
    assert len(segments) == 3
    transcript = engine.transcribe_source(as_wav(audio))
    assert_words_where_placed(transcript, placed)
    engine.close()


def test_vad_on_silence_gives_nothing_to_transcribe(demo_engine):
    engine = Engine(EngineConfig(device="cpu", num_threads=2, vad=VadConfig(method="auditok")))
    transcript = engine.transcribe(np.zeros(5 * RATE, dtype=np.float32))
    assert transcript.text == "" and transcript.words == ()
    engine.close()


def test_vad_cuts_speech_that_runs_on_in_the_quiet_between_words_and_keeps_every_word(utterances):
    engine = Engine(EngineConfig(device="cpu", num_threads=2, vad=VadConfig(method="auditok", max_segment=8.0)))
    # Pauses shorter than twice the dilatation: VAD alone would make one segment of all of it.
    audio, placed = compose(utterances, [0.4] * len(utterances))
    segments = engine.vad.segments(audio)
    assert len(segments) >= 3
    assert all(end - start <= 8.0 + 1e-6 for start, end in segments)
    for (_, end), (start, _) in itertools.pairwise(segments):
        assert end == start  # cut, not trimmed: nothing is left out
        around = audio[int((end - 0.02) * RATE) : int((end + 0.02) * RATE)]
        assert np.abs(around).max() < 0.01, end  # in a pause, not inside a word
    transcript = engine.transcribe_source(as_wav(audio))
    assert_words_where_placed(transcript, placed)
    engine.close()
