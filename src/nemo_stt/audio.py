"""Audio decoding and resampling: any container or codec FFmpeg reads, to mono float32 at the model's rate."""

import io
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import soxr


class AudioDecodeError(ValueError):
    """The input is not audio that can be decoded."""


def decode_audio(source: bytes | str | Path | BinaryIO, sample_rate: int) -> np.ndarray:
    """Decode the first audio stream of `source` to mono float32 at `sample_rate`.

    Zero-length audio gives an empty array; anything that is not decodable audio raises AudioDecodeError.
    """
    if isinstance(source, bytes):
        if not source:
            raise AudioDecodeError("the file is empty")
        source = io.BytesIO(source)
    try:
        container = av.open(source if not isinstance(source, Path) else str(source), mode="r")
    except FileNotFoundError:
        raise AudioDecodeError(f"no such file: {source}") from None
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as error:
        raise AudioDecodeError(f"not a readable audio file ({_reason(error)})") from None
    with container:
        if not container.streams.audio:
            raise AudioDecodeError("the file has no audio stream")
        stream = container.streams.audio[0]
        pieces: list[np.ndarray] = []
        converter = av.AudioResampler(format="fltp")  # any sample format to planar float, same layout and rate
        rate_converter = None
        try:
            for frame in container.decode(stream):
                if rate_converter is None:
                    rate_converter = soxr.ResampleStream(frame.sample_rate, sample_rate, 1, dtype="float32")
                for converted in converter.resample(frame):
                    # Average the channels: keeps the level of a centred voice and never clips.
                    mono = converted.to_ndarray().mean(axis=0, dtype=np.float32)
                    pieces.append(rate_converter.resample_chunk(mono))
        except av.FFmpegError as error:
            if not pieces:
                raise AudioDecodeError(f"the audio could not be decoded ({_reason(error)})") from None
            # A truncated file: keep what decoded, as players do.
        if rate_converter is not None:
            pieces.append(rate_converter.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(pieces).astype(np.float32, copy=False)


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
