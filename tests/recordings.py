"""Recordings as users send them, built from the fixtures: a meeting is many utterances with pauses."""

import io
import wave
from pathlib import Path

import numpy as np

from nemo_stt.audio import decode_audio

FIXTURES = Path(__file__).parent / "fixtures"
RATE = 16000

# The fixtures that hold one sentence each, in a fixed order.
UTTERANCES = ("anna_bread.wav", "pilot_train.wav", "old_house.flac", "red_car.mp3", "doctor_letter.ogg",
              "teacher_book.webm", "children_park.m4a")


def meeting(seconds: float, pause: float = 1.6, rate: int = RATE) -> np.ndarray:
    """Fixture utterances one after the other, each followed by `pause` seconds of silence, up to `seconds`.

    `meeting(470)` is below the long-file threshold and auditok (the default VAD) finds 107 segments in it.
    """
    sentences = [decode_audio(FIXTURES / name, rate) for name in UTTERANCES]
    silence = np.zeros(int(pause * rate), dtype=np.float32)
    pieces, total, index = [], 0, 0
    while total < seconds * rate:
        speech = sentences[index % len(sentences)]
        pieces += [speech, silence]
        total += len(speech) + len(silence)
        index += 1
    return np.concatenate(pieces)[: int(seconds * rate)]


def as_wav(audio: np.ndarray, rate: int = RATE) -> bytes:
    """16-bit mono PCM WAV bytes."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(as_pcm16(audio))
    return buffer.getvalue()


def as_pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
