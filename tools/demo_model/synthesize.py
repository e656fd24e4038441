"""Synthetic English speech from espeak-ng, at 16 kHz, for training and fixtures."""

import io
import random
import subprocess
import wave
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import soxr

SAMPLE_RATE = 16000

# espeak-ng's own (non-mbrola) English voices, each at a few speeds and pitches. Variety beyond this
# (the +m/+f variants, continuous speeds) makes the small model far slower to learn from scratch: the
# variants come in a last stage, once the model has learned the base voices.
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
VARIANTS = ("+f1", "+f2", "+f3", "+f4", "+m1", "+m2", "+m3", "+m4")
SPEEDS = (140, 160, 180)
PITCHES = (35, 50, 65)


def speak(text: str, voice: str = "en-us", speed: int = 160, pitch: int = 50) -> np.ndarray:
    """Speak `text` with espeak-ng; mono float32 at SAMPLE_RATE."""
    wav_bytes = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
        check=True, capture_output=True,
    ).stdout
    with wave.open(io.BytesIO(wav_bytes)) as wav:
        rate = wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    audio = pcm.astype(np.float32) / 32768.0
    return soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)


def random_voice(rng: random.Random, variants: bool = False) -> dict:
    """A voice, speed and pitch; with `variants`, half the voices get a random +f/+m variant."""
    voice = rng.choice(VOICES)
    if variants and rng.random() < 0.5:
        voice += rng.choice(VARIANTS)
    return {"voice": voice, "speed": rng.choice(SPEEDS), "pitch": rng.choice(PITCHES)}


def speak_corpus(sentences: list[str], seed: int, workers: int = 2,
                 variants: bool = False) -> tuple[list[np.ndarray], list[dict]]:
    """Speak every sentence with a random voice, speed and pitch (reproducible from `seed`)."""
    rng = random.Random(seed)
    styles = [random_voice(rng, variants) for _ in sentences]
    with ThreadPoolExecutor(workers) as pool:
        audios = list(pool.map(lambda item: speak(item[0], **item[1]), zip(sentences, styles, strict=True)))
    return audios, styles
