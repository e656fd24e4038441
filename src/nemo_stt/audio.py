"""Audio decoding and resampling: any container or codec FFmpeg reads, to mono float32 at the model's rate."""

import io
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import soxr

AudioSource = bytes | str | Path | BinaryIO


class AudioDecodeError(ValueError):
    """The input is not audio that can be decoded."""


def decode_audio(source: AudioSource, sample_rate: int) -> np.ndarray:
    """Decode the first audio stream of `source` to mono float32 at `sample_rate`.

    Zero-length audio gives an empty array; anything that is not decodable audio raises AudioDecodeError.
    """
    with AudioStream(source, sample_rate) as stream:
        pieces = list(stream)
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(pieces).astype(np.float32, copy=False)


class AudioStream:
    """Incremental decoding: iterating gives mono float32 blocks at `sample_rate`, as FFmpeg delivers them.

    Opening raises AudioDecodeError for anything that is not audio; memory stays bounded by one block
    whatever the file's length. `duration` is the container's own estimate (None when it has none).
    """

    def __init__(self, source: AudioSource, sample_rate: int):
        if isinstance(source, bytes):
            if not source:
                raise AudioDecodeError("the file is empty")
            source = io.BytesIO(source)
        self.sample_rate = sample_rate
        try:
            self._container = av.open(str(source) if isinstance(source, Path) else source, mode="r")
        except FileNotFoundError:
            raise AudioDecodeError(f"no such file: {source}") from None
        except (av.FFmpegError, UnicodeDecodeError, ValueError) as error:
            raise AudioDecodeError(f"not a readable audio file ({_reason(error)})") from None
        if not self._container.streams.audio:
            self._container.close()
            raise AudioDecodeError("the file has no audio stream")
        self._stream = self._container.streams.audio[0]
        duration = self._container.duration
        self.duration: float | None = duration / 1_000_000 if duration and duration > 0 else None

    def __enter__(self) -> "AudioStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def __iter__(self) -> Iterator[np.ndarray]:
        converter = av.AudioResampler(format="fltp")  # any sample format to planar float, same layout and rate
        rate_converter = None
        same_rate = None
        produced = False
        try:
            for frame in self._container.decode(self._stream):
                if same_rate is None:
                    same_rate = frame.sample_rate == self.sample_rate
                    if not same_rate:
                        rate_converter = soxr.ResampleStream(frame.sample_rate, self.sample_rate, 1,
                                                             dtype="float32")
                for converted in converter.resample(frame):
                    # Average the channels: keeps the level of a centred voice and never clips.
                    planes = converted.to_ndarray()
                    mono = planes[0].copy() if len(planes) == 1 else planes.mean(axis=0, dtype=np.float32)
                    block = mono if same_rate else rate_converter.resample_chunk(mono)
                    if block.size:
                        produced = True
                        yield block
        except av.FFmpegError as error:
            if not produced:
                raise AudioDecodeError(f"the audio could not be decoded ({_reason(error)})") from None
            # A truncated file: keep what decoded, as players do.
        if rate_converter is not None:
            tail = rate_converter.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            if tail.size:
                yield tail


def pcm16_to_float(pcm: bytes) -> np.ndarray:
    """Little-endian signed 16-bit PCM bytes to float32 in [-1, 1)."""
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    if from_rate == to_rate or audio.size == 0:
        return audio.astype(np.float32, copy=False)
    return soxr.resample(audio, from_rate, to_rate).astype(np.float32, copy=False)


def _reason(error: Exception) -> str:
    text = getattr(error, "strerror", None) or str(error)
    return text.split(":")[-1].strip() if text else type(error).__name__
