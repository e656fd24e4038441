"""The loudness tracker that lets streams close a final on audio not yet decoded."""

import numpy as np

from nemo_stt.audio import decode_audio
from nemo_stt.engine.speech_energy import SpeechEnergy

from .conftest import FIXTURES

RATE = 16000


def tone(seconds: float, dbfs: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sqrt(2) * 10 ** (dbfs / 20) * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def noise(seconds: float, dbfs: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * RATE)) * 10 ** (dbfs / 20)).astype(np.float32)


def feed(energy: SpeechEnergy, audio: np.ndarray, piece: int) -> None:
    for start in range(0, len(audio), piece):
        energy.push(audio[start : start + piece])


def test_the_last_loud_time_is_where_the_sound_stopped_however_the_audio_is_cut():
    audio = np.concatenate([np.zeros(RATE, np.float32), tone(1.0, -20), np.zeros(2 * RATE, np.float32)])
    for piece in (len(audio), 1600, 333):
        energy = SpeechEnergy(RATE)
        feed(energy, audio, piece)
        assert abs(energy.last_loud_seconds - 2.0) <= 0.02, piece


def test_silence_and_very_quiet_sound_are_never_loud():
    energy = SpeechEnergy(RATE)
    feed(energy, np.concatenate([np.zeros(RATE, np.float32), tone(1.0, -60)]), 1600)
    assert energy.last_loud_seconds == 0.0


def test_steady_background_noise_is_not_loud_but_speech_over_it_is():
    energy = SpeechEnergy(RATE)
    background = noise(6.0, -35)
    background[2 * RATE : 3 * RATE] += tone(1.0, -15)
    feed(energy, background, 1600)
    assert abs(energy.last_loud_seconds - 3.0) <= 0.04


def test_real_speech_is_loud_until_it_ends():
    speech = decode_audio(FIXTURES / "anna_bread.wav", RATE)
    energy = SpeechEnergy(RATE)
    feed(energy, np.concatenate([speech, np.zeros(RATE, np.float32)]), RATE // 10)
    voiced = np.flatnonzero(np.abs(speech) > 0.01)
    assert abs(energy.last_loud_seconds - voiced[-1] / RATE) <= 0.1
