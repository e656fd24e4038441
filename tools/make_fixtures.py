"""Write the test fixtures: espeak-ng sentences with known text, in several containers, rates and layouts.

    python tools/make_fixtures.py tests/fixtures
"""

import json
import sys
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "demo_model"))
from synthesize import SAMPLE_RATE, speak

from nemo_stt.audio import resample

# name, text, espeak voice, (container format, codec, sample format, rate, channels)
FIXTURES = [
    ("anna_bread.wav", "anna bought the bread at the market", "en-us", ("wav", "pcm_s16le", "s16", 16000, 1)),
    ("pilot_train.wav", "the pilot waited near the station on monday", "en-gb", ("wav", "pcm_s16le", "s16", 8000, 1)),
    ("old_house.flac", "my old house was very quiet in the evening", "en-us+f2", ("flac", "flac", "s16", 44100, 2)),
    ("red_car.mp3", "the red car stopped behind the big bridge", "en-gb-x-rp", ("mp3", "libmp3lame", "fltp", 22050, 1)),
    ("doctor_letter.ogg", "the doctor sent a letter to his family", "en-us+m3", ("ogg", "libopus", "flt", 48000, 1)),
    ("children_park.m4a", "tom and emma walked to the park yesterday", "en-029", ("ipod", "aac", "fltp", 44100, 2)),
    ("teacher_book.webm", "the teacher found a green book in the library", "en-us",
     ("webm", "libopus", "flt", 48000, 2)),
]


def encode(audio: np.ndarray, path: Path, container_format: str, codec: str, sample_format: str, rate: int,
           channels: int) -> None:
    audio = resample(audio, SAMPLE_RATE, rate)
    # Stereo fixtures get a quieter right channel, so that a wrong downmix would show.
    planes = np.stack([audio] + [audio * 0.5] * (channels - 1))
    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        frame_size = stream.codec_context.frame_size or 1024
        for start in range(0, planes.shape[1], frame_size):
            block = planes[:, start:start + frame_size]
            if sample_format == "s16":
                data = (np.clip(block, -1, 1) * 32767).astype(np.int16).T.reshape(1, -1)
            elif sample_format == "flt":
                data = block.astype(np.float32).T.reshape(1, -1)
            else:  # planar float
                data = block.astype(np.float32)
            if block.shape[1] < frame_size and codec in ("libopus", "aac", "libmp3lame"):
                pad = np.zeros((data.shape[0], (frame_size - block.shape[1]) * (data.shape[1] // block.shape[1])),
                               dtype=data.dtype)
                data = np.concatenate([data, pad], axis=1)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=sample_format, layout=layout)
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures")
    out.mkdir(parents=True, exist_ok=True)
    texts = {}
    for name, text, voice, (container_format, codec, sample_format, rate, channels) in FIXTURES:
        audio = speak(text, voice=voice, speed=150, pitch=50)
        encode(audio, out / name, container_format, codec, sample_format, rate, channels)
        texts[name] = {"text": text, "sample_rate": rate, "channels": channels}
    (out / "texts.json").write_text(json.dumps(texts, indent=2) + "\n")
    print(f"wrote {len(texts)} fixtures to {out}")


if __name__ == "__main__":
    main()
